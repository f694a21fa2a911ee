/* Test program: sockets of every kind krg saves. argv[1]: a path for a
 * listening unix socket. Prints "udp PORT" and "tcp PORT" first, then
 * "N ok" (or "N BAD <what>") every 20 ms.
 * - parent and child share a unix stream socketpair: the parent sends
 *   "ping N", the child (reading slowly, so bytes queue up) answers
 *   "pong N"; and a datagram socketpair: the parent sends "d N", the child
 *   checks they come one by one, in order;
 * - the parent listens on argv[1]: a client that connects and sends a line
 *   gets "unix:<line>" back;
 * - a UDP socket on 127.0.0.1 echoes every datagram;
 * - a TCP socket on 127.0.0.1 listens; each connection gets every line
 *   echoed back prefixed by "tcp:". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void child(int s, int d) {
    char buf[64];
    unsigned long want = 1, dwant = 1;
    for (;;) {
        usleep(100000);
        /* stream: "ping N\n" records, answered one by one */
        for (;;) {
            int n = 0;
            char c;
            while (n < 63 && read(s, &c, 1) == 1 && c != '\n') buf[n++] = c;
            buf[n] = 0;
            if (n == 0) break;
            unsigned long got = strtoul(buf + 5, 0, 10);
            char out[64];
            int m = snprintf(out, sizeof out, "pong %lu %s\n", got, got == want ? "ok" : "BAD");
            want = got + 1;
            write(s, out, m);
        }
        for (;;) {
            int n = recv(d, buf, 63, MSG_DONTWAIT);
            if (n <= 0) break;
            buf[n] = 0;
            unsigned long got = strtoul(buf + 2, 0, 10);
            if (got != dwant) write(s, "dgram BAD\n", 10);
            dwant = got + 1;
        }
    }
}

int main(int argc, char **argv) {
    int sp[2], dp[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
    socketpair(AF_UNIX, SOCK_DGRAM, 0, dp);
    if (fork() == 0) { close(sp[0]); close(dp[0]); child(sp[1], dp[1]); }
    close(sp[1]); close(dp[1]);
    fcntl(sp[0], F_SETFL, O_NONBLOCK);
    int ul = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un ua = {AF_UNIX};
    strncpy(ua.sun_path, argv[1], sizeof ua.sun_path - 1);
    unlink(argv[1]);
    bind(ul, (void *)&ua, sizeof ua);
    listen(ul, 4);
    int u = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {AF_INET, 0, {htonl(INADDR_LOOPBACK)}};
    bind(u, (void *)&a, sizeof a);
    socklen_t al = sizeof a;
    getsockname(u, (void *)&a, &al);
    int tl = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(tl, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in t = {AF_INET, 0, {htonl(INADDR_LOOPBACK)}};
    bind(tl, (void *)&t, sizeof t);
    listen(tl, 8);
    socklen_t tlen = sizeof t;
    getsockname(tl, (void *)&t, &tlen);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("udp %d\ntcp %d\n", ntohs(a.sin_port), ntohs(t.sin_port));
    int conns[16], nconn = 0;
    char inbuf[4096];
    size_t inlen = 0;
    unsigned long pongs = 0;
    for (unsigned long n = 1;; n++) {
        char msg[64];
        int m = snprintf(msg, sizeof msg, "ping %lu\n", n);
        write(sp[0], msg, m);
        m = snprintf(msg, sizeof msg, "d %lu", n);
        send(dp[0], msg, m, MSG_DONTWAIT);
        const char *bad = 0;
        int r = read(sp[0], inbuf + inlen, sizeof inbuf - inlen - 1);
        if (r > 0) inlen += r;
        inbuf[inlen] = 0;
        char *nl;
        while ((nl = memchr(inbuf, '\n', inlen))) {
            *nl = 0;
            unsigned long p = 0;
            if (strstr(inbuf, "BAD")) bad = inbuf;
            else if (sscanf(inbuf, "pong %lu", &p) == 1) {
                if (p != pongs + 1) bad = "pong out of order";
                pongs = p;
            }
            size_t used = nl - inbuf + 1;
            memmove(inbuf, nl + 1, inlen - used);
            inlen -= used;
            if (bad) break;
        }
        int c = accept4(ul, 0, 0, 0);
        if (c >= 0) {
            char line[128];
            int k = read(c, line, sizeof line - 1);
            if (k > 0) {
                line[k] = 0;
                char out[160];
                int o = snprintf(out, sizeof out, "unix:%s", line);
                write(c, out, o);
            }
            close(c);
        }
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        char dg[256];
        int k = recvfrom(u, dg, sizeof dg, 0, (void *)&from, &fl);
        if (k > 0) sendto(u, dg, k, 0, (void *)&from, fl);
        c = accept4(tl, 0, 0, SOCK_NONBLOCK);
        if (c >= 0 && nconn < 16) conns[nconn++] = c;
        for (int i = 0; i < nconn; i++) {
            char line[256] = "tcp:";
            k = read(conns[i], line + 4, sizeof line - 5);
            if (k > 0) write(conns[i], line, k + 4);
        }
        if (bad) printf("%lu BAD %s\n", n, bad); else printf("%lu ok\n", n);
        usleep(20000);
    }
}
