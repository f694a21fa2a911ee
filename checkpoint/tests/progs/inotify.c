/* Watches directory argv[1] (wd 1) and file argv[1]/f (wd 3: wd 2 was
 * added and removed). Every 20 ms: create argv[1]/s<n> and expect
 * IN_CREATE on wd 1 with that name; write to f and expect IN_MODIFY on
 * wd 3. Prints "N ok", or "BAD …". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

static int in;

static int expect(int wd, unsigned mask, const char *name) {
    struct pollfd p = {.fd = in, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) { printf("BAD no event for wd %d\n", wd); return 0; }
    char buf[4096] __attribute__((aligned(8)));
    int n = read(in, buf, sizeof buf);
    if (n < (int)sizeof(struct inotify_event)) { printf("BAD read %d\n", n); return 0; }
    struct inotify_event *e = (void *)buf;
    if (e->wd != wd || !(e->mask & mask) || (name && strcmp(e->name, name))) {
        printf("BAD event wd %d mask %x name %s, want wd %d\n", e->wd, e->mask, e->len ? e->name : "", wd);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    char f[4096], s[4096];
    snprintf(f, sizeof f, "%s/f", argv[1]);
    int ffd = open(f, O_RDWR | O_CREAT, 0644);
    in = inotify_init1(IN_CLOEXEC);
    int w1 = inotify_add_watch(in, argv[1], IN_CREATE);
    int w2 = inotify_add_watch(in, "/", IN_ATTRIB);
    inotify_rm_watch(in, w2);
    int ign[1];
    (void)ign;
    /* the IN_IGNORED event of the removed watch */
    struct pollfd p = {.fd = in, .events = POLLIN};
    if (poll(&p, 1, 1000) == 1) { char b[4096]; read(in, b, sizeof b); }
    int w3 = inotify_add_watch(in, f, IN_MODIFY);
    if (w1 != 1 || w3 != 3) { printf("BAD wds %d %d\n", w1, w3); return 2; }
    for (unsigned long n = 1;; n++) {
        char name[64];
        snprintf(name, sizeof name, "s%lu", n);
        snprintf(s, sizeof s, "%s/%s", argv[1], name);
        int c = open(s, O_WRONLY | O_CREAT, 0644);
        close(c);
        if (!expect(1, IN_CREATE, name)) return 1;
        unlink(s);
        write(ffd, "x", 1);
        if (!expect(3, IN_MODIFY, NULL)) return 1;
        printf("%lu ok\n", n);
        usleep(20000);
    }
}
