/* Test program: pidfds. The process holds a pidfd of itself, one of its
 * child (which waits for SIGTERM, then exits 7), and one of its own
 * second thread (PIDFD_THREAD, non-blocking). DIR/ready once made. On
 * SIGUSR1: the child is signalled through its pidfd and waited for
 * through it (waitid P_PIDFD: exit status 7), the thread is signalled
 * through its pidfd (it answers by setting a flag), and the own pidfd
 * still names this process (its fdinfo Pid line). DIR/check.<pid>: "ok"
 * or "BAD: <what>". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "answer.h"

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef PIDFD_SIGNAL_THREAD
#define PIDFD_SIGNAL_THREAD 1
#endif

static volatile sig_atomic_t thread_hit;
static volatile pid_t thread_tid;
static void on_usr2(int s) { (void)s; thread_hit = 1; }
static void on_term(int s) { (void)s; _exit(7); }

static void *thread_main(void *a) {
    (void)a;
    thread_tid = syscall(SYS_gettid);
    sigset_t only;
    sigfillset(&only);
    sigdelset(&only, SIGUSR2);
    for (;;) sigsuspend(&only);
    return 0;
}


static int self, child, thr;
static pid_t kid;

static int check(void) {
    char path[64], buf[512] = {0};
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", self);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "no fdinfo of the own pidfd");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char want[32];
    snprintf(want, sizeof want, "Pid:\t%d\n", getpid());
    CHECK(strstr(buf, want) != NULL, "own pidfd names another process");
    int fl = fcntl(thr, F_GETFL);
    CHECK(fl & O_NONBLOCK, "the thread's pidfd lost O_NONBLOCK");
    CHECK(syscall(SYS_pidfd_send_signal, thr, SIGUSR2, NULL, PIDFD_SIGNAL_THREAD) == 0, "signal through the thread's pidfd");
    for (int i = 0; i < 1000 && !thread_hit; i++) usleep(1000);
    CHECK(thread_hit, "the thread did not get its signal");
    CHECK(syscall(SYS_pidfd_send_signal, child, SIGTERM, NULL, 0) == 0, "signal through the child's pidfd");
    siginfo_t si = {0};
    CHECK(waitid(P_PIDFD, child, &si, WEXITED) == 0, "waitid on the child's pidfd");
    CHECK(si.si_pid == kid && si.si_code == CLD_EXITED && si.si_status == 7, "child ended %d/%d", si.si_code, si.si_status);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *dir = argv[1];
    answer_setup();
    signal(SIGUSR2, on_usr2);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, 0); /* the thread's alone */
    kid = fork();
    if (kid == 0) {
        signal(SIGTERM, on_term);
        sigset_t t;
        sigemptyset(&t);
        sigaddset(&t, SIGTERM);
        sigprocmask(SIG_UNBLOCK, &t, 0);
        for (;;) pause();
    }
    pthread_t th;
    pthread_create(&th, 0, thread_main, 0);
    while (!thread_tid) usleep(1000);
    self = syscall(SYS_pidfd_open, getpid(), 0);
    child = syscall(SYS_pidfd_open, kid, 0);
    thr = syscall(SYS_pidfd_open, thread_tid, PIDFD_THREAD | O_NONBLOCK);
    if (self < 0 || child < 0 || thr < 0) return 3;

    answer_loop(dir, check);
}
