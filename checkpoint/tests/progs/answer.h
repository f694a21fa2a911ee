/* Shared by the test programs that answer on request. A program sets up
 * what it holds, calls answer_loop: DIR/ready appears, and each SIGUSR1
 * runs its check, whose verdict goes to DIR/check.<pid> ("ok", or
 * "BAD: <why>" as CHECK wrote it), each file written whole through a
 * rename. Call answer_setup first: SIGUSR1 is blocked until the loop
 * waits for it. */
#ifndef ANSWER_H
#define ANSWER_H
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static char why[512];

#define CHECK(cond, ...)                                    \
    do {                                                    \
        if (!(cond)) {                                      \
            snprintf(why, sizeof why, __VA_ARGS__);         \
            return -1;                                      \
        }                                                   \
    } while (0)

static volatile sig_atomic_t answer_asked;
static void answer_on_usr1(int s) { (void)s; answer_asked = 1; }

static void answer_setup(void) {
    signal(SIGUSR1, answer_on_usr1);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, 0);
}

/* Write `text` to `path` whole: through path.tmp and a rename. */
static void write_whole(const char *path, const char *text) {
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

static void answer_loop(const char *dir, int (*check)(void)) {
    char path[560];
    snprintf(path, sizeof path, "%s/ready", dir);
    write_whole(path, "");
    sigset_t none;
    sigemptyset(&none);
    for (;;) {
        sigsuspend(&none);
        if (!answer_asked) continue;
        answer_asked = 0;
        char verdict[600] = "ok\n";
        why[0] = 0;
        if (check() != 0) snprintf(verdict, sizeof verdict, "BAD: %s\n", why);
        snprintf(path, sizeof path, "%s/check.%d", dir, getpid());
        write_whole(path, verdict);
    }
}
#endif
