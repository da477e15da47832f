/* nettest udp|tcp ADDR PORT N: a client for the echo services, to test a
 * network path from inside a guest (guest to guest over --net switch, or to
 * a host's echo server).
 *
 *   udp: N datagrams of 1..1472 bytes, one at a time, each checked against its echo
 *   tcp: one connection; a second thread sends N bytes of a pattern while the
 *        main thread reads the echo back and checks every byte
 *
 * Prints one line of result and exits 0 if everything came back intact, 1 if
 * not, 2 on bad arguments.
 *
 *   python -m exo boot guest_apps/tcp_echo guest_apps/nettest --net switch -- ...
 *   (see docs/net.md: app 0 is 10.0.2.15, app 1 is 10.0.2.16)
 *
 * Built into the static ELF `nettest` by `make` (gcc; see Makefile). */
#include "exo.h"
#include "libos.h"

#define SOCK_STREAM 1
#define SOCK_DGRAM 2

struct sockaddr_in { unsigned short family, port; unsigned addr; unsigned char zero[8]; };

static struct sockaddr_in peer;
static long total;
static char sbuf[8192];
static char rbuf[8192];
static char dgram[1472];
static char back[2048];

static unsigned char pattern(long i) { return (unsigned char)((i * 7 + (i >> 9)) & 0xff); }

static long number(const char *s) {
    long v = 0;
    if (!*s) return -1;
    for (; *s; s++) { if (*s < '0' || *s > '9') return -1; v = v * 10 + (*s - '0'); }
    return v;
}

static int parse_ip(const char *s, unsigned *out) {  /* dotted quad -> network byte order */
    unsigned parts[4];
    for (int i = 0; i < 4; i++) {
        long v = 0; int digits = 0;
        while (*s >= '0' && *s <= '9') { v = v * 10 + (*s++ - '0'); digits++; }
        if (!digits || v > 255) return -1;
        parts[i] = (unsigned)v;
        if (i < 3 && *s++ != '.') return -1;
    }
    if (*s) return -1;
    *out = parts[0] | parts[1] << 8 | parts[2] << 16 | parts[3] << 24;
    return 0;
}

static void fail(const char *what, long err) {
    lib_console_printf((long)"nettest: %s: %s\n", (long)what, lib_core_strerror(err), 0, 0, 0);
    lib_core_exit(1);
}

static long sender(long fd) {
    for (long off = 0; off < total;) {
        long n = total - off < (long)sizeof sbuf ? total - off : (long)sizeof sbuf;
        for (long j = 0; j < n; j++) sbuf[j] = (char)pattern(off + j);
        for (long done = 0; done < n;) {
            long k = lib_net_send(fd, (long)(sbuf + done), n - done, 0);
            if (k < 0) fail("send", k);
            done += k;
        }
        off += n;
    }
    lib_net_shutdown(fd, 1);  /* SHUT_WR: the echo server sees EOF and closes */
    return 0;
}

static void tcp(void) {
    long fd = lib_net_socket(SOCK_STREAM);
    if (fd < 0) fail("socket", fd);
    long rc = lib_net_connect(fd, (long)&peer, sizeof peer);
    if (rc < 0) fail("connect", rc);
    long t = lib_sched_thread_create((long)sender, fd, 0);
    if (t < 0) fail("thread_create", t);
    long got = 0, bad = -1;
    unsigned long sum = 0;
    while (got < total) {
        long n = lib_net_recv(fd, (long)rbuf, sizeof rbuf, 0);
        if (n < 0) fail("recv", n);
        if (n == 0) break;
        for (long j = 0; j < n; j++) {
            if ((unsigned char)rbuf[j] != pattern(got + j) && bad < 0) bad = got + j;
            sum = sum * 31 + (unsigned char)rbuf[j];
        }
        got += n;
    }
    lib_sched_thread_join(t);
    lib_net_close(fd);
    if (got != total || bad >= 0) {
        lib_console_printf((long)"tcp: FAILED: %ld of %ld bytes back, first bad byte at %ld\n", got, total, bad, 0, 0);
        lib_core_exit(1);
    }
    lib_console_printf((long)"tcp: %ld bytes echoed intact (checksum %lx)\n", total, (long)sum, 0, 0, 0);
}

static void udp(void) {
    long fd = lib_net_socket(SOCK_DGRAM);
    if (fd < 0) fail("socket", fd);
    for (long i = 0; i < total; i++) {
        long n = 1 + (i * 97) % (long)sizeof dgram;
        for (long j = 0; j < n; j++) dgram[j] = (char)pattern(i + j);
        long rc = lib_net_sendto(fd, (long)dgram, n, 0, (long)&peer, sizeof peer);
        if (rc != n) fail("sendto", rc < 0 ? rc : -5);
        long m = lib_net_recvfrom(fd, (long)back, sizeof back, 0, 0, 0);
        if (m < 0) fail("recvfrom", m);
        for (long j = 0; j < n; j++)
            if (m != n || back[j] != dgram[j]) {
                lib_console_printf((long)"udp: FAILED at datagram %ld (%ld bytes back of %ld)\n", i, m, n, 0, 0);
                lib_core_exit(1);
            }
    }
    lib_net_close(fd);
    lib_console_printf((long)"udp: %ld datagrams echoed intact\n", total, 0, 0, 0, 0);
}

__attribute__((force_align_arg_pointer)) void _start(long argc, char **argv) {
    long port;
    if (argc != 5 || (port = number(argv[3])) <= 0 || port > 65535 || (total = number(argv[4])) < 0 ||
        parse_ip(argv[2], &peer.addr) < 0) {
        lib_console_puts((long)"usage: nettest udp|tcp ADDR PORT N");
        lib_core_exit(2);
    }
    peer.family = 2;
    peer.port = (unsigned short)(((port & 0xff) << 8) | (port >> 8));
    const char *mode = argv[1];
    if (mode[0] == 't' && mode[1] == 'c' && mode[2] == 'p' && !mode[3]) tcp();
    else if (mode[0] == 'u' && mode[1] == 'd' && mode[2] == 'p' && !mode[3]) udp();
    else { lib_console_puts((long)"usage: nettest udp|tcp ADDR PORT N"); lib_core_exit(2); }
    lib_core_exit(0);
}
