#include <signal.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

static volatile sig_atomic_t usr1, chld, onalt;
static volatile int from_pid;
static sigjmp_buf env;
static char altstack[65536];

static void on_usr1(int sig, siginfo_t *si, void *uc) {
    (void)uc; usr1 = sig; from_pid = si->si_pid;
    char probe; onalt = (&probe >= altstack && &probe < altstack + sizeof altstack);
}
static void on_chld(int sig) { (void)sig; chld++; }
static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)uc; printf("segv sig=%d addr=%p code=%d\n", sig, si->si_addr, si->si_code);
    siglongjmp(env, 1);
}

int main(void) {
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    sigaltstack(&ss, 0);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_usr1; sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGUSR1, &sa, 0);
    double x = 1.5;
    kill(getpid(), SIGUSR1);
    printf("usr1=%d from_self=%d onalt=%d x=%.2f\n", usr1, from_pid == getpid(), onalt, x * 2);

    /* blocked signals stay pending until unblocked */
    sigset_t set, old; sigemptyset(&set); sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &old);
    usr1 = 0; raise(SIGUSR1);
    sigset_t pend; sigpending(&pend);
    printf("pending=%d delivered=%d\n", sigismember(&pend, SIGUSR1), usr1);
    sigprocmask(SIG_SETMASK, &old, 0);
    printf("after unblock delivered=%d\n", usr1);

    /* SIGCHLD and a child killed by a default action */
    signal(SIGCHLD, on_chld);
    pid_t c = fork();
    if (c == 0) { raise(SIGTERM); _exit(9); }
    int st; waitpid(c, &st, 0);
    printf("child signaled=%d sig=%d chld=%d\n", WIFSIGNALED(st), WTERMSIG(st), chld);

    /* a pipe with no reader: SIGPIPE ignored gives EPIPE */
    signal(SIGPIPE, SIG_IGN);
    int fd[2]; pipe(fd); close(fd[0]);
    printf("write=%zd\n", write(fd[1], "x", 1));

    /* a fault the program handles */
    struct sigaction sb = {0}; sb.sa_sigaction = on_segv; sb.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sb, 0);
    if (sigsetjmp(env, 1) == 0) { *(volatile int *)16 = 1; puts("not reached"); }
    puts("recovered");

    /* sigsuspend waits for a signal from a child */
    sigprocmask(SIG_BLOCK, &set, &old);
    signal(SIGUSR1, on_chld); chld = 0;
    c = fork();
    if (c == 0) { kill(getppid(), SIGUSR1); _exit(0); }
    sigset_t none; sigemptyset(&none);
    sigsuspend(&none);
    waitpid(c, &st, 0);
    printf("suspend woke chld>=1: %d\n", chld >= 1);
    /* an unhandled default: the parent sees the signal */
    c = fork();
    if (c == 0) { signal(SIGSEGV, SIG_DFL); *(volatile int *)8 = 1; _exit(0); }
    waitpid(c, &st, 0);
    printf("segv child signaled=%d sig=%d\n", WIFSIGNALED(st), WTERMSIG(st));
    return 0;
}
