/*
 * Positioned file I/O shared by every layer that writes or reads files: the
 * loops that finish short transfers and retry EINTR, the mapping of errno to
 * a status with the file's name in the message, and the fault-injection
 * points (SP_FAULT_WRITE fails a write as ENOSPC or an fsync as EIO,
 * SP_FAULT_READ fails a read as EIO) that the fault tests sweep.
 */
#include "common_int.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

sp_status_t sp__write_error(const char *op, const char *path, int err)
{
    return SP_RAISE(err == ENOSPC ? SP_ERR_NO_SPACE : SP_ERR_IO, "%s %s: %s (errno %d)", op, path,
                    strerror(err), err);
}

sp_status_t sp__pwrite_all(int fd, const void *buf, size_t len, uint64_t offset, const char *path)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n;

        if (sp__fault_fire(SP_FAULT_WRITE)) {
            errno = ENOSPC;
            n = -1;
        } else {
            n = pwrite(fd, p, len, (off_t)offset);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return sp__write_error("write", path, errno);
        if (n == 0)
            return SP_RAISE(SP_ERR_IO, "write %s: wrote nothing of %zu bytes", path, len);
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return SP_OK;
}

int sp__fsync(int fd)
{
    if (sp__fault_fire(SP_FAULT_WRITE)) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

sp_status_t sp__pread_all(int fd, void *buf, size_t len, uint64_t offset, const char *path)
{
    char *p = buf;

    while (len > 0) {
        ssize_t n;

        if (sp__fault_fire(SP_FAULT_READ)) {
            errno = EIO;
            n = -1;
        } else {
            n = pread(fd, p, len, (off_t)offset);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return SP_RAISE(SP_ERR_IO, "read %s: %s (errno %d)", path, strerror(errno), errno);
        if (n == 0)
            return SP_RAISE(SP_ERR_CORRUPT, "read %s: file ends %zu bytes early at offset %llu",
                            path, len, (unsigned long long)offset);
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return SP_OK;
}
