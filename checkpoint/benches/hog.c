/* Benchmark workload: touch argv[1] MiB of anonymous memory, then create
 * argv[2] (the "ready" marker) and idle. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
int main(int argc, char **argv) {
    size_t len = (size_t)atol(argv[1]) << 20;
    unsigned char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    for (size_t i = 0; i < len; i += 4096) p[i] = (unsigned char)(i >> 12);
    FILE *f = fopen(argv[2], "w");
    if (!f) return 2;
    fclose(f);
    for (;;) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, 0);
    }
}
