/* Test program: many mapped files, more than restart keeps open at once
 * while it maps them (64). DIR/f0..f79 (2 pages each, page p of file i
 * full of 'A' + (i + p) % 26) are each mapped twice, their fds closed:
 * page 0 private read-only, page 1 private read-write with its first
 * byte rewritten to 'w'; every 8th file also page 1 shared read-write (its last
 * byte written through it). Every 50 ms the program checks every mapping
 * and prints "N ok", or "N BAD i what". */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096
#define FILES 80

static unsigned char *ro[FILES], *rw[FILES], *sh[FILES];

static char fill(int i, int p) { return 'A' + (i + p) % 26; }

static const char *check(int i) {
    if (ro[i][0] != fill(i, 0) || ro[i][PG - 1] != fill(i, 0)) return "read-only";
    if (rw[i][0] != 'w' || rw[i][1] != fill(i, 1)) return "private";
    if (sh[i] && sh[i][PG - 1] != 's') return "shared";
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned char page[PG];
    for (int i = 0; i < FILES; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/f%d", argv[1], i);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) return 2;
        for (int p = 0; p < 2; p++) {
            memset(page, fill(i, p), PG);
            if (write(fd, page, PG) != PG) return 2;
        }
        ro[i] = mmap(0, PG, PROT_READ, MAP_PRIVATE, fd, 0);
        rw[i] = mmap(0, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, PG);
        if (ro[i] == MAP_FAILED || rw[i] == MAP_FAILED) return 2;
        rw[i][0] = 'w';
        if (i % 8 == 0) {
            sh[i] = mmap(0, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, PG);
            if (sh[i] == MAP_FAILED) return 2;
            sh[i][PG - 1] = 's';
        }
        close(fd);
    }
    for (unsigned long n = 1;; n++) {
        usleep(50000);
        int bad = -1;
        const char *what = 0;
        for (int i = 0; i < FILES && !what; i++)
            if ((what = check(i))) bad = i;
        if (what) printf("%lu BAD %d %s\n", n, bad, what);
        else printf("%lu ok\n", n);
    }
}
