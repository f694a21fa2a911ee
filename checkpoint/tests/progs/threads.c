/* Test program: 4 threads, each with its own counter in TLS and on its
 * stack, each checking it every step; the main thread prints "N ok" when
 * every worker made progress within the last few steps, "N BAD ..." otherwise
 * (a few steps, not one: a freeze or a loaded machine may hold a worker back
 * for one step; a thread that does not come back never progresses again).
 * Workers exit on request at the end and are joined (needs clear_child_tid). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#define W 4
static __thread unsigned long tls;
static volatile unsigned long progress[W];
static volatile int bad[W];
static volatile pid_t tids[W];

static void *worker(void *arg) {
    long id = (long)arg;
    unsigned long local = 0;
    double f = 1.0;
    tids[id] = syscall(SYS_gettid);
    for (;;) {
        tls++; local++; f *= 1.0000001;
        if (tls != local || syscall(SYS_gettid) != tids[id]) bad[id] = 1;
        progress[id] = local;
        usleep(5000);
        if (progress[id] == (unsigned long)-1) break;
    }
    return 0;
}

int main(void) {
    pthread_t th[W];
    for (long i = 0; i < W; i++) pthread_create(&th[i], 0, worker, (void *)i);
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned long last[W] = {0};
    int idle[W] = {0};
    for (unsigned long n = 1;; n++) {
        usleep(50000);
        const char *b = 0;
        for (int i = 0; i < W; i++) {
            if (bad[i]) b = "worker state";
            idle[i] = progress[i] <= last[i] ? idle[i] + 1 : 0;
            if (idle[i] >= 6) b = "worker stuck";
            last[i] = progress[i];
        }
        if (b) printf("%lu BAD %s\n", n, b); else printf("%lu ok\n", n);
    }
}
