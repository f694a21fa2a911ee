/* Test program: the parent fills a 256 KiB pipe with 200000 bytes of a
 * pattern and waits; the child reads 100 bytes every 5 ms, checks the
 * pattern and prints "N ok" per chunk. A checkpoint finds most of the data
 * still buffered in the pipe. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    int p[2];
    if (pipe(p)) return 2;
    fcntl(p[1], F_SETPIPE_SZ, 256 << 10);
    if (fork() == 0) {
        close(p[1]);
        setvbuf(stdout, NULL, _IONBF, 0);
        unsigned char buf[100];
        unsigned long off = 0;
        for (unsigned long n = 1;; n++) {
            size_t got = 0;
            while (got < sizeof buf) {
                ssize_t r = read(p[0], buf + got, sizeof buf - got);
                if (r <= 0) return 0;
                got += r;
            }
            int bad = 0;
            for (size_t i = 0; i < sizeof buf; i++)
                if (buf[i] != (unsigned char)((off + i) % 251)) bad = 1;
            off += sizeof buf;
            printf(bad ? "%lu BAD pipe data\n" : "%lu ok\n", n);
            usleep(5000);
        }
    }
    close(p[0]);
    static unsigned char data[200000];
    for (unsigned long i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i % 251);
    if (write(p[1], data, sizeof data) != sizeof data) return 3;
    wait(0);
    return 0;
}
