/* Test program: a fanotify group (notification class, non-blocking) with
 * a mark on DIR/watched (open, modify, close) and a mark on the mount of
 * DIR with only an ignored mask (modify, access; surviving modification).
 * DIR/ready once made, with its fdinfo's fanotify lines in DIR/before. On
 * SIGUSR1: its fanotify lines must be the same but for mount ids and
 * device numbers, and opening DIR/watched must bring an event.
 * DIR/check.<pid>: "ok" or "BAD: <what>". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }
static char why[256];

/* The fdinfo's fanotify lines without mnt_id/sdev values. */
static void marks(int fd, char *out, size_t len) {
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    out[0] = 0;
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "fanotify", 8)) continue;
        char *w = strtok(line, " \n");
        while (w) {
            if (strncmp(w, "mnt_id:", 7) && strncmp(w, "sdev:", 5)) {
                strncat(out, w, len - strlen(out) - 2);
                strncat(out, " ", len - strlen(out) - 1);
            }
            w = strtok(NULL, " \n");
        }
        strncat(out, "\n", len - strlen(out) - 1);
    }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *dir = argv[1];
    signal(SIGUSR1, on_usr1);
    sigset_t block, none;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, 0);
    sigemptyset(&none);
    char watched[512], path[512], tmp[530];
    snprintf(watched, sizeof watched, "%s/watched", dir);
    int w = open(watched, O_CREAT | O_WRONLY, 0644);
    if (w < 0) return 3;
    close(w);
    int fa = fanotify_init(FAN_NONBLOCK | FAN_CLASS_NOTIF, O_RDONLY | O_LARGEFILE);
    if (fa < 0) return 3;
    if (fanotify_mark(fa, FAN_MARK_ADD, FAN_OPEN | FAN_MODIFY | FAN_CLOSE, AT_FDCWD, watched) ||
        fanotify_mark(fa, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                      FAN_MODIFY | FAN_ACCESS, AT_FDCWD, dir))
        return 4;
    static char before[4096], after[4096];
    marks(fa, before, sizeof before);
    snprintf(path, sizeof path, "%s/before", dir);
    FILE *f = fopen(path, "w");
    if (!f) return 2;
    fputs(before, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/ready", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f) return 2;
    fclose(f);
    rename(tmp, path);
    for (;;) {
        sigsuspend(&none);
        if (!asked) continue;
        asked = 0;
        marks(fa, after, sizeof after);
        why[0] = 0;
        if (strcmp(before, after)) {
            snprintf(why, sizeof why, "marks changed: [%s] -> [%s]", before, after);
        } else {
            int o = open(watched, O_RDONLY);
            if (o >= 0) close(o);
            char buf[4096];
            if (read(fa, buf, sizeof buf) <= 0) snprintf(why, sizeof why, "no event after an open");
        }
        snprintf(path, sizeof path, "%s/check.%d", dir, getpid());
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        f = fopen(tmp, "w");
        if (!f) continue;
        if (!why[0]) fprintf(f, "ok\n");
        else fprintf(f, "BAD: %s\n", why);
        fclose(f);
        rename(tmp, path);
    }
}
