/* Test program: a SysV semaphore set and message queue carry the state:
 * semaphore 0 counts the steps, semaphore 1 stays 7, and one message with
 * the previous step number always waits in the queue. Prints "N ok" or
 * "N BAD what"; writes "semid msqid" to argv[1] first. */
#include <stdio.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <unistd.h>

struct msg { long mtype; unsigned long n; };

int main(int argc, char **argv) {
    int sem = semget(IPC_PRIVATE, 2, 0600), q = msgget(IPC_PRIVATE, 0600);
    if (sem < 0 || q < 0) return 2;
    semctl(sem, 1, SETVAL, 7);
    struct msg m = {1, 0};
    msgsnd(q, &m, sizeof m.n, 0);
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "%d %d\n", sem, q);
    fclose(f);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long n = 1;; n++) {
        const char *bad = 0;
        struct sembuf op = {0, 1, 0};
        if (semop(sem, &op, 1)) bad = "semop";
        else if (semctl(sem, 0, GETVAL) != (int)n) bad = "semaphore 0"; /* < SEMVMX for 10 min */
        else if (semctl(sem, 1, GETVAL) != 7) bad = "semaphore 1";
        else if (msgrcv(q, &m, sizeof m.n, 0, IPC_NOWAIT) != sizeof m.n || m.n != n - 1) bad = "message";
        m.mtype = 1;
        m.n = n;
        msgsnd(q, &m, sizeof m.n, 0);
        if (bad) printf("%lu BAD %s\n", n, bad); else printf("%lu ok\n", n);
        usleep(20000);
    }
}
