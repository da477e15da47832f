/* The descriptor limit: RLIMIT_NOFILE is the app's fds quota under exo (exo run --quota fds=N),
 * opening past it is EMFILE, and a process may lower its soft limit but not raise the hard one.
 * Run natively under `ulimit -n N` it prints the same lines. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

int main(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r)) return 1;
    printf("limit %lu hard %lu\n", (unsigned long)r.rlim_cur, (unsigned long)r.rlim_max);
    int n = 0, last = -1;  /* counts would differ: a native run may inherit descriptors */
    for (;;) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0) {
            printf("last fd %d, then %s\n", last, errno == EMFILE ? "EMFILE" : "other");
            break;
        }
        last = fd;
    }
    for (int fd = 3; fd <= last; fd++) close(fd);
    r.rlim_cur = 10;
    if (setrlimit(RLIMIT_NOFILE, &r)) return 2;
    n = 0;
    while (dup(0) >= 0) n++;
    printf("soft 10: dup %d, then %s\n", n, errno == EMFILE ? "EMFILE" : "other");
    printf("dup2 to 10: %s\n", dup2(0, 10) < 0 && errno == EBADF ? "EBADF" : "ok");
    r.rlim_max += 1;
    printf("raise hard: %s\n", setrlimit(RLIMIT_NOFILE, &r) < 0 && errno == EPERM ? "EPERM" : "ok");
    return 0;
}
