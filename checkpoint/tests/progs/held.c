/* A FIFO (argv[1], made here) always holding one token "T<n>\n" not yet
 * read, read through a second fd; and a deleted file (made in argv[2],
 * unlinked) of 10000 bytes (byte i = i % 251) read 4 bytes at a time
 * from its own offset. Every 20 ms: send token n+1, read token n, read
 * the next 4 bytes of the deleted file and check them, check it is still
 * unlinked; print "N ok", or "BAD …" on any surprise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (mkfifo(argv[1], 0640) < 0 && errno != EEXIST) { perror("mkfifo"); return 2; }
    int w = open(argv[1], O_RDWR);
    int r = open(argv[1], O_RDONLY | O_NONBLOCK);
    char path[4096];
    snprintf(path, sizeof path, "%s/deleted.bin", argv[2]);
    int d = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
    if (w < 0 || r < 0 || d < 0) { perror("open"); return 2; }
    unsigned char buf[10000];
    for (int i = 0; i < 10000; i++) buf[i] = i % 251;
    if (write(d, buf, sizeof buf) != sizeof buf) return 2;
    unlink(path);
    lseek(d, 0, SEEK_SET);
    char tok[64];
    int len = snprintf(tok, sizeof tok, "T%d\n", 1);
    write(w, tok, len);
    for (unsigned long n = 1;; n++) {
        len = snprintf(tok, sizeof tok, "T%lu\n", n + 1);
        if (write(w, tok, len) != len) { printf("BAD fifo write\n"); return 1; }
        char got[64] = {0}, want[64];
        int wl = snprintf(want, sizeof want, "T%lu\n", n);
        int k = read(r, got, wl);
        if (k != wl || memcmp(got, want, wl)) { printf("BAD fifo read %d '%s' want '%s'\n", k, got, want); return 1; }
        off_t at = lseek(d, 0, SEEK_CUR);
        if (at >= 9996) { lseek(d, 0, SEEK_SET); at = 0; }
        unsigned char b4[4];
        if (read(d, b4, 4) != 4) { printf("BAD deleted read\n"); return 1; }
        for (int i = 0; i < 4; i++)
            if (b4[i] != (at + i) % 251) { printf("BAD deleted content at %ld\n", (long)at); return 1; }
        struct stat st;
        if (fstat(d, &st) < 0 || st.st_nlink != 0 || st.st_size != 10000) { printf("BAD deleted stat\n"); return 1; }
        printf("%lu ok %ld\n", n, (long)at);
        usleep(20000);
    }
}
