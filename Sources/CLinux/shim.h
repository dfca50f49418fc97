#ifndef SNAP_CLINUX_SHIM_H
#define SNAP_CLINUX_SHIM_H

// glibc calls and constants that Swift's Glibc module hides behind _GNU_SOURCE or leaves out.
// Declared here directly: the symbols are in every glibc since 2.14 (gettid since 2.30).

// Flushes the whole filesystem holding fd. Only a storage restore uses it, once, before it swaps a
// rebuilt tree in (rare, and an fsync per restored file costs a journal commit each); snapshots,
// which run every few minutes beside the database, make durable only what they wrote.
extern int syncfs(int fd);

// Renames without ever replacing (glibc 2.28): with SNAP_RENAME_NOREPLACE it fails with EEXIST
// when the new name exists, and with EINVAL where the filesystem cannot promise that.
extern int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
#define SNAP_RENAME_NOREPLACE 1
// With SNAP_RENAME_EXCHANGE both names must exist, and they swap atomically (EINVAL where the
// filesystem cannot).
#define SNAP_RENAME_EXCHANGE 2

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

#include <linux/stat.h>

// statx (glibc 2.28), which Swift's Glibc module hides behind _GNU_SOURCE.
extern int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *status);

// Whether the folder open as fd is the root of a mount (a mount point, bind mounts included):
// 1 or 0, or -1 when the kernel does not say (before Linux 5.8) or the call fails.
static inline int snap_is_mount_root(int fd) {
    struct statx status;
    if (statx(fd, "", 0x1000 /* AT_EMPTY_PATH */, 0, &status) != 0) return -1;
    if (!(status.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)) return -1;
    return (status.stx_attributes & STATX_ATTR_MOUNT_ROOT) ? 1 : 0;
}

// fcntl command that sets a pipe's capacity (linux/fcntl.h).
#define F_SETPIPE_SZ 1031


#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

// Starts the program at `path` (argv and envp NULL-terminated) as a child that cannot outlive
// snap: the kernel sends it `death_signal` when the thread that started it ends, however it
// ends (PR_SET_PDEATHSIG; posix_spawn cannot set it). The child's descriptors 0, 1 and 2 are
// stdio[0..2] (-1: /dev/null), every other descriptor is closed, the termination signals have
// their default action and none is blocked, whatever snap itself ignores or blocks.
// Returns 0 and sets *pid, or returns the errno value of what failed (exec included).
//
// Between fork and exec the child only makes system calls (async-signal-safe), as it must in a
// process with other threads.
static inline int snap_spawn(pid_t *pid, const char *path, char *const argv[], char *const envp[],
                             const int stdio[3], int death_signal) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return errno;
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) {
        int failure = errno;
        close(report[0]);
        close(report[1]);
        return failure;
    }
    if (child == 0) {
        int failure = 0;
        if (prctl(PR_SET_PDEATHSIG, death_signal) != 0) {
            failure = errno;
            goto fail;
        }
        // The parent ended before the death signal was armed: nothing would ever send it.
        if (getppid() != parent) _exit(127);
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_handler = SIG_DFL;
        sigemptyset(&action.sa_mask);
        const int reset[] = {SIGPIPE, SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGCHLD};
        for (unsigned i = 0; i < sizeof reset / sizeof reset[0]; i++) sigaction(reset[i], &action, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        // Every source first moves above 2, so that placing one never overwrites another.
        int sources[3];
        for (int target = 0; target < 3; target++) {
            int source = stdio[target];
            if (source < 0) source = open("/dev/null", target == 0 ? O_RDONLY : O_WRONLY);
            if (source >= 0) source = fcntl(source, F_DUPFD_CLOEXEC, 3);
            if (source < 0) {
                failure = errno;
                goto fail;
            }
            sources[target] = source;
        }
        for (int target = 0; target < 3; target++) {
            if (dup2(sources[target], target) < 0) {
                failure = errno;
                goto fail;
            }
        }
        // Descriptors that other code opened without close-on-exec stay with snap; the report
        // pipe (close-on-exec) stays open until the exec succeeds.
        if (syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */) != 0) {
            long limit = sysconf(_SC_OPEN_MAX);
            for (int fd = 3; fd < (limit > 0 ? limit : 65536); fd++) {
                if (fd != report[1]) fcntl(fd, F_SETFD, FD_CLOEXEC);
            }
        }
        execve(path, argv, envp);
        failure = errno;
    fail:
        while (write(report[1], &failure, sizeof failure) < 0 && errno == EINTR) {}
        _exit(127);
    }
    close(report[1]);
    int failure = 0;
    ssize_t count;
    do {
        count = read(report[0], &failure, sizeof failure);
    } while (count < 0 && errno == EINTR);
    close(report[0]);
    if (count == (ssize_t)sizeof failure) {
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {}
        return failure;
    }
    *pid = child;
    return 0;
}

#endif
