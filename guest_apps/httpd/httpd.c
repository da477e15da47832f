/* httpd [N [IDLE]]: a small HTTP/1.1 server on port 80, one user-level thread per
 * connection. GET and HEAD of a path serve that file from the ext2 disk
 * (--disk IMAGE); without a disk, / is a built-in page. With N, exit 0 once N
 * connections have been served (autograders); without, serve until stopped.
 * Connections are kept alive (HTTP/1.1, or 1.0 with "Connection: keep-alive")
 * until the client closes or asks to, or until IDLE seconds pass with nothing
 * received (default 10): a janitor thread shuts idle ones down, so clients that
 * connect and say nothing do not hold a connection for ever.
 *
 *   python -m exo boot guest_apps/httpd --net user,hostfwd=tcp:127.0.0.1:8080-:80 [--disk IMG]
 *   curl http://127.0.0.1:8080/
 *
 * Built into the static ELF `httpd` by `make` (gcc; see Makefile). */
#include "exo.h"
#include "libos.h"

#define SOCK_STREAM 1
#define ENFILE 23     /* Linux's numbers (ENOMEM and EMFILE come from exo.h) */
#define ENOBUFS 105
#define MAXCONN 1024
#define REQ_MAX 2048

struct sockaddr_in { unsigned short family, port; unsigned addr; unsigned char zero[8]; };

static const char PAGE[] =
    "<!doctype html>\n<html><head><title>exo</title></head>\n"
    "<body><h1>Hello from exo</h1>\n"
    "<p>Served by a TCP/IP stack in the library OS of one exokernel environment.</p>\n"
    "</body></html>\n";

static long tids[MAXCONN];

static long slen(const char *s) { long n = 0; while (s[n]) n++; return n; }
static int prefix(const char *s, const char *p) { while (*p) if (*s++ != *p++) return 0; return 1; }

static char *utoa(unsigned long v, char *end) { /* writes backwards from end, returns the start */
    *--end = 0;
    do { *--end = (char)('0' + v % 10); v /= 10; } while (v);
    return end;
}

static long send_all(long fd, const char *p, long n) {
    while (n > 0) {
        long k = lib_net_send(fd, (long)p, n, 0);
        if (k < 0) return k;
        p += k; n -= k;
    }
    return 0;
}

/* One connection's state, for the janitor: its socket, when it last received, whether it is
 * shut down already. Each connection thread owns its slot; the accepting thread hands slots
 * out; user-level threads switch only at library calls, so no lock is needed. */
struct slot { long fd, last; int used, shut, keep, v11; };
static struct slot slots[MAXCONN];
static long idle_ns = 10000000000L;
static int stopping;

static long header_for(long fd, struct slot *c, const char *status, const char *type, unsigned long length) {
    char num[24];
    char h[256];
    long n = 0;
    const char *parts[] = {c->v11 ? "HTTP/1.1 " : "HTTP/1.0 ", status, "\r\nServer: exo-httpd\r\nContent-Type: ",
                           type, "\r\nContent-Length: ", utoa(length, num + sizeof num),
                           c->keep ? "\r\nConnection: keep-alive\r\n\r\n" : "\r\nConnection: close\r\n\r\n"};
    for (unsigned i = 0; i < sizeof parts / sizeof parts[0]; i++)
        for (const char *s = parts[i]; *s && n < (long)sizeof h; s++) h[n++] = *s;
    return send_all(fd, h, n);
}

static long error_page(long fd, struct slot *c, const char *status, int head) {
    long n = slen(status);
    long rc = header_for(fd, c, status, "text/plain", (unsigned long)n + 1);
    if (rc == 0 && !head) { rc = send_all(fd, status, n); if (rc == 0) rc = send_all(fd, "\n", 1); }
    return rc;
}

static const char *type_of(const char *path) {
    long n = slen(path);
    if (n >= 5 && prefix(path + n - 5, ".html")) return "text/html";
    if (n >= 4 && prefix(path + n - 4, ".txt")) return "text/plain";
    return "application/octet-stream";
}

static int has(const char *s, long n, const char *word) {  /* ``word`` within s[0..n) */
    for (long i = 0; i + slen(word) <= n; i++) if (prefix(s + i, word)) return 1;
    return 0;
}

/* One request on connection slot ``c``: read its head, answer. 1: keep the connection. */
static long serve_one(long fd, struct slot *c) {
    char req[REQ_MAX + 1];
    char buf[8192];  /* half the thread's 16 KiB stack (libos/sched.py): one send of 8 KiB is one TSO frame */
    unsigned long st[8];
    long got = 0, end = -1;
    while (end < 0 && got < REQ_MAX) {
        long n = lib_net_recv(fd, (long)(req + got), REQ_MAX - got, 0);
        if (n <= 0) return 0;  /* the client closed, or the janitor shut an idle connection */
        c->last = lib_core_time_ns();
        got += n;
        /* The head ends at an empty line: CRLF CRLF, or LF LF from a client that ends lines with a
         * bare LF, which RFC 9112 2.2 lets a server accept (it was never answered). */
        for (long i = 1; i < got; i++)
            if (req[i] == '\n' && (req[i - 1] == '\n' || (i >= 3 && req[i - 1] == '\r' && req[i - 2] == '\n'
                                                         && req[i - 3] == '\r'))) { end = i; break; }
    }
    req[got] = 0;
    int head = prefix(req, "HEAD ");
    long line = 0;
    while (line < got && req[line] != '\n') line++;
    c->v11 = has(req, line, "HTTP/1.1");
    /* RFC 9112 9.3: HTTP/1.1 stays open unless the client says close; 1.0 only if it asks. */
    c->keep = end >= 0 && (c->v11 ? !has(req, got, "onnection: close") : has(req, got, "onnection: keep-alive"));
    if (end < 0) { c->keep = 0; error_page(fd, c, "400 Bad Request", 0); return 0; }
    if (!prefix(req, "GET ") && !head) { error_page(fd, c, "405 Method Not Allowed", 0); return c->keep; }
    char *path = req + (head ? 5 : 4);
    long i = 0;
    while (path[i] && path[i] != ' ' && path[i] != '\r' && path[i] != '\n') i++;
    path[i] = 0;
    if (path[0] != '/') { error_page(fd, c, "400 Bad Request", head); return c->keep; }
    const char *file = path;
    if (path[1] == 0) file = "/index.html";
    long f = lib_fs_open((long)file, 0, 0);
    if (f >= 0 && lib_fs_fstat(f, (long)st) == 0 && (st[1] & 0170000) == 0100000) {
        header_for(fd, c, "200 OK", type_of(file), st[3]);
        for (long n; !head && (n = lib_fs_read(f, (long)buf, sizeof buf)) > 0;)
            if (send_all(fd, buf, n) < 0) { c->keep = 0; break; }
        lib_fs_close(f);
    } else if (path[1] == 0) {  /* no disk, or no index.html on it: the built-in page */
        if (f >= 0) lib_fs_close(f);
        header_for(fd, c, "200 OK", "text/html", sizeof PAGE - 1);
        if (!head) send_all(fd, PAGE, sizeof PAGE - 1);
    } else {
        if (f >= 0) lib_fs_close(f);
        error_page(fd, c, "404 Not Found", head);
    }
    return c->keep;
}

/* One connection: requests until the client closes, asks to close, or goes idle. */
static long connection(long k) {
    struct slot *c = &slots[k];
    while (serve_one(c->fd, c)) {}
    lib_net_close(c->fd);
    c->used = 0;
    return 0;
}

/* Shut down connections idle for longer than idle_ns: the read side only, so the connection's
 * own thread sees end of input and closes its socket itself (no descriptor is closed under it). */
static long janitor(long unused) {
    (void)unused;
    while (!stopping) {
        lib_sched_thread_sleep(idle_ns / 4 < 250000000 ? idle_ns / 4 : 250000000);
        long now = lib_core_time_ns();
        for (long k = 0; k < MAXCONN; k++)
            if (slots[k].used && !slots[k].shut && now - slots[k].last > idle_ns) {
                slots[k].shut = 1;
                lib_net_shutdown(slots[k].fd, 0);  /* SHUT_RD */
            }
    }
    return 0;
}

static long atoi_(const char *s) {
    long v = 0;
    if (!*s) return -1;
    for (; *s; s++) { if (*s < '0' || *s > '9') return -1; v = v * 10 + (*s - '0'); }
    return v;
}

static void fail(const char *what, long err) {
    lib_console_printf((long)"httpd: %s: %s\n", (long)what, lib_core_strerror(err), 0, 0, 0);
    lib_core_exit(1);
}

__attribute__((force_align_arg_pointer)) void _start(long argc, char **argv) {
    long limit = -1;
    if (argc >= 2) {
        limit = atoi_(argv[1]);
        long idle = argc >= 3 ? atoi_(argv[2]) : 10;
        if (limit <= 0 || limit > MAXCONN || idle <= 0) {
            lib_console_puts((long)"usage: httpd [N [IDLE]]   (1 <= N <= 1024: exit after N connections; "
                                   "IDLE: seconds before an idle connection is closed, default 10)");
            lib_core_exit(2);
        }
        idle_ns = idle * 1000000000L;
    }
    struct sockaddr_in local = {2, (unsigned short)(80 << 8), 0, {0}};
    long s = lib_net_socket(SOCK_STREAM);
    if (s < 0) fail("socket", s);
    long rc = lib_net_bind(s, (long)&local, sizeof local);
    if (rc < 0) fail("bind port 80", rc);
    rc = lib_net_listen(s, 64);
    if (rc < 0) fail("listen", rc);
    long served = 0;
    int warned = 0;
    long jan = lib_sched_thread_create((long)janitor, 0, 0);
    if (jan < 0) fail("thread_create", jan);
    /* Initialised: mount the disk now (or find once that there is none), then say so. `exo serve`
     * snapshots the server here and starts each instance from this point, so that no request pays
     * for the mount; booted as usual, sched_op(READY) returns at once. */
    long root = lib_fs_open((long)"/", 0, 0);
    if (root >= 0) lib_fs_close(root);
    exo_sched_op(SCHED_READY, 0);
    while (limit < 0 || served < limit) {
        long c = lib_net_accept(s, 0, 0);
        if (c == -EMFILE || c == -ENFILE || c == -ENOMEM || c == -ENOBUFS) {
            /* Out of descriptors or memory: the server lives on. The client waits in the backlog;
             * a connection that ends frees a descriptor, so try again a little later. */
            if (!warned) lib_console_printf((long)"httpd: accept: %s: waiting for a connection to end\n",
                                            lib_core_strerror(c), 0, 0, 0, 0);
            warned = 1;
            lib_sched_thread_sleep(10000000);  /* 10 ms of guest time */
            continue;
        }
        if (c < 0) fail("accept", c);
        long k = 0;
        while (k < MAXCONN && slots[k].used) k++;
        if (k == MAXCONN) { lib_net_close(c); continue; }  /* every slot taken: refuse it */
        slots[k] = (struct slot){c, lib_core_time_ns(), 1, 0, 0, 0};
        long t = lib_sched_thread_create((long)connection, k, 0);
        if (t < 0) { slots[k].used = 0; lib_net_close(c); lib_sched_thread_sleep(10000000); continue; }  /* refused */
        if (limit > 0) tids[served] = t;
        served++;
    }
    for (long i = 0; i < served; i++) lib_sched_thread_join(tids[i]);
    stopping = 1;
    lib_sched_thread_join(jan);
    lib_net_close(s);
    lib_sched_thread_exit(0);
}
