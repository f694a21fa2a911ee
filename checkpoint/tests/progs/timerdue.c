/* A periodic timerfd whose expirations are left unread while the program is
 * checkpointed (the kernel stops such a timer until they are read, and shows
 * it_value 0). Once the file argv[1] exists, it reads the timer ten times:
 * each read must come within a second ("N ok"), else "N BAD". */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {{0, 10000000}, {0, 10000000}};
    timerfd_settime(tfd, 0, &its, 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("1 ok\n");
    struct timespec nap = {0, 20000000};
    while (access(argv[1], F_OK) != 0) nanosleep(&nap, 0);
    for (int n = 2; n <= 11; n++) {
        struct pollfd p = {tfd, POLLIN, 0};
        uint64_t v;
        if (poll(&p, 1, 1000) != 1 || read(tfd, &v, 8) != 8) {
            printf("%d BAD the timer stopped\n", n);
            return 1;
        }
        printf("%d ok\n", n);
    }
    for (;;) pause();
}
