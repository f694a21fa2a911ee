/* Test program: two children die at once (one with exit code 7, one
 * killed by SIGTERM) and stay zombies: the parent prints "N ok" every
 * 20 ms and reaps them only on SIGUSR1, printing "reaped <pid> exit <code>"
 * or "reaped <pid> signal <sig>" for each. */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t reap;
static void on_usr1(int s) { (void)s; reap = 1; }

int main(void) {
    signal(SIGUSR1, on_usr1);
    pid_t a = fork();
    if (a == 0) _exit(7);
    pid_t b = fork();
    if (b == 0) { signal(SIGTERM, SIG_DFL); kill(getpid(), SIGTERM); pause(); }
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long n = 1;; n++) {
        if (reap) {
            reap = 0;
            pid_t kids[2] = {a, b};
            for (int i = 0; i < 2; i++) {
                int st = 0;
                if (waitpid(kids[i], &st, 0) != kids[i]) printf("reap %d failed\n", kids[i]);
                else if (WIFEXITED(st)) printf("reaped %d exit %d\n", kids[i], WEXITSTATUS(st));
                else if (WIFSIGNALED(st)) printf("reaped %d signal %d\n", kids[i], WTERMSIG(st));
            }
        }
        printf("%lu ok\n", n);
        usleep(20000);
    }
}
