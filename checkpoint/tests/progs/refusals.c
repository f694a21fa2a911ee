/* Test program: holds one thing checkpoint must refuse (argv[1]), prints
 * "ready" and sleeps:
 *   seccomp  a second thread under a seccomp filter (prctl -> errno 1234),
 *            the main thread under none (refused once; saved by root now)
 *   symlink  fd 5: a symbolic link itself (O_PATH|O_NOFOLLOW)
 *   cwd      its working directory removed
 *   proc     fd 5: /proc/self/status
 *   files    a child made with clone(CLONE_FILES): one fd table for two
 *            (refused once; saved since, tests/tree.rs)
 *   pdeath   a parent-death signal on itself (the root of the tree)
 *   owner    fd 5: a pipe owned (F_SETOWN) by its parent, outside the tree
 *   pidfd    fd 5: a pidfd of its parent, outside the tree
 * argv[2] is a scratch directory for symlink and cwd. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *filtered(void *a) {
    (void)a;
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_prctl, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 1234),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
        perror("seccomp");
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *m = argv[1];
    char p[4096];
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(m, "seccomp")) {
        pthread_t t;
        pthread_create(&t, 0, filtered, 0);
        usleep(100000);
    } else if (!strcmp(m, "symlink")) {
        snprintf(p, sizeof p, "%s/link", argv[2]);
        if (symlink("/etc/hostname", p)) return 1;
        int fd = open(p, O_PATH | O_NOFOLLOW);
        if (fd < 0 || dup2(fd, 5) != 5 || close(fd)) return 1;
    } else if (!strcmp(m, "cwd")) {
        snprintf(p, sizeof p, "%s/gone", argv[2]);
        if (mkdir(p, 0700) || chdir(p) || rmdir(p)) return 1;
    } else if (!strcmp(m, "proc")) {
        int fd = open("/proc/self/status", O_RDONLY);
        if (fd < 0 || dup2(fd, 5) != 5 || close(fd)) return 1;
    } else if (!strcmp(m, "files")) {
        long r = syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0);
        if (r < 0) return 1;
        if (r == 0) for (;;) pause();
    } else if (!strcmp(m, "owner")) {
        int p2[2];
        if (pipe(p2) || dup2(p2[0], 5) != 5 || close(p2[0]) || fcntl(5, F_SETOWN, getppid())) return 1;
    } else if (!strcmp(m, "pidfd")) {
        int fd = syscall(SYS_pidfd_open, getppid(), 0);
        if (fd < 0 || dup2(fd, 5) != 5 || close(fd)) return 1;
    } else if (!strcmp(m, "pdeath")) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
    } else {
        return 2;
    }
    printf("ready\n");
    for (;;) pause();
}
