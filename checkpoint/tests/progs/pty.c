/* Test program: a pseudo-terminal pair held by the job itself. The slave
 * is set raw, the window to 33x77; DIR/pts gets the slave's name. Every
 * 100 ms "ping" goes master -> slave and "pong" slave -> master, and the
 * program prints "N ok" when both arrive, the slave is still raw, the
 * window still 33x77 and the slave's name unchanged; "N BAD what"
 * otherwise. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

static int got(int fd, const char *want) {
    char buf[16];
    size_t have = 0, n = strlen(want);
    while (have < n) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 2000) != 1) return 0;
        ssize_t r = read(fd, buf + have, n - have);
        if (r <= 0) return 0;
        have += r;
    }
    return memcmp(buf, want, n) == 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) || unlockpt(m)) return 2;
    char name[64];
    snprintf(name, sizeof name, "%s", ptsname(m));
    int s = open(name, O_RDWR | O_NOCTTY);
    if (s < 0) return 2;
    struct termios t;
    tcgetattr(s, &t);
    cfmakeraw(&t);
    tcsetattr(s, TCSANOW, &t);
    struct winsize w = {33, 77, 0, 0};
    ioctl(m, TIOCSWINSZ, &w);
    char path[512];
    snprintf(path, sizeof path, "%s/pts", argv[1]);
    FILE *f = fopen(path, "w");
    if (!f) return 2;
    fprintf(f, "%s\n", name);
    fclose(f);
    for (unsigned long n = 1;; n++) {
        usleep(100000);
        const char *bad = 0;
        struct termios now;
        struct winsize wn;
        if (write(m, "ping", 4) != 4 || !got(s, "ping")) bad = "ping";
        else if (write(s, "pong", 4) != 4 || !got(m, "pong")) bad = "pong";
        else if (tcgetattr(s, &now) || (now.c_lflag & (ECHO | ICANON))) bad = "termios";
        else if (ioctl(s, TIOCGWINSZ, &wn) || wn.ws_row != 33 || wn.ws_col != 77) bad = "winsize";
        else if (strcmp(ptsname(m), name)) bad = "number";
        if (bad) printf("%lu BAD %s\n", n, bad);
        else printf("%lu ok\n", n);
    }
}
