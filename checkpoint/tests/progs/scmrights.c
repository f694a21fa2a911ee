/* Test program: files in flight on unix sockets (sent with SCM_RIGHTS,
 * not received yet) when checkpointed.
 *
 * On a datagram pair: "one" (no file), then "two" carrying a pipe's read
 * end (the process keeps only the write end, with "pre" buffered in the
 * pipe), then "four" carrying DIR/data opened read-only at offset 4.
 * On a seqpacket pair: "three" carrying both ends of another pipe (the
 * process keeps neither), then "five" carrying the receiving socket
 * itself. On a stream pair: "bye" then a shutdown of writing on one end.
 * A listening unix socket bound to DIR/gone.sock, the path removed. A
 * listening socket on DIR/wait.sock with two connections of the process
 * waiting to be accepted. An unconnected datagram socket on DIR/rx.sock
 * with "from-tx" queued from the process's socket on DIR/tx.sock, then
 * "from-anon" from an unnamed one.
 * Then DIR/ready. On SIGUSR1 it receives it all (the stream: "bye" then
 * end of file; the end that shut down cannot write, the other can; the
 * listening socket still names DIR/gone.sock, which does not exist; the
 * two waiting connections are accepted in their order and carry data;
 * the datagrams come with their senders' addresses) and
 * writes DIR/check.<pid>: "ok", or "BAD: <what>". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <errno.h>
#include <unistd.h>

#include "answer.h"

static const char *dir;

static int send_fds(int via, const char *text, const int *fds, int n) {
    char control[CMSG_SPACE(4 * sizeof(int))];
    struct iovec iov = {(void *)text, strlen(text)};
    struct msghdr h = {0};
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    if (n > 0) {
        memset(control, 0, sizeof control);
        h.msg_control = control;
        h.msg_controllen = CMSG_SPACE(n * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&h);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(n * sizeof(int));
        memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    }
    return sendmsg(via, &h, 0) == (ssize_t)iov.iov_len ? 0 : -1;
}

/* Receive one message: its text into buf, its files into fds; returns
 * how many files, -1 on error. */
static int recv_fds(int via, char *buf, size_t len, int *fds) {
    char control[CMSG_SPACE(4 * sizeof(int))];
    struct iovec iov = {buf, len - 1};
    struct msghdr h = {0};
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    h.msg_control = control;
    h.msg_controllen = sizeof control;
    ssize_t got = recvmsg(via, &h, MSG_DONTWAIT);
    if (got < 0) return -1;
    buf[got] = 0;
    int n = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds + n, CMSG_DATA(c), k * sizeof(int));
            n += k;
        }
    }
    return n;
}

static int check_stream(int quiet, int other) {
    char got[16] = {0};
    CHECK(read(other, got, sizeof got - 1) == 3 && !strcmp(got, "bye"), "stream read '%s'", got);
    CHECK(read(other, got, sizeof got - 1) == 0, "no end of file after the shutdown");
    CHECK(write(quiet, "x", 1) < 0, "the end that shut down writes again");
    CHECK(write(other, "back", 4) == 4, "the other end cannot write");
    memset(got, 0, sizeof got);
    CHECK(read(quiet, got, sizeof got - 1) == 4 && !strcmp(got, "back"), "stream back '%s'", got);
    return 0;
}

static int check_gone(int ls, const char *want) {
    struct sockaddr_un a = {0};
    socklen_t l = sizeof a;
    struct stat st;
    CHECK(getsockname(ls, (struct sockaddr *)&a, &l) == 0 && !strcmp(a.sun_path, want), "listening socket named '%s'", a.sun_path);
    CHECK(stat(want, &st) < 0 && errno == ENOENT, "the removed socket path is back");
    return 0;
}

static int check_waiting(int lw, int w1, int w2) {
    char got[8] = {0};
    int a1 = accept(lw, NULL, NULL);
    int a2 = accept(lw, NULL, NULL);
    CHECK(a1 >= 0 && a2 >= 0, "the waiting connections cannot be accepted");
    fcntl(lw, F_SETFL, O_NONBLOCK);
    CHECK(accept(lw, NULL, NULL) < 0 && errno == EAGAIN, "a third connection waits");
    CHECK(write(w1, "w1", 2) == 2 && write(w2, "w2", 2) == 2, "the waiting clients cannot write");
    CHECK(read(a1, got, 2) == 2 && !strcmp(got, "w1"), "first accepted reads '%s'", got);
    CHECK(read(a2, got, 2) == 2 && !strcmp(got, "w2"), "second accepted reads '%s'", got);
    return 0;
}

static int check_senders(int rx, const char *tx_path) {
    char got[16] = {0};
    struct sockaddr_un from = {0};
    socklen_t l = sizeof from;
    CHECK(recvfrom(rx, got, sizeof got - 1, MSG_DONTWAIT, (struct sockaddr *)&from, &l) == 7 && !strcmp(got, "from-tx"), "rx first read '%s'", got);
    CHECK(!strcmp(from.sun_path, tx_path), "from-tx came from '%s'", from.sun_path);
    memset(got, 0, sizeof got);
    l = sizeof from;
    CHECK(recvfrom(rx, got, sizeof got - 1, MSG_DONTWAIT, (struct sockaddr *)&from, &l) == 9 && !strcmp(got, "from-anon"), "rx second read '%s'", got);
    CHECK(l <= sizeof(sa_family_t), "from-anon came from a named socket");
    return 0;
}

static int check(int dgram, int seqpacket, int keep_w) {
    char buf[64];
    int fds[4];
    CHECK(recv_fds(dgram, buf, sizeof buf, fds) == 0 && !strcmp(buf, "one"), "message one: %s", buf);
    CHECK(recv_fds(dgram, buf, sizeof buf, fds) == 1 && !strcmp(buf, "two"), "message two: %s", buf);
    int r = fds[0];
    CHECK(write(keep_w, "post", 4) == 4, "write to the kept pipe end");
    char got[16] = {0};
    CHECK(read(r, got, sizeof got - 1) == 7 && !memcmp(got, "prepost", 7), "pipe in flight read '%s'", got);
    CHECK(recv_fds(dgram, buf, sizeof buf, fds) == 1 && !strcmp(buf, "four"), "message four: %s", buf);
    memset(got, 0, sizeof got);
    CHECK(read(fds[0], got, 3) == 3 && !strcmp(got, "456"), "file in flight read '%s' (offset lost?)", got);
    CHECK(recv_fds(seqpacket, buf, sizeof buf, fds) == 2 && !strcmp(buf, "three"), "message three: %s", buf);
    CHECK(write(fds[1], "both", 4) == 4, "write to the pipe that was all in flight");
    memset(got, 0, sizeof got);
    CHECK(read(fds[0], got, sizeof got - 1) == 4 && !strcmp(got, "both"), "pipe all in flight read '%s'", got);
    CHECK(recv_fds(seqpacket, buf, sizeof buf, fds) == 1 && !strcmp(buf, "five"), "message five: %s", buf);
    struct stat a, b;
    CHECK(fstat(fds[0], &a) == 0 && fstat(seqpacket, &b) == 0 && a.st_ino == b.st_ino,
          "the socket in flight is not the receiving socket itself");
    CHECK(recv_fds(dgram, buf, sizeof buf, fds) < 0, "a message too many");
    return 0;
}

/* What the checks look at. */
static int dg[2], sp[2], p[2], st[2], ls, lw, w1, w2, rx;
static char gone[108], tx_path[108];

static int check_all(void) {
    return check(dg[1], sp[1], p[1]) == 0 && check_stream(st[0], st[1]) == 0 &&
                   check_gone(ls, gone) == 0 && check_waiting(lw, w1, w2) == 0 &&
                   check_senders(rx, tx_path) == 0
               ? 0
               : -1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    dir = argv[1];
    answer_setup();
    int q[2];
    snprintf(gone, sizeof gone, "%s/gone.sock", dir);
    ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un ga = {.sun_family = AF_UNIX};
    strncpy(ga.sun_path, gone, sizeof ga.sun_path - 1);
    if (ls < 0 || bind(ls, (struct sockaddr *)&ga, sizeof ga) || listen(ls, 1) || unlink(gone)) return 3;
    lw = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un wa = {.sun_family = AF_UNIX};
    snprintf(wa.sun_path, sizeof wa.sun_path, "%s/wait.sock", dir);
    if (lw < 0 || bind(lw, (struct sockaddr *)&wa, sizeof wa) || listen(lw, 4)) return 3;
    w1 = socket(AF_UNIX, SOCK_STREAM, 0);
    w2 = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un rxa = {.sun_family = AF_UNIX}, txa = {.sun_family = AF_UNIX};
    snprintf(rxa.sun_path, sizeof rxa.sun_path, "%s/rx.sock", dir);
    snprintf(txa.sun_path, sizeof txa.sun_path, "%s/tx.sock", dir);
    snprintf(tx_path, sizeof tx_path, "%s", txa.sun_path);
    rx = socket(AF_UNIX, SOCK_DGRAM, 0);
    int tx = socket(AF_UNIX, SOCK_DGRAM, 0), anon = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (bind(rx, (struct sockaddr *)&rxa, sizeof rxa) || bind(tx, (struct sockaddr *)&txa, sizeof txa)) return 3;
    if (sendto(tx, "from-tx", 7, 0, (struct sockaddr *)&rxa, sizeof rxa) != 7 ||
        sendto(anon, "from-anon", 9, 0, (struct sockaddr *)&rxa, sizeof rxa) != 9)
        return 3;
    if (connect(w1, (struct sockaddr *)&wa, sizeof wa) || connect(w2, (struct sockaddr *)&wa, sizeof wa)) return 3;
    char path[512];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp))
        return 3;
    if (pipe(p) || pipe(q)) return 3;
    signal(SIGPIPE, SIG_IGN);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || write(st[0], "bye", 3) != 3 ||
        shutdown(st[0], SHUT_WR))
        return 3;
    if (write(p[1], "pre", 3) != 3) return 3;
    snprintf(path, sizeof path, "%s/data", dir);
    int file = open(path, O_RDONLY);
    if (file < 0 || lseek(file, 4, SEEK_SET) != 4) return 3;
    if (send_fds(dg[0], "one", 0, 0) || send_fds(dg[0], "two", &p[0], 1) ||
        send_fds(sp[0], "three", q, 2) || send_fds(dg[0], "four", &file, 1) ||
        send_fds(sp[0], "five", &sp[1], 1))
        return 4;
    close(p[0]);
    close(q[0]);
    close(q[1]);
    close(file);

    answer_loop(dir, check_all);
}
