/* Test program: signal handlers, blocked and pending signals, an interval
 * timer, cwd, umask and rlimits. Every step checks all of them and prints
 * "N ok usr1=K" or "N BAD what". argv[1]: directory to chdir into. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks, usr1;
static void on_alrm(int s) { (void)s; ticks++; }
static void on_usr1(int s) { (void)s; usr1++; }

int main(int argc, char **argv) {
    if (chdir(argv[1])) return 2;
    umask(027);
    struct rlimit rl = {100, 200};
    setrlimit(RLIMIT_NOFILE, &rl);
    struct sigaction sa = {0};
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, 0);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    signal(SIGUSR2, SIG_IGN);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &block, 0);
    union sigval v = {.sival_int = 42};
    sigqueue(getpid(), SIGRTMIN, v); /* stays pending: blocked */
    struct itimerval it = {{0, 5000}, {0, 5000}};
    setitimer(ITIMER_REAL, &it, 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    int last_ticks = -1;
    for (unsigned long n = 1;; n++) {
        const char *bad = 0;
        char cwd[4096];
        struct sigaction cur;
        sigset_t mask, pend;
        sigprocmask(SIG_BLOCK, 0, &mask);
        sigpending(&pend);
        mode_t m = umask(027);
        getrlimit(RLIMIT_NOFILE, &rl);
        if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, argv[1])) bad = "cwd";
        else if (m != 027) bad = "umask";
        else if (rl.rlim_cur != 100 || rl.rlim_max != 200) bad = "rlimit";
        else if (!sigismember(&mask, SIGTERM) || !sigismember(&mask, SIGRTMIN) || sigismember(&mask, SIGUSR1)) bad = "sigmask";
        else if (!sigismember(&pend, SIGRTMIN)) bad = "pending";
        else if (sigaction(SIGUSR1, 0, &cur) || cur.sa_handler != on_usr1) bad = "handler";
        else if (sigaction(SIGUSR2, 0, &cur) || cur.sa_handler != SIG_IGN) bad = "ignored";
        else if (ticks <= last_ticks) bad = "itimer";
        last_ticks = ticks;
        if (bad) printf("%lu BAD %s\n", n, bad);
        else printf("%lu ok usr1=%d\n", n, (int)usr1);
        struct timespec ts = {0, 20000000};
        while (nanosleep(&ts, &ts)) {}
    }
}
