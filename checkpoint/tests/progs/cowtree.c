/* Test program: copy-on-write sharing after fork. The parent fills a private
 * anonymous area of PAGES pages (page i starts with 1000 + i, the rest of it
 * is the byte i), writes DIR/addr, and forks. The child rewrites pages 0-15
 * (2000 + i), the parent pages 16-23 (3000 + i); pages 24 and up stay shared.
 * Both write DIR/ready.<pid> and then wait for signals:
 *   SIGUSR1  check every page against what it must hold; write "ok" or
 *            "bad <page> <value>" to DIR/check.<pid> (through a temp file)
 *   SIGUSR2  the child rewrites pages 24-31 (4000 + i), the parent pages
 *            32-39 (5000 + i): from then on each its own */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES 256
#define PG 4096

static unsigned char *area;
static volatile sig_atomic_t want_check, want_write;
static int is_child, wrote;

static unsigned long expected(int i) {
    if (is_child && i < 16) return 2000 + i;
    if (!is_child && i >= 16 && i < 24) return 3000 + i;
    if (is_child && wrote && i >= 24 && i < 32) return 4000 + i;
    if (!is_child && wrote && i >= 32 && i < 40) return 5000 + i;
    return 1000 + i;
}

static void put(int i, unsigned long v) { memcpy(area + (size_t)i * PG, &v, sizeof v); }

static void check(const char *dir) {
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s/check.%d", dir, getpid());
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    int bad = -1;
    unsigned long got = 0;
    for (int i = 0; i < PAGES && bad < 0; i++) {
        memcpy(&got, area + (size_t)i * PG, sizeof got);
        if (got != expected(i) || area[(size_t)i * PG + PG - 1] != (unsigned char)i) bad = i;
    }
    if (bad < 0) fprintf(f, "ok\n");
    else fprintf(f, "bad %d %lu\n", bad, got);
    fclose(f);
    rename(tmp, path);
}

static void on_usr1(int s) { (void)s; want_check = 1; }
static void on_usr2(int s) { (void)s; want_write = 1; }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    area = mmap(0, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return 2;
    for (int i = 0; i < PAGES; i++) {
        memset(area + (size_t)i * PG, i, PG);
        put(i, 1000 + i);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/addr", argv[1]);
    FILE *a = fopen(path, "w");
    if (!a) return 2;
    fprintf(a, "%lu\n", (unsigned long)area);
    fclose(a);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, &old);
    is_child = fork() == 0;
    for (int i = 0; i < PAGES; i++)
        if (expected(i) != 1000 + (unsigned long)i) put(i, expected(i));
    snprintf(path, sizeof path, "%s/ready.%d", argv[1], getpid());
    fclose(fopen(path, "w"));
    for (;;) {
        sigsuspend(&old);
        if (want_write) {
            wrote = 1;
            for (int i = 24; i < 40; i++)
                if (expected(i) != 1000 + (unsigned long)i) put(i, expected(i));
        }
        want_write = 0;
        if (want_check) check(argv[1]);
        want_check = 0;
    }
}
