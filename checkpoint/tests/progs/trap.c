/* Test program: catches SIGTRAP and executes int3 (a breakpoint on itself)
 * every 20 ms, printing "N ok" when its handler ran exactly once for it,
 * "N BAD trap" otherwise. Dies of SIGTRAP if the handler is lost. */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile unsigned long traps;
static void on_trap(int s) { (void)s; traps++; }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGTRAP, on_trap);
    for (unsigned long n = 1;; n++) {
        unsigned long before = traps;
        __asm__ volatile("int3");
        if (traps != before + 1) printf("%lu BAD trap\n", n);
        else printf("%lu ok\n", n);
        usleep(20000);
    }
}
