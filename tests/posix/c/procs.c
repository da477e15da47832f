#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "upper")) {      /* the exec'd child: a filter */
        char buf[256]; ssize_t n;
        while ((n = read(0, buf, sizeof buf)) > 0) {
            for (ssize_t i = 0; i < n; i++) buf[i] = toupper((unsigned char)buf[i]);
            write(1, buf, n);
        }
        return 7;
    }
    /* fork + exec + wait through two pipes */
    int to[2], from[2];
    pipe(to); pipe(from);
    pid_t c = fork();
    if (c == 0) {
        dup2(to[0], 0); dup2(from[1], 1);
        close(to[0]); close(to[1]); close(from[0]); close(from[1]);
        execl(argv[0], argv[0], "upper", (char *)0);
        perror("execl"); _exit(127);
    }
    close(to[0]); close(from[1]);
    const char *msg = "hello from the parent\n";
    write(to[1], msg, strlen(msg)); close(to[1]);
    char out[256]; ssize_t n, total = 0;
    while ((n = read(from[0], out + total, sizeof out - 1 - total)) > 0) total += n;
    out[total] = 0;
    int st; pid_t w = waitpid(c, &st, 0);
    printf("got: %s", out);
    printf("waited right child=%d exited=%d code=%d\n", w == c, WIFEXITED(st), WEXITSTATUS(st));
    /* many children, reaped in any order */
    int sum = 0;
    for (int i = 0; i < 5; i++) if (fork() == 0) _exit(i + 1);
    for (int i = 0; i < 5; i++) { wait(&st); sum += WEXITSTATUS(st); }
    printf("sum=%d wait-again=%d\n", sum, wait(&st));
    /* exec of a missing program fails in the child */
    if ((c = fork()) == 0) { execl("/no/such", "x", (char *)0); _exit(errno == ENOENT ? 42 : 1); }
    waitpid(c, &st, 0);
    printf("missing exec code=%d\n", WEXITSTATUS(st));
    /* getppid and process groups */
    if ((c = fork()) == 0) { setpgid(0, 0); _exit(getppid() > 0 && getpgrp() == getpid() ? 0 : 1); }
    waitpid(c, &st, 0);
    printf("child pgrp ok=%d\n", WEXITSTATUS(st) == 0);
    /* waitid with a siginfo, sched_yield, getsid, getrlimit */
    if ((c = fork()) == 0) { sched_yield(); _exit(getsid(0) == getsid(getppid()) ? 5 : 6); }
    siginfo_t si = {0};
    int r = waitid(P_PID, c, &si, WEXITED);
    printf("waitid=%d signo=%d code=%d status=%d right=%d\n", r, si.si_signo, si.si_code, si.si_status,
           si.si_pid == c);
    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl);
    printf("getrlimit ok=%d\n", rl.rlim_cur > 0);
    return 0;
}
