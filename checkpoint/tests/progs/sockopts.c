/* Test program: sockets with options set beyond a new socket's. A TCP
 * socket bound to 127.0.0.1 and listening (priority 5, receive low-water
 * mark 7, OOB inline, don't-route, TOS 0x10, TTL 33, free bind, keepalive
 * idle 77 s, interval 11 s, count 4), a UDP socket on IPv6 (traffic class
 * 0x20, hop limit 9, receive packet info) and a unix datagram socket
 * (SO_PASSSEC); the TCP socket is also bound to device "lo", lingers 5 s
 * and has a 3.5 s receive timeout. A datagram pair whose receiving end
 * has a classic BPF filter keeping 3 bytes of each message, locked. DIR/ready once set. On SIGUSR1:
 * DIR/check.<pid> is "ok" if every option still has its value, else
 * "BAD: <option> <value>". */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "answer.h"

struct opt { int *fd; int level, name, value; const char *what; };
static int tcp, udp6, ux;
static struct opt opts[] = {
    {&tcp, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS"}, /* sets the priority too: first */
    {&tcp, SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY"},
    {&tcp, SOL_SOCKET, SO_RCVLOWAT, 7, "SO_RCVLOWAT"},
    {&tcp, SOL_SOCKET, SO_OOBINLINE, 1, "SO_OOBINLINE"},
    {&tcp, SOL_SOCKET, SO_DONTROUTE, 1, "SO_DONTROUTE"},
    {&tcp, IPPROTO_IP, IP_TTL, 33, "IP_TTL"},
    {&tcp, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND"},
    {&tcp, IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE"},
    {&tcp, IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL"},
    {&tcp, IPPROTO_TCP, TCP_KEEPCNT, 4, "TCP_KEEPCNT"},
    {&udp6, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS"},
    {&udp6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9, "IPV6_UNICAST_HOPS"},
    {&udp6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO"},
    {&ux, SOL_SOCKET, SO_PASSSEC, 1, "SO_PASSSEC"},
};
#define NOPTS (int)(sizeof opts / sizeof *opts)

static int fp[2];

static int check(void) {
    int n = 0;
    socklen_t nl = 0;
    CHECK(getsockopt(fp[1], SOL_SOCKET, SO_GET_FILTER, NULL, &nl) == 0 && nl == 1, "the filter has %u instructions", nl);
    socklen_t il = sizeof n;
    CHECK(getsockopt(fp[1], SOL_SOCKET, SO_LOCK_FILTER, &n, &il) == 0 && n == 1, "the filter is not locked");
    char got[16] = {0};
    CHECK(send(fp[0], "hello", 5, 0) == 5 && recv(fp[1], got, sizeof got, 0) == 3 && !strcmp(got, "hel"),
          "the filter let '%s' through", got);
    for (int i = 0; i < NOPTS; i++) {
        int v = -1;
        socklen_t l = sizeof v;
        getsockopt(*opts[i].fd, opts[i].level, opts[i].name, &v, &l);
        CHECK(v == opts[i].value, "%s %d", opts[i].what, v);
    }
    char dev[16] = {0};
    socklen_t dl = sizeof dev;
    struct linger l2 = {0};
    struct timeval t2 = {0};
    socklen_t ll = sizeof l2, tl = sizeof t2;
    getsockopt(tcp, SOL_SOCKET, SO_BINDTODEVICE, dev, &dl);
    getsockopt(tcp, SOL_SOCKET, SO_LINGER, &l2, &ll);
    getsockopt(tcp, SOL_SOCKET, SO_RCVTIMEO, &t2, &tl);
    CHECK(!strcmp(dev, "lo"), "SO_BINDTODEVICE '%s'", dev);
    CHECK(l2.l_onoff == 1 && l2.l_linger == 5, "SO_LINGER %d %d", l2.l_onoff, l2.l_linger);
    CHECK(t2.tv_sec == 3 && t2.tv_usec == 500000, "SO_RCVTIMEO %ld.%06ld", (long)t2.tv_sec, (long)t2.tv_usec);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *dir = argv[1];
    answer_setup();
    tcp = socket(AF_INET, SOCK_STREAM, 0);
    udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
    ux = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (tcp < 0 || udp6 < 0 || ux < 0) return 3;
    struct sock_filter keep3[] = {BPF_STMT(BPF_RET | BPF_K, 3)};
    struct sock_fprog prog = {1, keep3};
    int one = 1;
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, fp) ||
        setsockopt(fp[1], SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) ||
        setsockopt(fp[1], SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof one))
        return 3;
    struct linger lg = {1, 5};
    struct timeval tv = {3, 500000};
    if (setsockopt(tcp, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) ||
        setsockopt(tcp, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) ||
        setsockopt(tcp, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv)) {
        perror("struct options");
        return 3;
    }
    for (int i = 0; i < NOPTS; i++)
        if (setsockopt(*opts[i].fd, opts[i].level, opts[i].name, &opts[i].value, sizeof(int))) {
            perror(opts[i].what);
            return 3;
        }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(tcp, (struct sockaddr *)&a, sizeof a) || listen(tcp, 4)) return 3;

    answer_loop(dir, check);
}
