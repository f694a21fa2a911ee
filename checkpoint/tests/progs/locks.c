/* Holds a flock (exclusive) on argv[1]/flock, a POSIX write lock on bytes
 * 0-99 of argv[1]/posix, an OFD read lock on argv[1]/ofd; prints "N ok"
 * every 20 ms while it still holds them (F_GETLK from a child would see
 * ours; here the program checks its fds stay valid). With "lease" it
 * takes a read lease on argv[1]/lease and a write lease on
 * argv[1]/wlease instead, and prints "N BAD lease" when F_GETLEASE no
 * longer reports them. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static int open_in(const char *dir, const char *name, int flags) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, flags | O_CREAT, 0644);
    if (fd < 0) { perror(p); _exit(2); }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int l = -1, w = -1;
    if (argc > 2 && !strcmp(argv[2], "lease")) {
        l = open_in(argv[1], "lease", O_RDONLY);
        if (fcntl(l, F_SETLEASE, F_RDLCK) < 0) { perror("F_SETLEASE"); return 2; }
        w = open_in(argv[1], "wlease", O_WRONLY);
        if (fcntl(w, F_SETLEASE, F_WRLCK) < 0) { perror("F_SETLEASE"); return 2; }
    } else {
        int a = open_in(argv[1], "flock", O_RDWR);
        if (flock(a, LOCK_EX | LOCK_NB) < 0) { perror("flock"); return 2; }
        int b = open_in(argv[1], "posix", O_RDWR);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
        if (fcntl(b, F_SETLK, &fl) < 0) { perror("F_SETLK"); return 2; }
        int c = open_in(argv[1], "ofd", O_RDWR);
        struct flock ofl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 0};
        if (fcntl(c, F_OFD_SETLK, &ofl) < 0) { perror("F_OFD_SETLK"); return 2; }
    }
    for (unsigned long n = 1;; n++) {
        if (l >= 0 && (fcntl(l, F_GETLEASE) != F_RDLCK || fcntl(w, F_GETLEASE) != F_WRLCK))
            printf("%lu BAD lease\n", n);
        else
            printf("%lu ok\n", n);
        usleep(20000);
    }
}
