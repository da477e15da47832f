#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    int ready[2]; pipe(ready);
    pid_t c = fork();
    if (c == 0) {                      /* the server: accept one, echo until EOF */
        int ls = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(7000)};
        if (bind(ls, (void *)&a, sizeof a) || listen(ls, 1)) { perror("server"); _exit(1); }
        write(ready[1], "r", 1);
        struct sockaddr_in peer; socklen_t pl = sizeof peer;
        int s = accept(ls, (void *)&peer, &pl);
        char buf[256]; ssize_t n; long total = 0;
        while ((n = recv(s, buf, sizeof buf, 0)) > 0) { send(s, buf, n, 0); total += n; }
        printf("server echoed %ld bytes, peer port set %d\n", total, ntohs(peer.sin_port) != 0);
        close(s); close(ls); _exit(0);
    }
    char r; read(ready[0], &r, 1);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(7000), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(s, (void *)&a, sizeof a)) { perror("connect"); return 1; }
    const char *msgs[] = {"hello ", "from ", "the client\n"};
    char back[64] = {0}; size_t got = 0;
    for (int i = 0; i < 3; i++) send(s, msgs[i], strlen(msgs[i]), 0);
    struct pollfd pf = {.fd = s, .events = POLLIN};
    while (got < 21 && poll(&pf, 1, 5000) == 1) { ssize_t n = recv(s, back + got, sizeof back - 1 - got, 0); if (n <= 0) break; got += n; }
    printf("client got: %s", back);
    shutdown(s, SHUT_WR);
    int st; waitpid(c, &st, 0);
    printf("server exit %d\n", WEXITSTATUS(st));
    /* UDP to ourselves */
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_port = htons(9000), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(u, (void *)&ua, sizeof ua);
    sendto(u, "dgram", 5, 0, (void *)&ua, sizeof ua);
    char d[16] = {0}; recvfrom(u, d, sizeof d, 0, 0, 0);
    printf("udp: %s\n", d);
    return 0;
}
