/* Test program: sets process attributes a restore must bring back, then
 * checks all of them every 20 ms, printing "N ok" or "N BAD <what>":
 * loginuid 4242, oom_score_adj 321, child subreaper, THP disabled,
 * membarrier (private expedited) registered, its own robust futex list,
 * madvise DONTFORK / DONTDUMP / WIPEONFORK areas, a 64 KiB mlock()ed one, a pipe whose read end is
 * O_NONBLOCK, 256 KiB big, owned (F_SETOWN) by this process with F_SETSIG
 * SIGRTMIN+1; SCHED_BATCH at nice 5, a thread at SCHED_RR 2; capabilities
 * reduced (bounding without CAP_SYS_MODULE; KILL, NET_BIND_SERVICE,
 * SYS_NICE permitted and effective, KILL inheritable and ambient; the
 * thread keeps only KILL and SYS_NICE and checks its own); a child
 * with parent-death signal SIGUSR2 that exits 3 if it finds it lost;
 * two MAP_SHARED PROT_READ file mappings (files in argv[1]): one of a file
 * opened read-write (mprotect to PROT_WRITE must work), one of a file
 * opened read-only (it must fail with EACCES). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MB (1UL << 20)
static char *dontfork, *dontdump, *wipe, *locked;
static int pfd[2];
static char *rwmap, *romap;
static struct { void *next; long off; void *pending; } head = {&head, 0, 0};

static void put(const char *path, const char *v) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(v, f) < 0 || fclose(f) != 0) { perror(path); exit(1); }
}

static long get(const char *path) {
    char b[64] = {0};
    FILE *f = fopen(path, "r");
    if (!f) return -99999;
    if (!fgets(b, sizeof b, f)) b[0] = 0;
    fclose(f);
    return strtol(b, 0, 10);
}

/* VmFlags of the mapping at `addr` contain `code`. */
static int vmflag(void *addr, const char *code) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (unsigned long)addr >= a && (unsigned long)addr < b;
        } else if (in && !strncmp(line, "VmFlags:", 8)) {
            char want[8];
            snprintf(want, sizeof want, " %s", code);
            found = strstr(line, want) != 0;
            break;
        }
    }
    if (f) fclose(f);
    return found;
}

static volatile int thread_bad;

/* The thread keeps fewer capabilities than the main thread (they are per
 * thread), and checks them and its bounding set (inherited without
 * CAP_SYS_MODULE) every step. */
static void *spin(void *a) {
    (void)a;
    struct __user_cap_header_struct ch = {_LINUX_CAPABILITY_VERSION_3, 0};
    unsigned mine = 1u << CAP_KILL | 1u << CAP_SYS_NICE;
    struct __user_cap_data_struct cd[2] = {{mine, mine, 0}, {0, 0, 0}};
    if (syscall(SYS_capset, &ch, cd)) thread_bad = 1;
    for (;;) {
        if (syscall(SYS_capget, &ch, cd) || cd[0].permitted != mine || cd[0].effective != mine ||
            cd[0].inheritable || prctl(PR_CAPBSET_READ, CAP_SYS_MODULE) != 0 ||
            prctl(PR_CAPBSET_READ, CAP_CHOWN) != 1)
            thread_bad = 1;
        usleep(20000);
    }
    return 0;
}

static const char *check(pthread_t th, pid_t kid) {
    if (get("/proc/self/loginuid") != 4242) return "loginuid";
    if (get("/proc/self/oom_score_adj") != 321) return "oom_score_adj";
    int v = 0;
    if (prctl(PR_GET_CHILD_SUBREAPER, &v) || v != 1) return "subreaper";
    if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1) return "thp_disable";
    int reg = syscall(SYS_membarrier, 1 << 9 /* GET_REGISTRATIONS */, 0, 0);
    if (reg < 0 || !(reg & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)) return "membarrier registration";
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)) return "membarrier use";
    void *h = 0;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, 0, &h, &len) || h != &head || len != sizeof head) return "robust list";
    if (!vmflag(dontfork, "dc")) return "MADV_DONTFORK";
    if (!vmflag(dontdump, "dd")) return "MADV_DONTDUMP";
    if (!vmflag(wipe, "wf")) return "MADV_WIPEONFORK";
    if (!vmflag(locked, "lo")) return "mlock";
    if (locked[4096] != 7) return "locked contents";
    if (!(fcntl(pfd[0], F_GETFL) & O_NONBLOCK)) return "pipe O_NONBLOCK";
    if (fcntl(pfd[1], F_GETFL) & O_NONBLOCK) return "pipe write end blocking";
    if (fcntl(pfd[0], F_GETPIPE_SZ) != 256 * 1024) return "pipe size";
    struct f_owner_ex own;
    if (fcntl(pfd[0], F_GETOWN_EX, &own) || own.type != F_OWNER_PID || own.pid != getpid()) return "F_SETOWN";
    if (fcntl(pfd[0], F_GETSIG) != SIGRTMIN + 1) return "F_SETSIG";
    if (sched_getscheduler(0) != SCHED_BATCH) return "SCHED_BATCH";
    errno = 0;
    if (getpriority(PRIO_PROCESS, 0) != 5) return "nice";
    int pol;
    struct sched_param sp;
    if (pthread_getschedparam(th, &pol, &sp) || pol != SCHED_RR || sp.sched_priority != 2) return "thread SCHED_RR";
    struct __user_cap_header_struct ch = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct cd[2];
    if (syscall(SYS_capget, &ch, cd)) return "capget";
    unsigned keep = 1u << CAP_KILL | 1u << CAP_NET_BIND_SERVICE | 1u << CAP_SYS_NICE;
    if (cd[0].permitted != keep || cd[0].effective != keep || cd[1].permitted || cd[1].effective) return "caps prm/eff";
    if (cd[0].inheritable != 1u << CAP_KILL || cd[1].inheritable) return "caps inh";
    if (prctl(PR_CAPBSET_READ, CAP_SYS_MODULE) != 0 || prctl(PR_CAPBSET_READ, CAP_CHOWN) != 1) return "bounding set";
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_KILL, 0, 0) != 1) return "ambient";
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_SYS_NICE, 0, 0) != 0) return "ambient extra";
    if (thread_bad) return "the thread's own capabilities or bounding set";
    int st;
    if (waitpid(kid, &st, WNOHANG) != 0) return "child (lost its parent-death signal)";
    if (mprotect(rwmap, 4096, PROT_READ | PROT_WRITE)) return "mprotect of a file opened read-write";
    rwmap[0]++;
    if (mprotect(rwmap, 4096, PROT_READ)) return "mprotect back";
    if (!mprotect(romap, 4096, PROT_READ | PROT_WRITE) || errno != EACCES) return "mprotect of a file opened read-only";
    return 0;
}

static char *map_file(const char *dir, const char *name, int mode) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, 4096) || close(fd)) return 0;
    fd = open(p, mode);
    char *m = mmap(0, 4096, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    return m == MAP_FAILED ? 0 : m;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) return 2;
    rwmap = map_file(argv[1], "rw", O_RDWR);
    romap = map_file(argv[1], "ro", O_RDONLY);
    if (!rwmap || !romap) return 1;
    put("/proc/self/loginuid", "4242");
    put("/proc/self/oom_score_adj", "321");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) return 1;
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0)) return 1;
    if (syscall(SYS_set_robust_list, &head, sizeof head)) return 1;
    int prot = PROT_READ | PROT_WRITE, fl = MAP_PRIVATE | MAP_ANONYMOUS;
    dontfork = mmap(0, 2 * MB, prot, fl, -1, 0);
    dontdump = mmap(0, 2 * MB, prot, fl, -1, 0);
    wipe = mmap(0, 2 * MB, prot, fl, -1, 0);
    memset(dontfork, 1, 2 * MB);
    locked = mmap(0, 64 * 1024, prot, fl, -1, 0);
    locked[4096] = 7;
    if (mlock(locked, 64 * 1024)) return 1;
    if (madvise(dontfork, 2 * MB, MADV_DONTFORK) || madvise(dontdump, 2 * MB, MADV_DONTDUMP) ||
        madvise(wipe, 2 * MB, MADV_WIPEONFORK)) return 1;
    if (pipe(pfd) || fcntl(pfd[0], F_SETFL, O_NONBLOCK) || fcntl(pfd[0], F_SETPIPE_SZ, 256 * 1024) < 0) return 1;
    if (fcntl(pfd[0], F_SETOWN, getpid()) || fcntl(pfd[0], F_SETSIG, SIGRTMIN + 1)) return 1;
    signal(SIGUSR2, SIG_IGN);
    pid_t kid = fork();
    if (kid == 0) {
        signal(SIGUSR2, SIG_DFL);
        prctl(PR_SET_PDEATHSIG, SIGUSR2);
        for (;;) {
            int s = 0;
            if (prctl(PR_GET_PDEATHSIG, &s) || s != SIGUSR2) _exit(3);
            usleep(20000);
        }
    }
    struct sched_param zero = {0};
    if (sched_setscheduler(0, SCHED_BATCH, &zero) || setpriority(PRIO_PROCESS, 0, 5)) return 1;
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE)) return 1;
    struct __user_cap_header_struct ch = {_LINUX_CAPABILITY_VERSION_3, 0};
    unsigned keep = 1u << CAP_KILL | 1u << CAP_NET_BIND_SERVICE | 1u << CAP_SYS_NICE;
    struct __user_cap_data_struct cd[2] = {{keep, keep, 1u << CAP_KILL}, {0, 0, 0}};
    if (syscall(SYS_capset, &ch, cd)) return 1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_KILL, 0, 0)) return 1;
    pthread_t th;
    if (pthread_create(&th, 0, spin, 0)) return 1;
    struct sched_param rr = {2};
    if (pthread_setschedparam(th, SCHED_RR, &rr)) return 1;
    for (unsigned long n = 1;; n++) {
        const char *bad = check(th, kid);
        if (bad) printf("%lu BAD %s\n", n, bad);
        else printf("%lu ok\n", n);
        usleep(20000);
    }
}
