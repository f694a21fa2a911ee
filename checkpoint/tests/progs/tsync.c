/* Test program: two threads under one seccomp filter (uname fails with
 * EPERM), installed by the main thread with SECCOMP_FILTER_FLAG_TSYNC.
 * SIGUSR1: the main thread adds a second filter (sysinfo fails with
 * EACCES) to both threads, again with TSYNC, and writes DIR/tsync.<pid>:
 * "ok" once the other thread saw it, or "BAD what". Prints "N ok" every
 * 100 ms while uname fails with EPERM in both threads. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile int other_ok, other_saw_f3, other_bad, filtered;
static volatile sig_atomic_t asked;

static int deny(long nr, int err, unsigned flags) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog p = {sizeof f / sizeof f[0], f};
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

static int fails_with(long nr, int err) {
    char buf[512];
    errno = 0;
    return syscall(nr, buf) == -1 && errno == err;
}

static void *other(void *a) {
    (void)a;
    while (!filtered) usleep(1000);
    for (;;) {
        if (fails_with(SYS_uname, EPERM)) other_ok++;
        else other_bad = 1;
        if (fails_with(SYS_sysinfo, EACCES)) other_saw_f3 = 1;
        usleep(10000);
    }
    return 0;
}

static void on_usr1(int s) { (void)s; asked = 1; }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    pthread_t th;
    pthread_create(&th, 0, other, 0);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || deny(SYS_uname, EPERM, SECCOMP_FILTER_FLAG_TSYNC))
        return 2;
    filtered = 1;
    int last = 0;
    for (unsigned long n = 1;; n++) {
        usleep(100000);
        if (asked) {
            asked = 0;
            char path[512], tmp[520];
            snprintf(path, sizeof path, "%s/tsync.%d", argv[1], getpid());
            snprintf(tmp, sizeof tmp, "%s.tmp", path);
            long r = deny(SYS_sysinfo, EACCES, SECCOMP_FILTER_FLAG_TSYNC);
            for (int i = 0; r == 0 && i < 200 && !other_saw_f3; i++) usleep(10000);
            FILE *f = fopen(tmp, "w");
            if (!f) continue;
            if (r != 0) fprintf(f, "BAD tsync returned %ld\n", r);
            else if (!other_saw_f3) fprintf(f, "BAD other thread unfiltered\n");
            else fprintf(f, "ok\n");
            fclose(f);
            rename(tmp, path);
        }
        if (other_ok <= last) { n--; continue; }
        last = other_ok;
        if (other_bad || !fails_with(SYS_uname, EPERM)) printf("%lu BAD uname\n", n);
        else printf("%lu ok\n", n);
    }
}
