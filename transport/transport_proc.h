/*
 * Process-wide calls of the transport layer, for the code that starts and
 * hosts executor processes (the launcher, spate-bench) rather than for an
 * endpoint. They name no backend: each runs the hook of every built-in
 * backend that has one (transport.c keeps the table), so a caller never
 * reaches into one backend's internals.
 */
#ifndef SPATE_TRANSPORT_PROC_H
#define SPATE_TRANSPORT_PROC_H

#include <spate/conf.h>

/*
 * Removes what the transports of process pid left on this host because it
 * died without closing them (ofi: the shm provider's shared-memory regions
 * "PID:..." in /dev/shm). Only for a pid whose process is gone and has been
 * reaped (or is this one, before its first endpoint): a live process's
 * resources would be taken from under it. Thread-safe; logs what it removes.
 */
void sp__transport_clear_dead_process(long pid);

/*
 * Sets the environment variables the backends' libraries read once per
 * process, at their first initialization, to spate's defaults where the
 * environment does not set them already (the user's value wins; ofi:
 * FI_OFI_RXM_MSG_RX_SIZE). Opening a transport does it itself; code that
 * initializes such a library before any transport is opened (spate-bench's
 * bare fi_read loop) calls it first, so that the library is sized alike.
 * conf may be NULL (the defaults do not depend on it today). Not safe
 * against threads reading the environment at the same moment: call it
 * while the process starts.
 */
void sp__transport_prepare_env(const sp_conf_t *conf);

#endif
