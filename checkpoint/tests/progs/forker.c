/* Test program: argv[1] MiB of pages, each holding its index; every step
 * it forks a child that checks all of them and exits 0 or 1, checks them
 * itself, and prints "N ok" or "N BAD <who>". Restored lazily, the forks
 * happen while the pages are still coming in. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static size_t npages;
static unsigned long *mem;

static int check(void) {
    for (size_t i = 0; i < npages; i++)
        if (mem[i * 512] != i * 7 + 1) return 0;
    return 1;
}

int main(int argc, char **argv) {
    npages = (size_t)atol(argv[1]) * 256;
    mem = mmap(0, npages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 2;
    for (size_t i = 0; i < npages; i++) mem[i * 512] = i * 7 + 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long n = 1;; n++) {
        pid_t c = fork();
        if (c == 0) _exit(check() ? 0 : 1);
        int st = 0;
        int mine = check();
        waitpid(c, &st, 0);
        if (!mine) printf("%lu BAD parent\n", n);
        else if (!WIFEXITED(st) || WEXITSTATUS(st)) printf("%lu BAD child\n", n);
        else printf("%lu ok\n", n);
        usleep(5000);
    }
}
