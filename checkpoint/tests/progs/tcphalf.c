/* Test program: two TCP connections to 127.0.0.1:argv[2] (the test is the
 * peer), each half closed when checkpointed.
 *
 * Connection 1 sends "1hello" and shuts down writing (FIN_WAIT2 once the
 * peer acknowledged). Connection 2 sends "2"; the peer answers "data" and
 * shuts down its writing, which this program does not read (CLOSE_WAIT,
 * "data" queued). Connection 3 sends "3", then as much as its send
 * buffer takes while the peer does not read (byte i is i % 251), and shuts
 * down writing (FIN_WAIT1: data and FIN unacknowledged); DIR/sent3 holds
 * how many bytes after the "3". With argv[3], connection 4 is a
 * non-blocking connect to 127.0.0.1:argv[3], whose SYNs the test drops:
 * it is under way (SYN_SENT) when checkpointed. DIR/ready once connection
 * 2 saw the peer's FIN.
 * On SIGUSR1: connection 2 must read "data" then end of file, then it
 * sends "reply" and shuts down; connection 1 must read what the peer sent
 * meanwhile ("world") then end of file; connection 4 must be connected
 * (the test accepts it) and send "4". DIR/check.<pid>: "ok" or
 * "BAD: <what>". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "answer.h"


static int dial(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) exit(3);
    return s;
}

/* Read until end of file (at most len - 1 bytes); -1 on error. */
static int read_all(int fd, char *buf, size_t len) {
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, len - 1 - got);
        if (n < 0) return -1;
        if (n == 0) break;
        got += n;
        if (got == len - 1) break;
    }
    buf[got] = 0;
    return (int)got;
}


static int check(int c1, int c2) {
    char buf[64];
    CHECK(read_all(c2, buf, sizeof buf) == 4 && !strcmp(buf, "data"), "connection 2 read '%s'", buf);
    CHECK(write(c2, "reply", 5) == 5, "write on connection 2");
    CHECK(shutdown(c2, SHUT_WR) == 0, "shutdown of connection 2");
    CHECK(read_all(c1, buf, sizeof buf) == 5 && !strcmp(buf, "world"), "connection 1 read '%s'", buf);
    CHECK(write(c1, "x", 1) < 0, "connection 1 still writes after its shutdown");
    return 0;
}

static int c1, c2, c4 = -1;

static int check_connecting(void) {
    if (c4 < 0) return 0;
    struct pollfd w = {.fd = c4, .events = POLLOUT};
    CHECK(poll(&w, 1, 20000) == 1, "connection 4 never connected");
    int err = -1;
    socklen_t l = sizeof err;
    CHECK(getsockopt(c4, SOL_SOCKET, SO_ERROR, &err, &l) == 0 && err == 0, "connection 4 failed: %d", err);
    CHECK(write(c4, "4", 1) == 1, "connection 4 cannot write");
    return 0;
}

static int check_all(void) { return check(c1, c2) == 0 && check_connecting() == 0 ? 0 : -1; }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *dir = argv[1];
    int port = atoi(argv[2]);
    signal(SIGPIPE, SIG_IGN);
    answer_setup();

    c1 = dial(port);
    if (write(c1, "1hello", 6) != 6 || shutdown(c1, SHUT_WR)) return 4;
    c2 = dial(port);
    if (write(c2, "2", 1) != 1) return 4;
    struct pollfd p = {.fd = c2, .events = POLLRDHUP};
    while (poll(&p, 1, -1) < 1 || !(p.revents & POLLRDHUP)) {
    }
    int c3 = dial(port);
    if (write(c3, "3", 1) != 1) return 4;
    fcntl(c3, F_SETFL, O_NONBLOCK);
    static char chunk[4096];
    long sent = 0;
    for (int idle = 0; idle < 20;) {
        for (size_t i = 0; i < sizeof chunk; i++) chunk[i] = (char)((sent + i) % 251);
        ssize_t n = write(c3, chunk, sizeof chunk);
        if (n > 0) {
            sent += n;
            idle = 0;
        } else if (errno == EAGAIN) {
            idle++;
            usleep(10000);
        } else {
            return 4;
        }
    }
    if (shutdown(c3, SHUT_WR)) return 4;
    if (argc > 3) {
        c4 = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (c4 < 0 || connect(c4, (struct sockaddr *)&a, sizeof a) == 0 || errno != EINPROGRESS) return 5;
    }

    char path[512], count[32];
    snprintf(path, sizeof path, "%s/sent3", dir);
    snprintf(count, sizeof count, "%ld\n", sent);
    write_whole(path, count);
    answer_loop(dir, check_all);
}
