/* Benchmark workload that measures how long it is frozen, from inside.
 * argv[1]: MiB of anonymous memory to touch; argv[2]: a "ready" marker to
 * create once touched; argv[3]: a report file.
 *
 * It then loops: read CLOCK_MONOTONIC, keep the longest gap between two
 * readings, write one of its first 256 pages, sleep 200 us. SIGUSR1 writes the longest gap
 * (in microseconds) since the previous SIGUSR1 to the report file and
 * starts over; SIGUSR2 rewrites 5 % of the pages (every 20th) and then
 * writes "changed" to the report file. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static volatile sig_atomic_t report, change;
static void on_usr1(int s) { (void)s; report = 1; }
static void on_usr2(int s) { (void)s; change = 1; }

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static void put(const char *path, const char *what, long long v) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "%s %lld\n", what, v);
    fclose(f);
    rename(tmp, path);
}

int main(int argc, char **argv) {
    size_t len = (size_t)atol(argv[1]) << 20;
    unsigned char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    for (size_t i = 0; i < len; i += 4096) p[i] = (unsigned char)(i >> 12);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    FILE *f = fopen(argv[2], "w");
    if (!f) return 2;
    fclose(f);
    long long last = now_us(), worst = 0;
    size_t at = 0;
    for (unsigned n = 1;; n++) {
        long long t = now_us();
        if (t - last > worst) worst = t - last;
        last = t;
        p[at] += 1;
        at = (at + 4096) % (len < (256 << 12) ? len : (256 << 12));
        if (report) {
            report = 0;
            put(argv[3], "gap_us", worst);
            worst = 0;
            last = now_us();
        }
        if (change) {
            change = 0;
            for (size_t i = 0; i < len; i += 20 * 4096) p[i] += 3;
            put(argv[3], "changed", 1);
            last = now_us();
        }
        struct timespec ts = {0, 200000};
        nanosleep(&ts, 0);
    }
}
