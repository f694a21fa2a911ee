/* Test program: mappings of deleted files. DIR/kept (3 pages, page i full
 * of 'a' + i) is mapped shared (A) and private (B, its last two pages,
 * whose first one the program rewrites with 'P'), then deleted; its fd
 * stays open. DIR/gone (1 page of 'g') is mapped shared, deleted and its
 * fd closed. Every 50 ms the program writes a counter through A and prints
 * "N ok" when the fd reads it back (one file behind both), B's rewritten
 * page is still its own, B's other page is still the file's, and the
 * other mapping still holds its 'g's; otherwise "N BAD what". */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

static int all(const unsigned char *p, unsigned char c, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != c) return 0;
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    char kept[512], gone[512];
    snprintf(kept, sizeof kept, "%s/kept", argv[1]);
    snprintf(gone, sizeof gone, "%s/gone", argv[1]);
    int fd = open(kept, O_RDWR | O_CREAT | O_TRUNC, 0640);
    int gfd = open(gone, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || gfd < 0) return 2;
    unsigned char page[PG];
    for (int i = 0; i < 3; i++) {
        memset(page, 'a' + i, PG);
        if (write(fd, page, PG) != PG) return 2;
    }
    memset(page, 'g', PG);
    if (write(gfd, page, PG) != PG) return 2;
    unsigned char *a = mmap(0, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    unsigned char *b = mmap(0, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, PG);
    unsigned char *g = mmap(0, PG, PROT_READ, MAP_SHARED, gfd, 0);
    if (a == MAP_FAILED || b == MAP_FAILED || g == MAP_FAILED) return 2;
    memset(b, 'P', PG);
    unlink(kept);
    unlink(gone);
    close(gfd);
    for (unsigned long n = 1;; n++) {
        usleep(50000);
        const char *bad = 0;
        unsigned long back = 0;
        memcpy(a + 8, &n, sizeof n);
        if (pread(fd, &back, sizeof back, 8) != sizeof back || back != n) bad = "fd-and-mapping";
        else if (!all(b, 'P', PG)) bad = "private-page";
        else if (!all(b + PG, 'c', PG)) bad = "private-file-page";
        else if (!all(a + PG, 'b', PG)) bad = "shared-page";
        else if (!all(g, 'g', PG)) bad = "only-mapped";
        if (bad) printf("%lu BAD %s\n", n, bad);
        else printf("%lu ok\n", n);
    }
}
