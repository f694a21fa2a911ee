/* Test program: POSIX timers. A: CLOCK_MONOTONIC, SIGUSR1 to the process,
 * every 20 ms, value 0x1234. B: CLOCK_REALTIME, SIGEV_NONE, one shot in
 * 1000 s. C: CLOCK_MONOTONIC, SIGUSR2 to a second thread (SIGEV_THREAD_ID),
 * every 30 ms. Every 100 ms it prints "N ok" once A and C have ticked
 * since the last line (looked at up to 20 times before saying anything),
 * B's time left is below 1000 s and below what it was, every tick came
 * with its timer's id and value, and a timer made now gets an id of its
 * own; otherwise "N BAD what". */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static timer_t ta, tb, tc;
static volatile int ticks_a, ticks_c, bad_a, bad_c;
static volatile pid_t tid_c;

static void on_a(int s, siginfo_t *si, void *u) {
    (void)s; (void)u;
    if (si->si_code != SI_TIMER || si->si_value.sival_int != 0x1234) bad_a = 1;
    ticks_a++;
}

static void on_c(int s, siginfo_t *si, void *u) {
    (void)s; (void)u;
    if (si->si_code != SI_TIMER || si->si_value.sival_int != 0x5678 ||
        syscall(SYS_gettid) != tid_c)
        bad_c = 1;
    ticks_c++;
}

static void *thread_c(void *arg) {
    (void)arg;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    pthread_sigmask(SIG_UNBLOCK, &s, 0);
    tid_c = syscall(SYS_gettid);
    for (;;) pause();
    return 0;
}

static int make(clockid_t clock, int notify, int sig, int value, pid_t tid, timer_t *t) {
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = notify;
    ev.sigev_signo = sig;
    ev.sigev_value.sival_int = value;
    ev._sigev_un._tid = tid;
    return timer_create(clock, &ev, t);
}

static void arm(timer_t t, long first_ns, long every_ns) {
    struct itimerspec it = {{every_ns / 1000000000, every_ns % 1000000000},
                            {first_ns / 1000000000, first_ns % 1000000000}};
    timer_settime(t, 0, &it, 0);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sa.sa_sigaction = on_a;
    sigaction(SIGUSR1, &sa, 0);
    sa.sa_sigaction = on_c;
    sigaction(SIGUSR2, &sa, 0);
    /* SIGUSR2 is for thread C only */
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &s, 0);
    pthread_t th;
    pthread_create(&th, 0, thread_c, 0);
    while (!tid_c) usleep(1000);
    if (make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, 0x1234, 0, &ta) ||
        make(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 0, &tb) ||
        make(CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIGUSR2, 0x5678, tid_c, &tc))
        return 2;
    arm(ta, 20000000, 20000000);
    arm(tb, 0, 0);
    struct itimerspec once = {{0, 0}, {1000, 0}};
    timer_settime(tb, 0, &once, 0);
    arm(tc, 30000000, 30000000);
    int last_a = 0, last_c = 0, unseen = 0;
    long last_b = 1000L * 1000000000;
    for (unsigned long n = 1;; n++) {
        usleep(100000);
        if ((ticks_a <= last_a || ticks_c <= last_c) && ++unseen < 20) { n--; continue; }
        unseen = 0;
        const char *bad = 0;
        struct itimerspec cur;
        timer_t fresh;
        if (ticks_a <= last_a) bad = "A-stopped";
        else if (ticks_c <= last_c) bad = "C-stopped";
        else if (bad_a) bad = "A-siginfo";
        else if (bad_c) bad = "C-siginfo-or-thread";
        else if (timer_gettime(tb, &cur)) bad = "B-gone";
        else {
            long left = cur.it_value.tv_sec * 1000000000L + cur.it_value.tv_nsec;
            if (left <= 0 || left >= last_b) bad = "B-time";
            last_b = left;
        }
        if (!bad) {
            if (make(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0, &fresh)) bad = "new-timer";
            else {
                if (fresh == ta || fresh == tb || fresh == tc) bad = "new-id-taken";
                timer_delete(fresh);
            }
        }
        last_a = ticks_a;
        last_c = ticks_c;
        if (bad) printf("%lu BAD %s\n", n, bad);
        else printf("%lu ok\n", n);
    }
}
