#ifndef SNAP_CLINUX_SHIM_H
#define SNAP_CLINUX_SHIM_H

// glibc calls and constants that Swift's Glibc module hides behind _GNU_SOURCE or leaves out.
// Declared here directly: the symbols are in every glibc since 2.14 (gettid since 2.30).

// Renames without ever replacing (glibc 2.28): with SNAP_RENAME_NOREPLACE it fails with EEXIST
// when the new name exists, and with EINVAL where the filesystem cannot promise that.
extern int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
#define SNAP_RENAME_NOREPLACE 1

// Starts writing a file's dirty pages to disk without waiting (fcntl.h under _GNU_SOURCE); with
// SNAP_SYNC_FILE_RANGE_WRITE, offset 0 and nbytes 0 it covers the whole file.
extern int sync_file_range(int fd, long long offset, long long nbytes, unsigned int flags);
#define SNAP_SYNC_FILE_RANGE_WRITE 2

// A pipe whose ends are close-on-exec from the start.
extern int pipe2(int pipefd[2], int flags);

// The calling thread's id (glibc 2.30).
extern int gettid(void);

// CPU affinity (sched.h under _GNU_SOURCE). Masks are glibc cpu_set_t bit arrays: bit n of
// byte n / 8 is CPU n; pid 0 is the calling thread.
extern int sched_getcpu(void);
extern int sched_getaffinity(int pid, unsigned long size, void *mask);
extern int sched_setaffinity(int pid, unsigned long size, const void *mask);

#include <sys/vfs.h>

// The filesystem type (statfs f_type: TMPFS_MAGIC, ...) of path; -1 when it cannot be read.
static inline long snap_filesystem_type(const char *path) {
    struct statfs status;
    return statfs(path, &status) == 0 ? (long)status.f_type : -1;
}

// fcntl command that sets a pipe's capacity (linux/fcntl.h).
#define F_SETPIPE_SZ 1031

#endif
