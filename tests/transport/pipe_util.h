/*
 * Pipe helpers of the transport tests, whose owner processes are forked
 * children that pass addresses and keys to the reading parent over pipes.
 */
#ifndef SPATE_TESTS_TRANSPORT_PIPE_UTIL_H
#define SPATE_TESTS_TRANSPORT_PIPE_UTIL_H

#include <stddef.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

/* In a child: writes all of buf, over short writes; exits with 5 when the pipe is gone. */
static inline void write_all(int fd, const void *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n <= 0)
            _exit(5);
        buf = (const char *)buf + n;
        len -= (size_t)n;
    }
}

/* In the test: reads exactly len bytes; fails the test when the writer is gone. */
static inline void read_all(int fd, void *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        assert_true(n > 0);
        got += (size_t)n;
    }
}

#endif
