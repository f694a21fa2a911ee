/* Test program: parent and child share a MAP_SHARED anonymous area. The child
 * bumps a counter in it; the parent checks every step that the child's
 * counter moved (so the memory is still shared) and that the 1 MiB pattern
 * both wrote is intact, and prints "N ok" or "N BAD what". */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct shared { volatile unsigned long child, parent; unsigned char data[1 << 20]; };

static unsigned long sum(const unsigned char *p) {
    unsigned long s = 0;
    for (int i = 0; i < (1 << 20); i += 512) s += p[i];
    return s;
}

int main(void) {
    struct shared *s = mmap(0, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) return 2;
    for (int i = 0; i < (1 << 19); i += 512) s->data[i] = (unsigned char)(i >> 9);
    if (fork() == 0) {
        /* the child fills the second half: only it ever maps those pages in */
        for (int i = 1 << 19; i < (1 << 20); i += 512) s->data[i] = 7;
        for (;;) { s->child++; usleep(2000); }
    }
    while (s->child == 0) usleep(1000);
    unsigned long expect = 0;
    for (int i = 0; i < (1 << 19); i += 512) expect += (unsigned char)(i >> 9);
    expect += 7UL * ((1 << 19) / 512);
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned long last = 0;
    for (unsigned long n = 1;; n++) {
        usleep(30000);
        const char *bad = 0;
        if (s->child <= last) bad = "child counter not seen";
        else if (sum(s->data) != expect) bad = "shared data";
        last = s->child;
        s->parent = n;
        if (bad) printf("%lu BAD %s\n", n, bad); else printf("%lu ok\n", n);
    }
}
