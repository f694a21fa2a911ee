/* Test program: an event loop on one epoll instance watching a 5 ms
 * periodic timerfd, an eventfd it writes to on every tick, and a signalfd
 * for SIGUSR1 (blocked). A second eventfd, in semaphore mode, starts at
 * 100000 and is read once a step. Every 20 ticks it prints "N ok" (or
 * "N BAD <what>"): the eventfd must have counted every tick, the
 * semaphore must still give. On SIGUSR1 it prints "got SIGUSR1". */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

int main(void) {
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, 0);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int efd = eventfd(0, EFD_NONBLOCK);
    int sem = eventfd(100000, EFD_NONBLOCK | EFD_SEMAPHORE);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct itimerspec its = {{0, 5000000}, {0, 5000000}};
    timerfd_settime(tfd, 0, &its, 0);
    struct epoll_event ev = {EPOLLIN, {.u64 = 1}};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    ev.data.u64 = 3;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    setvbuf(stdout, NULL, _IONBF, 0);
    uint64_t ticks = 0, counted = 0, n = 0, sem_left = 100000;
    for (;;) {
        struct epoll_event got[4];
        int k = epoll_wait(ep, got, 4, 1000);
        if (k == 0) { printf("%lu BAD no event for a second\n", (unsigned long)++n); continue; }
        for (int i = 0; i < k; i++) {
            uint64_t v = 0;
            if (got[i].data.u64 == 1 && read(tfd, &v, 8) == 8) {
                ticks += v;
                uint64_t one = v;
                write(efd, &one, 8);
                if (ticks / 20 != (ticks - v) / 20) {
                    n++;
                    const char *bad = 0;
                    if (counted + v < ticks - 4) bad = "eventfd lost ticks";
                    uint64_t s = 0;
                    if (read(sem, &s, 8) != 8 || s != 1) bad = "semaphore eventfd empty";
                    else sem_left--;
                    if (bad) printf("%lu BAD %s\n", (unsigned long)n, bad);
                    else printf("%lu ok\n", (unsigned long)n);
                }
            } else if (got[i].data.u64 == 2 && read(efd, &v, 8) == 8) {
                counted += v;
            } else if (got[i].data.u64 == 3) {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) == sizeof si) printf("got SIGUSR%d\n", si.ssi_signo == SIGUSR1 ? 1 : 0);
            }
        }
    }
}
