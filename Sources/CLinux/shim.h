#ifndef SNAP_CLINUX_SHIM_H
#define SNAP_CLINUX_SHIM_H
// glibc calls that Swift's Glibc module hides behind _GNU_SOURCE. Declared here directly: the
// symbols are in every glibc since 2.14.

// Flushes the whole filesystem holding fd: one call makes a batch of new objects durable.
extern int syncfs(int fd);

#endif
