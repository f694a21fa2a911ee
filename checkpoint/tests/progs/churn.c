/* Test program: changes its memory all the time, in every way a checkpoint
 * taken while it runs (or an incremental one) could get wrong, and checks
 * all of it every step. Prints "N ok" or "N BAD <what> <page>" to stdout.
 *
 * argv[1]: MiB of pages. Each page i holds a pattern of (i, ver[i]); ver[]
 * lives in memory too, so a snapshot that mixes instants is caught. Every
 * step: rewrite 100 random pages; drop a random range with
 * MADV_DONTNEED (its pages read as zeros: version 0); move a 1 MiB area to
 * the other of two places with mremap (into a range it unmapped before);
 * unmap and map again a 256 KiB area (zeros); grow the heap with sbrk. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define MOVED_PAGES 256
#define REMAP_PAGES 64

static uint64_t rnd = 88172645463325252ull;
static uint64_t next_rand(void) {
    rnd ^= rnd << 13; rnd ^= rnd >> 7; rnd ^= rnd << 17;
    return rnd;
}

/* The content of page `i` at version `v` (version 0: zeros). */
static void fill(unsigned char *p, uint64_t i, uint32_t v) {
    if (v == 0) { memset(p, 0, PAGE); return; }
    for (int k = 0; k < PAGE; k += 8) {
        uint64_t w = (i * 1000003u + v) ^ ((uint64_t)k << 32);
        memcpy(p + k, &w, 8);
    }
}

static int check(const unsigned char *p, uint64_t i, uint32_t v) {
    unsigned char want[PAGE];
    fill(want, i, v);
    return memcmp(p, want, PAGE) == 0;
}

int main(int argc, char **argv) {
    size_t npages = (size_t)atol(argv[1]) * 256;
    unsigned char *mem = mmap(0, npages * PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *ver = calloc(npages, sizeof *ver);
    uint32_t *ver2 = mmap(0, npages * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *remap = mmap(0, REMAP_PAGES * PAGE, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t remap_ver = 1;
    /* two places for the moved area; only one is mapped at a time (the
     * other stays a hole: nothing else is mapped after this) */
    unsigned char *places = mmap(0, 2 * MOVED_PAGES * PAGE, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *moved = places;
    munmap(places + MOVED_PAGES * PAGE, MOVED_PAGES * PAGE);
    uint32_t moved_ver = 1;
    unsigned char *heap0 = sbrk(0);
    size_t heap_pages = 0;
    if (mem == MAP_FAILED || !ver || places == MAP_FAILED || remap == MAP_FAILED) return 2;
    for (size_t i = 0; i < npages; i++) { ver[i] = ver2[i] = 1; fill(mem + i * PAGE, i, 1); }
    for (size_t i = 0; i < MOVED_PAGES; i++) fill(moved + i * PAGE, 5000000 + i, moved_ver);
    for (size_t i = 0; i < REMAP_PAGES; i++) fill(remap + i * PAGE, 6000000 + i, remap_ver);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long n = 1;; n++) {
        const char *bad = 0;
        size_t at = 0;
        for (size_t i = 0; i < npages && !bad; i++)
            if (!check(mem + i * PAGE, i, ver[i])) { bad = "page"; at = i; }
        for (size_t i = 0; i < MOVED_PAGES && !bad; i++)
            if (!check(moved + i * PAGE, 5000000 + i, moved_ver)) { bad = "moved"; at = i; }
        for (size_t i = 0; i < REMAP_PAGES && !bad; i++)
            if (!check(remap + i * PAGE, 6000000 + i, remap_ver)) { bad = "remapped"; at = i; }
        for (size_t i = 0; i < heap_pages && !bad; i++)
            if (!check(heap0 + i * PAGE, 7000000 + i, (uint32_t)i + 1)) { bad = "heap"; at = i; }
        if (bad) {
            const unsigned char *p = !strcmp(bad, "page") ? mem + at * PAGE : 0;
            uint64_t w0 = 0;
            if (p) memcpy(&w0, p, 8);
            printf("%lu BAD %s %zu (ver %u ver2 %u, first word %llx) ver@%p\n", n, bad, at, p ? ver[at] : 0, p ? ver2[at] : 0,
                   (unsigned long long)w0, (void*)&ver[at]);
        } else printf("%lu ok\n", n);

        for (int k = 0; k < 100; k++) {
            size_t i = next_rand() % npages;
            ver[i]++; ver2[i]++;
            fill(mem + i * PAGE, i, ver[i]);
        }
        size_t d = next_rand() % npages, dl = 1 + next_rand() % 64;
        if (d + dl > npages) dl = npages - d;
        madvise(mem + d * PAGE, dl * PAGE, MADV_DONTNEED);
        for (size_t i = d; i < d + dl; i++) ver[i] = ver2[i] = 0;
        /* the moved area goes to the other place, over what was there */
        unsigned char *other = moved == places ? places + MOVED_PAGES * PAGE : places;
        moved = mremap(moved, MOVED_PAGES * PAGE, MOVED_PAGES * PAGE,
                       MREMAP_MAYMOVE | MREMAP_FIXED, other);
        if (moved == MAP_FAILED) return 3;
        if (n % 3 == 0) {
            moved_ver++;
            for (size_t i = 0; i < MOVED_PAGES; i += 7) fill(moved + i * PAGE, 5000000 + i, moved_ver);
            for (size_t i = 0; i < MOVED_PAGES; i++)
                if (i % 7) fill(moved + i * PAGE, 5000000 + i, moved_ver);
        }
        if (n % 5 == 0) {
            munmap(remap, REMAP_PAGES * PAGE);
            remap = mmap(remap, REMAP_PAGES * PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            remap_ver = (n % 10 == 0) ? 0 : remap_ver + 1;
            if (remap_ver)
                for (size_t i = 0; i < REMAP_PAGES; i++) fill(remap + i * PAGE, 6000000 + i, remap_ver);
        }
        if (heap_pages < 512 && n % 2 == 0) {
            if (sbrk(PAGE) == (void *)-1) return 4;
            fill(heap0 + heap_pages * PAGE, 7000000 + heap_pages, (uint32_t)heap_pages + 1);
            heap_pages++;
        }
        usleep(2000);
    }
}
