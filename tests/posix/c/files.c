#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#define _GNU_SOURCE
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>

static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }

int main(int argc, char **argv) {
    /* argv[1]: the scratch directory (the host test passes its own; under exo, /tmp) */
    if (argc > 1 && chdir(argv[1]) != 0) return 2;
    mkdir("d", 0755);
    for (int i = 0; i < 20; i++) {
        char p[64]; snprintf(p, sizeof p, "d/f%02d", i);
        int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        dprintf(fd, "file %d\n", i); close(fd);
    }
    rename("d/f00", "d/zz"); unlink("d/f01"); mkdir("d/sub", 0700);
    DIR *d = opendir("d"); struct dirent *e; char *names[64]; int n = 0;
    while ((e = readdir(d))) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp);
    printf("%d entries:", n); for (int i = 0; i < n; i++) printf(" %s", names[i]); printf("\n");
    struct stat st; stat("d/sub", &st);
    printf("sub dir=%d mode=%o rmdir=%d\n", S_ISDIR(st.st_mode), st.st_mode & 0777, rmdir("d/sub"));
    printf("rmdir nonempty=%d\n", rmdir("d"));

    /* mmap: a private copy and a shared writable mapping of a file */
    int fd = open("mapfile", O_CREAT | O_RDWR | O_TRUNC, 0644);
    const char text[] = "0123456789abcdef";
    for (int i = 0; i < 1000; i++) write(fd, text, 16);
    char *priv = mmap(0, 16000, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    priv[0] = 'X';
    char *sh = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 4096);
    printf("private %.4s shared %.4s last %.4s\n", priv, sh, priv + 15996);
    memcpy(sh, "SHARED", 6); msync(sh, 8192, MS_SYNC); munmap(sh, 8192);
    char back[8] = {0}; pread(fd, back, 6, 4096);
    char first[2] = {0}; pread(fd, first, 1, 0);
    printf("file at 4096: %s, file at 0: %s\n", back, first);
    munmap(priv, 16000);
    char *big = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    big[0] = 1; big[(1 << 20) - 1] = 2;
    char *moved = mremap(big, 1 << 20, 2 << 20, MREMAP_MAYMOVE);
    printf("mremap kept %d %d zero %d\n", moved[0], moved[(1 << 20) - 1], moved[(2 << 20) - 1]);
    char *bad = mmap(0, 4096, PROT_READ, MAP_PRIVATE, 1000, 0);
    printf("bad fd %d\n", bad == MAP_FAILED);
    /* time */
    struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
    struct timespec ten = {0, 10000000}; nanosleep(&ten, 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    struct timeval tv; gettimeofday(&tv, 0);
    printf("slept>=10ms %d realtime>2020 %d\n", ns >= 10000000, tv.tv_sec > 1577836800);
    return 0;
}
