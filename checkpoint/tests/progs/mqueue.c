/* Two POSIX message queues: /argv[1] (named) and /argv[1]-gone (removed
 * with mq_unlink at once). Each always holds 2 messages; every 20 ms one
 * more is sent (priority n % 3, so order by priority matters) and one is
 * received, checked against what the queue must give. "N ok" or "BAD". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Model of a queue: messages (n, prio) in receive order. */
struct msg { unsigned long n; unsigned prio; };
struct model { struct msg m[16]; int len; };

static void model_send(struct model *q, unsigned long n, unsigned prio) {
    int i = q->len;
    while (i > 0 && q->m[i - 1].prio < prio) { q->m[i] = q->m[i - 1]; i--; }
    q->m[i] = (struct msg){n, prio};
    q->len++;
}

static int step(mqd_t q, struct model *m, unsigned long n, const char *what) {
    char b[64];
    int len = snprintf(b, sizeof b, "m%lu", n);
    if (mq_send(q, b, len, n % 3) < 0) { printf("BAD %s send\n", what); return 0; }
    model_send(m, n, n % 3);
    unsigned prio;
    char got[128] = {0};
    int k = mq_receive(q, got, sizeof got, &prio);
    char want[64];
    snprintf(want, sizeof want, "m%lu", m->m[0].n);
    if (k < 0 || strcmp(got, want) || prio != m->m[0].prio) {
        printf("BAD %s got '%s' prio %u want '%s'\n", what, got, prio, want);
        return 0;
    }
    memmove(m->m, m->m + 1, (m->len - 1) * sizeof m->m[0]);
    m->len--;
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    char name[256], gone[256];
    snprintf(name, sizeof name, "/%s", argv[1]);
    snprintf(gone, sizeof gone, "/%s-gone", argv[1]);
    struct mq_attr a = {.mq_maxmsg = 8, .mq_msgsize = 64};
    mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_NONBLOCK, 0640, &a);
    mqd_t g = mq_open(gone, O_RDWR | O_CREAT | O_NONBLOCK, 0600, &a);
    if (q < 0 || g < 0) { perror("mq_open"); return 2; }
    mq_unlink(gone);
    struct model mq = {0}, mg = {0};
    for (unsigned long n = 1; n <= 2; n++) {
        char b[64];
        int len = snprintf(b, sizeof b, "m%lu", n);
        mq_send(q, b, len, n % 3); model_send(&mq, n, n % 3);
        mq_send(g, b, len, n % 3); model_send(&mg, n, n % 3);
    }
    for (unsigned long n = 3;; n++) {
        if (!step(q, &mq, n, "named") || !step(g, &mg, n, "removed")) return 1;
        printf("%lu ok\n", n);
        usleep(20000);
    }
}
