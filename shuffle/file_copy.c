/*
 * Copies of byte ranges between files, for merges that move stored segments
 * without decoding them (the sort path's unordered merge of spills, the
 * bypass path's concatenation of partition files).
 *
 * Without a checksum to update the bytes move in the kernel
 * (copy_file_range); where the kernel cannot (another file system, an old
 * kernel) or a checksum must see them, they go through a 64 KiB buffer.
 * Write faults are injectable on the kernel path like any other write.
 */
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

sp_status_t sp__file_copy_range(sp_file_writer_t *out, int in_fd, const char *in_path,
                                uint64_t offset, uint64_t len, sp_checksum_t *cs)
{
    unsigned char buf[64 * 1024];
    sp_status_t st = sp__file_writer_flush(out);
    loff_t in_off = (loff_t)offset, out_off = (loff_t)out->offset;
    uint64_t left = len;

    if (st != SP_OK)
        return st;
    while (cs == NULL && left > 0) {
        ssize_t n;
        if (sp__fault_fire(SP_FAULT_WRITE)) {
            errno = ENOSPC;
            n = -1;
        } else {
            n = copy_file_range(in_fd, &in_off, out->fd, &out_off, (size_t)SP_MIN(left, 1u << 30),
                                0);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP))
            break; /* not here: copy through user space below */
        if (n < 0)
            return SP_RAISE(errno == ENOSPC ? SP_ERR_NO_SPACE : SP_ERR_IO,
                            "copy %s to %s: %s (errno %d)", in_path, out->path, strerror(errno),
                            errno);
        if (n == 0)
            return SP_RAISE(SP_ERR_IO, "copy %s to %s: source ends early", in_path, out->path);
        left -= (uint64_t)n;
        out->offset += (uint64_t)n;
    }
    in_off = (loff_t)(offset + (len - left));
    while (left > 0) {
        size_t n = (size_t)SP_MIN(left, sizeof(buf));
        st = sp__pread_all(in_fd, buf, n, (uint64_t)in_off, in_path);
        if (st != SP_OK)
            return st;
        if (cs != NULL)
            sp__checksum_update(cs, buf, n);
        st = sp__file_writer_write(out, buf, n);
        if (st != SP_OK)
            return st;
        in_off += (loff_t)n;
        left -= n;
    }
    return SP_OK;
}
