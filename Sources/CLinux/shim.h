#ifndef SNAP_CLINUX_SHIM_H
#define SNAP_CLINUX_SHIM_H
// glibc calls and constants that Swift's Glibc module hides behind _GNU_SOURCE. Declared here
// directly: the symbols are in every glibc since 2.14.

// Flushes the whole filesystem holding fd: one call makes a batch of new objects durable.
extern int syncfs(int fd);

// A pipe whose ends are close-on-exec from the start.
extern int pipe2(int pipefd[2], int flags);

// fcntl command that sets a pipe's capacity (linux/fcntl.h).
#define F_SETPIPE_SZ 1031

#endif
