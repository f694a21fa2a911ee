/* Test program: holds argv[1] MiB of touched private memory (so that a
 * checkpoint spends a while copying pages) and sleeps. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 64;
    char *p = malloc(mib << 20);
    if (!p) return 2;
    for (size_t i = 0; i < (mib << 20); i += 4096) p[i] = (char)(i >> 12) | 1;
    for (;;) pause();
}
