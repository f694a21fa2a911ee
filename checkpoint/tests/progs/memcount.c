/* Test program: keeps a counter and memory of every kind (heap, brk, anon
 * mmap, private file mapping, stack, TLS), checks its own checksums every
 * step and prints "N ok" or "N BAD <region>" to stdout. argv[1]: a data file
 * to map privately. Each step also modifies every region, so a restore that
 * loses or mixes pages is caught at the next step. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define ANON (8 << 20)
#define HEAP (256 << 10)
#define BRK (64 << 10)
#define FILEMAP (64 << 10)

static __thread unsigned long tls_counter;
static volatile sig_atomic_t usr1_seen;
static void on_usr1(int s) { (void)s; usr1_seen++; }

static unsigned long sum(const unsigned char *p, size_t n) {
    unsigned long s = 0;
    for (size_t i = 0; i < n; i += 64) s += p[i];
    return s;
}

int main(int argc, char **argv) {
    unsigned char stackbuf[16384];
    unsigned char *anon = mmap(0, ANON, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *heap = malloc(HEAP);
    unsigned char *brkp = sbrk(BRK);
    int fd = open(argv[1], O_RDONLY);
    unsigned char *fmap = mmap(0, FILEMAP, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (anon == MAP_FAILED || !heap || brkp == (void *)-1 || fmap == MAP_FAILED) return 2;
    for (size_t i = 0; i < ANON; i += 64) anon[i] = (unsigned char)(i / 64);
    memset(heap, 3, HEAP);
    memset(brkp, 5, BRK);
    memset(stackbuf, 9, sizeof stackbuf);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    unsigned long e_anon = sum(anon, ANON), e_heap = sum(heap, HEAP), e_brk = sum(brkp, BRK);
    unsigned long e_file = sum(fmap, FILEMAP), e_stack = sum(stackbuf, sizeof stackbuf);
    struct timespec last = {0};
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long n = 1;; n++) {
        tls_counter++;
        const char *bad = 0;
        if (sum(anon, ANON) != e_anon) bad = "anon";
        else if (sum(heap, HEAP) != e_heap) bad = "heap";
        else if (sum(brkp, BRK) != e_brk) bad = "brk";
        else if (sum(fmap, FILEMAP) != e_file) bad = "file";
        else if (sum(stackbuf, sizeof stackbuf) != e_stack) bad = "stack";
        else if (tls_counter != n) bad = "tls";
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now); /* through the vDSO */
        if (now.tv_sec < last.tv_sec) bad = "clock";
        last = now;
        if (sbrk(0) != brkp + BRK) bad = "sbrk";
        if (bad) printf("%lu BAD %s\n", n, bad); else printf("%lu ok\n", n);
        /* change every region by one step */
        size_t k = (n * 4096) % ANON;
        anon[k - k % 64] += 1; e_anon += 1;
        heap[(n * 64) % HEAP] += 1; e_heap += 1;
        brkp[(n * 64) % BRK] += 1; e_brk += 1;
        fmap[(n * 64) % FILEMAP] += 1; e_file += 1;
        stackbuf[(n * 64) % sizeof stackbuf] += 1; e_stack += 1;
        usleep(20000);
    }
}
