#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <poll.h>

/* A TCP echo server for one connection from a host peer (exo run --net user,hostfwd=...). */
int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 7777;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1; setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4)) { perror("bind/listen"); return 1; }
    socklen_t al = sizeof a; getsockname(ls, (void *)&a, &al);
    printf("listening on %d\n", ntohs(a.sin_port)); fflush(stdout);
    int c = accept(ls, 0, 0); char buf[512]; ssize_t n; long total = 0;
    while ((n = read(c, buf, sizeof buf)) > 0) { write(c, buf, n); total += n; }
    close(c);
    fprintf(stderr, "echoed %ld bytes\n", total);
    return 0;
}
