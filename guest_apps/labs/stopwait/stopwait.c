/* stopwait client ADDR PORT N | stopwait server PORT IDLE_MS: UDP made reliable by stop-and-wait,
 * to grade a network stack over a lossy, reordering wire (lab 6).
 *
 *   client: N datagrams of 5..1404 bytes, one at a time: datagram i starts with its number i (4 bytes,
 *           little-endian) and goes on with a pattern. It is resent every TIMEOUT_MS until its echo
 *           comes back (at most TRIES times); echoes of earlier datagrams (duplicates, late copies)
 *           are counted as stale and skipped. Prints one line and exits 0 if every echo was intact.
 *   server: echoes every datagram to its sender; exits 0 once IDLE_MS have passed without one,
 *           so a run ends although the client's last echo may have been lost (or nothing came).
 *
 * Waiting is a non-blocking recvfrom polled every POLL_MS with sched's thread_sleep: under the
 * virtual clock the run is deterministic, loss and all (hw/net/faults.py is seeded).
 *
 *   python -m exo boot guest_apps/labs/stopwait guest_apps/labs/stopwait --net switch \
 *          --net-faults loss=0.1,reorder=0.1,seed=1 -- ...   (see exo/labs/tests/lab6)
 *
 * Built into the static ELF `stopwait` by `make` (guest_apps/include/guest.mk). */
#include "exo.h"
#include "libos.h"

#define SOCK_DGRAM 2
#define SOCK_NONBLOCK 0x800
#define MSG_DONTWAIT 0x40
#define MS 1000000L
#define POLL_MS 10
#define TIMEOUT_MS 300
#define TRIES 20

struct sockaddr_in { unsigned short family, port; unsigned addr; unsigned char zero[8]; };

static struct sockaddr_in peer, from, local;
static long fromlen;
static unsigned char out[1404];
static unsigned char in[2048];

static unsigned char pattern(long i, long j) { return (unsigned char)((i * 31 + j * 7 + (j >> 8)) & 0xff); }

static long number(const char *s) {
    long v = 0;
    if (!*s) return -1;
    for (; *s; s++) { if (*s < '0' || *s > '9') return -1; v = v * 10 + (*s - '0'); }
    return v;
}

static int parse_ip(const char *s, unsigned *addr) {  /* dotted quad -> network byte order */
    unsigned parts[4];
    for (int i = 0; i < 4; i++) {
        long v = 0; int digits = 0;
        while (*s >= '0' && *s <= '9') { v = v * 10 + (*s++ - '0'); digits++; }
        if (!digits || v > 255) return -1;
        parts[i] = (unsigned)v;
        if (i < 3 && *s++ != '.') return -1;
    }
    if (*s) return -1;
    *addr = parts[0] | parts[1] << 8 | parts[2] << 16 | parts[3] << 24;
    return 0;
}

static unsigned short net_port(long port) { return (unsigned short)(((port & 0xff) << 8) | (port >> 8)); }

static void fail(const char *what, long err) {
    lib_console_printf((long)"stopwait: %s: %s\n", (long)what, lib_core_strerror(err), 0, 0, 0);
    lib_core_exit(1);
}

static void usage(void) {
    lib_console_puts((long)"usage: stopwait client ADDR PORT N | stopwait server PORT IDLE_MS");
    lib_core_exit(2);
}

/* A datagram if one is queued (its length), 0 if none is, after at most one POLL_MS sleep. */
static long poll_once(long fd) {
    fromlen = sizeof from;
    long m = lib_net_recvfrom(fd, (long)in, sizeof in, MSG_DONTWAIT, (long)&from, (long)&fromlen);
    if (m == -EAGAIN) {
        lib_sched_thread_sleep(POLL_MS * MS);
        return 0;
    }
    if (m < 0) fail("recvfrom", m);
    return m;
}

static void client(long total) {
    long fd = lib_net_socket(SOCK_DGRAM | SOCK_NONBLOCK), resent = 0, stale = 0;
    if (fd < 0) fail("socket", fd);
    for (long i = 0; i < total; i++) {
        long n = 5 + (i * 97) % (long)(sizeof out - 4);
        for (int b = 0; b < 4; b++) out[b] = (unsigned char)(i >> (8 * b));
        for (long j = 4; j < n; j++) out[j] = pattern(i, j);
        long tries = 0, done = 0;
        while (!done) {
            if (tries++ == TRIES) {
                lib_console_printf((long)"stopwait: FAILED: no echo of datagram %ld after %ld tries\n", i, TRIES, 0, 0, 0);
                lib_core_exit(1);
            }
            if (tries > 1) resent++;
            long rc = lib_net_sendto(fd, (long)out, n, 0, (long)&peer, sizeof peer);
            if (rc != n) fail("sendto", rc < 0 ? rc : -EIO);
            for (long waited = 0; waited < TIMEOUT_MS && !done; waited += POLL_MS) {
                long m;
                while (!done && (m = poll_once(fd)) > 0) {
                    long seq = m < 4 ? -1 : (long)(in[0] | in[1] << 8 | in[2] << 16 | (unsigned long)in[3] << 24);
                    if (seq >= 0 && seq < i) { stale++; continue; }
                    if (seq != i || m != n || from.addr != peer.addr || from.port != peer.port) {
                        lib_console_printf((long)"stopwait: FAILED at datagram %ld: %ld bytes back of %ld (number %ld)\n",
                                           i, m, n, seq, 0);
                        lib_core_exit(1);
                    }
                    for (long j = 4; j < n; j++)
                        if (in[j] != out[j]) {
                            lib_console_printf((long)"stopwait: FAILED at datagram %ld: byte %ld differs\n", i, j, 0, 0, 0);
                            lib_core_exit(1);
                        }
                    done = 1;
                }
                if (m == 0) continue;  /* slept one POLL_MS */
            }
        }
    }
    lib_net_close(fd);
    lib_console_printf((long)"stopwait: %ld datagrams echoed intact, %ld resent, %ld stale echoes\n",
                       total, resent, stale, 0, 0);
}

static void server(long port, long idle_ms) {
    long fd = lib_net_socket(SOCK_DGRAM | SOCK_NONBLOCK), count = 0, idle = 0;
    if (fd < 0) fail("socket", fd);
    local.family = 2;
    local.port = net_port(port);
    long rc = lib_net_bind(fd, (long)&local, sizeof local);
    if (rc < 0) fail("bind", rc);
    while (idle < idle_ms) {
        long m = poll_once(fd);
        if (m == 0) { idle += POLL_MS; continue; }
        idle = 0;
        count++;
        rc = lib_net_sendto(fd, (long)in, m, 0, (long)&from, sizeof from);
        if (rc != m) fail("sendto", rc < 0 ? rc : -EIO);
    }
    lib_net_close(fd);
    lib_console_printf((long)"stopwait server: %ld datagrams echoed\n", count, 0, 0, 0, 0);
}

__attribute__((force_align_arg_pointer)) void _start(long argc, char **argv) {
    long port, n;
    if (argc < 2) usage();
    const char *mode = argv[1];
    if (mode[0] == 'c' && argc == 5) {
        if ((port = number(argv[3])) <= 0 || port > 65535 || (n = number(argv[4])) < 0 ||
            parse_ip(argv[2], &peer.addr) < 0) usage();
        peer.family = 2;
        peer.port = net_port(port);
        client(n);
    } else if (mode[0] == 's' && argc == 4) {
        if ((port = number(argv[2])) <= 0 || port > 65535 || (n = number(argv[3])) <= 0) usage();
        server(port, n);
    } else {
        usage();
    }
    lib_core_exit(0);
}
