/* Test program: seccomp. A child in strict mode echoes bytes the parent
 * sends through a pipe. The parent then installs filter F1 (uname fails
 * with EPERM) and starts a thread, which inherits it and adds F2 for
 * itself (sysinfo fails with EACCES). Every 100 ms the parent prints
 * "N ok" when: its uname fails with EPERM, its sysinfo works, the thread
 * found both its filters working since the last line, and the strict
 * child echoed a byte; otherwise "N BAD what". Writes the child's PID to
 * DIR/child. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

static volatile int thread_checks, thread_bad;

static int deny(long nr, int err) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog p = {sizeof f / sizeof f[0], f};
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p);
}

static int fails_with(long nr, int err) {
    char buf[512];
    errno = 0;
    return syscall(nr, buf) == -1 && errno == err;
}

static void *thread_main(void *a) {
    (void)a;
    if (deny(SYS_sysinfo, EACCES)) thread_bad = 1;
    for (;;) {
        if (!fails_with(SYS_uname, EPERM) || !fails_with(SYS_sysinfo, EACCES)) thread_bad = 1;
        thread_checks++;
        usleep(20000);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    int to_child[2], from_child[2];
    if (pipe(to_child) || pipe(from_child)) return 2;
    pid_t child = fork();
    if (child == 0) {
        char c;
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)) _exit(3);
        for (;;) {
            if (read(to_child[0], &c, 1) != 1) syscall(SYS_exit, 4);
            c++;
            write(from_child[1], &c, 1);
        }
    }
    char path[512];
    snprintf(path, sizeof path, "%s/child", argv[1]);
    FILE *f = fopen(path, "w");
    if (!f) return 2;
    fprintf(f, "%d\n", child);
    fclose(f);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || deny(SYS_uname, EPERM)) return 2;
    pthread_t th;
    pthread_create(&th, 0, thread_main, 0);
    int last = 0, unseen = 0;
    char b = 0;
    for (unsigned long n = 1;; n++) {
        usleep(100000);
        if (thread_checks <= last && ++unseen < 20) { n--; continue; }
        unseen = 0;
        const char *bad = 0;
        char got = 0;
        if (thread_checks <= last) bad = "thread-stopped";
        else if (thread_bad) bad = "thread-filters";
        else if (!fails_with(SYS_uname, EPERM)) bad = "F1";
        else if (fails_with(SYS_sysinfo, EACCES)) bad = "F2-in-main";
        else if (write(to_child[1], &b, 1) != 1 || read(from_child[0], &got, 1) != 1 ||
                 got != (char)(b + 1))
            bad = "strict-child";
        b++;
        last = thread_checks;
        if (bad) printf("%lu BAD %s\n", n, bad);
        else printf("%lu ok\n", n);
    }
}
