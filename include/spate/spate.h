/*
 * spate — the whole public API in one include. Applications include this
 * header and link with libspate (CMake: find_package(spate) and the target
 * spate::spate; otherwise pkg-config --cflags --libs spate). It pulls in the
 * common definitions (status codes, last-error detail, logging, version),
 * configuration, and the header of each layer (memory, shuffle). Every
 * public header includes only other spate headers and the C standard
 * library, so building against spate needs none of the libraries it is
 * built on; the install test checks that, and that this file includes every
 * other public header.
 */
#ifndef SPATE_SPATE_H
#define SPATE_SPATE_H

#include <spate/common.h>
#include <spate/conf.h>
#include <spate/memory.h>
#include <spate/shuffle.h>
#include <spate/transport.h>
#include <spate/graph.h>
#include <spate/job.h>

#endif /* SPATE_SPATE_H */
