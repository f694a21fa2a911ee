/* Test program: a 3-process tree. The root forks a child and a grandchild;
 * tokens circulate root -> child -> grandchild -> root through pipes, each
 * hop incrementing them; the root checks each token and writes "N ok" to
 * stdout (a file). Every process also appends to its own log file. Each
 * process checks that its parent is still who it was ("BAD ppid"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

static void relay(int in, int out, int logfd) {
    pid_t parent = getppid();
    unsigned long v;
    for (;;) {
        if (read(in, &v, sizeof v) != sizeof v) _exit(3);
        if (getppid() != parent) v = 0xbad;
        else v++;
        dprintf(logfd, "%lu\n", v);
        if (write(out, &v, sizeof v) != sizeof v) _exit(4);
    }
}

int main(int argc, char **argv) {
    int a[2], b[2], c[2];
    if (pipe(a) || pipe(b) || pipe(c)) return 2;
    char path[4096];
    snprintf(path, sizeof path, "%s/child.log", argv[1]);
    if (fork() == 0) {
        int logfd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        snprintf(path, sizeof path, "%s/grandchild.log", argv[1]);
        if (fork() == 0) {
            int lg = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            close(a[0]); close(a[1]); close(b[1]); close(c[0]);
            relay(b[0], c[1], lg);
        }
        close(a[1]); close(b[0]); close(c[0]); close(c[1]);
        relay(a[0], b[1], logfd);
    }
    close(a[0]); close(b[0]); close(b[1]); close(c[1]);
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned long v = 0;
    for (unsigned long n = 1;; n++) {
        unsigned long sent = v;
        if (write(a[1], &v, sizeof v) != sizeof v) return 5;
        if (read(c[0], &v, sizeof v) != sizeof v) return 6;
        if (v != sent + 2) printf("%lu BAD token %lu\n", n, v);
        else printf("%lu ok\n", n);
        v++;
        usleep(20000);
    }
}
