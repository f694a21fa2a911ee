/* Test program: prints "N ok" every 20 ms (N counts steps, so a gap or a
 * reset shows). The test stops it with SIGSTOP and checks it comes back
 * stopped, then goes on after SIGCONT. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long n = 1;; n++) {
        printf("%lu ok\n", n);
        usleep(20000);
    }
}
