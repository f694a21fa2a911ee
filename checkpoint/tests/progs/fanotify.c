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

#include "answer.h"


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

static int fa;
static char watched[512], before[4096], after[4096];

static int check(void) {
    marks(fa, after, sizeof after);
    CHECK(!strcmp(before, after), "marks changed: [%s] -> [%s]", before, after);
    int o = open(watched, O_RDONLY);
    if (o >= 0) close(o);
    char buf[4096];
    CHECK(read(fa, buf, sizeof buf) > 0, "no event after an open");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *dir = argv[1];
    answer_setup();
    char path[512];
    snprintf(watched, sizeof watched, "%s/watched", dir);
    int w = open(watched, O_CREAT | O_WRONLY, 0644);
    if (w < 0) return 3;
    close(w);
    fa = fanotify_init(FAN_NONBLOCK | FAN_CLASS_NOTIF, O_RDONLY | O_LARGEFILE);
    if (fa < 0) return 3;
    if (fanotify_mark(fa, FAN_MARK_ADD, FAN_OPEN | FAN_MODIFY | FAN_CLOSE, AT_FDCWD, watched) ||
        fanotify_mark(fa, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                      FAN_MODIFY | FAN_ACCESS, AT_FDCWD, dir))
        return 4;
    marks(fa, before, sizeof before);
    snprintf(path, sizeof path, "%s/before", dir);
    write_whole(path, before);
    answer_loop(dir, check);
}
