/* Test program: a child cloned with CLONE_FILES (A: one fd table with the
 * parent) and one forked (B: a table of its own). DIR/pids gets A's and B's
 * PIDs. SIGUSR2 to the parent: it opens DIR/probe as fd 77. SIGUSR1 to a
 * child: it writes DIR/seen.<pid>, "open:<what fd 77 reads>" or "closed". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *dir;
static volatile sig_atomic_t asked;

static void on_sig(int s) { (void)s; asked = 1; }

static void wait_for(int sig) {
    sigset_t none;
    sigemptyset(&none);
    for (;;) {
        sigsuspend(&none);
        if (!asked) continue;
        asked = 0;
        if (sig == SIGUSR1) {
            char path[512], tmp[520], buf[32] = {0};
            snprintf(path, sizeof path, "%s/seen.%d", dir, getpid());
            snprintf(tmp, sizeof tmp, "%s.tmp", path);
            FILE *f = fopen(tmp, "w");
            if (!f) continue;
            if (fcntl(77, F_GETFD) == -1) fprintf(f, "closed\n");
            else if (pread(77, buf, sizeof buf - 1, 0) < 0) fprintf(f, "unreadable\n");
            else fprintf(f, "open:%s\n", buf);
            fclose(f);
            rename(tmp, path);
        } else {
            char path[512];
            snprintf(path, sizeof path, "%s/probe", dir);
            int fd = open(path, O_RDONLY);
            if (fd >= 0 && fd != 77) {
                dup2(fd, 77);
                close(fd);
            }
        }
    }
}

static int child(void *arg) {
    (void)arg;
    wait_for(SIGUSR1);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    dir = argv[1];
    signal(SIGUSR1, on_sig);
    signal(SIGUSR2, on_sig);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, 0);
    size_t sz = 256 * 1024;
    char *stack = malloc(sz);
    if (!stack) return 2;
    pid_t a = clone(child, stack + sz, CLONE_FILES | SIGCHLD, 0);
    pid_t b = fork();
    if (b == 0) {
        child(0);
        _exit(0);
    }
    if (a < 0 || b < 0) return 2;
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s/pids", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return 2;
    fprintf(f, "%d %d\n", a, b);
    fclose(f);
    rename(tmp, path);
    wait_for(SIGUSR2);
}
