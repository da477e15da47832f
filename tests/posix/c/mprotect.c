#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
static sigjmp_buf env;
static void on_segv(int s) { (void)s; siglongjmp(env, 1); }
int main(void) {
    signal(SIGSEGV, on_segv);
    char *p = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(p, "data");
    mprotect(p, 4096, PROT_READ);
    printf("read-only keeps %s\n", p);
    if (sigsetjmp(env, 1) == 0) { p[0] = 'X'; puts("write went through"); } else puts("write to read-only: SIGSEGV");
    mprotect(p, 4096, PROT_READ | PROT_WRITE);
    p[0] = 'D'; printf("writable again: %s\n", p);
    char *g = mmap(0, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (sigsetjmp(env, 1) == 0) { volatile char c = g[0]; (void)c; puts("guard read went through"); } else puts("guard page: SIGSEGV");
    printf("rwx refused: %d\n", mprotect(p, 4096, PROT_READ | PROT_WRITE | PROT_EXEC) != 0);
    printf("unmapped: %d\n", mprotect((void *)0x10000000, 4096, PROT_READ) != 0);
    return 0;
}
