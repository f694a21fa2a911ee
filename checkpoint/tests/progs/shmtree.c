/* Test program: parent and child share a MAP_SHARED anonymous area. The child
 * bumps a counter in it; the parent checks every step that the child's
 * counter moved (so the memory is still shared) and that the 1 MiB pattern
 * both wrote is intact, and prints "N ok" or "N BAD what". With argument
 * "sysv" the area is a SysV segment (IPC_PRIVATE, already IPC_RMID'ed) and
 * the parent also checks every step that its shmid still names it. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

struct shared { volatile unsigned long child, parent; unsigned char data[1 << 20]; };

static unsigned long sum(const unsigned char *p) {
    unsigned long s = 0;
    for (int i = 0; i < (1 << 20); i += 512) s += p[i];
    return s;
}

int main(int argc, char **argv) {
    struct shared *s;
    int shmid = -1;
    if (argc > 1) {
        shmid = shmget(IPC_PRIVATE, sizeof *s, IPC_CREAT | 0600);
        s = shmat(shmid, 0, 0);
        shmctl(shmid, IPC_RMID, 0);
    } else {
        s = mmap(0, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    }
    if (s == MAP_FAILED || s == (void *)-1) return 2;
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
    unsigned long last = 0, unseen = 0;
    for (unsigned long n = 1;; n++) {
        usleep(30000);
        const char *bad = 0;
        /* the child may not have run since the last look (a loaded machine,
           or a restart that resumed this sleep with almost nothing left of
           it): look again, up to 10 times, before saying anything */
        if (s->child <= last && ++unseen < 10) { n--; continue; }
        unseen = 0;
        if (s->child <= last) bad = "child counter not seen (300 ms)";
        else if (sum(s->data) != expect) bad = "shared data";
        struct shmid_ds ds;
        if (shmid >= 0 && (shmctl(shmid, IPC_STAT, &ds) || ds.shm_segsz != sizeof *s)) bad = "shmid";
        last = s->child;
        s->parent = n;
        if (bad) printf("%lu BAD %s\n", n, bad); else printf("%lu ok\n", n);
    }
}
