/* lab1_envinfo_c: a C guest on raw hypercalls (exo.h, generated from the ABI table) that prints
 * what the env_info hypercall tells about itself, about a child it creates, and about an id
 * nobody has (docs/labs/lab1.md, exercises c.format and c.print):
 *
 *     env 1 (lab1_envinfo_c): parent 0, status 1, 22 pages
 *     env 2 (lab1_envinfo_c.1): parent 1, status 2, 2 pages
 *     env 99: error -3
 *
 *   make -C guest_apps/labs/lab1_envinfo_c && python -m exo boot guest_apps/labs/lab1_envinfo_c
 *
 * No C library: output goes through exo_console_write (one call per line). */
#include "exo.h"

struct env_info {            /* exo/abi.py ENV_INFO_SIZE: what env_info writes */
    uint64_t id, parent, status, pages;
    char name[32];
};

static char line[128];
static int len;

static void put_str(const char *s) {
    while (*s && len < (int)sizeof line) line[len++] = *s++;
}

static void put_char(char c) {
    if (len < (int)sizeof line) line[len++] = c;
}

// LAB 1 BEGIN c.format: append the signed number v to line[] in decimal (no leading zeros; '-' if negative)
static void put_dec(long v) {
    char digits[20];
    int n = 0;
    unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;  /* LONG_MIN too */
    if (v < 0) put_char('-');
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n) put_char(digits[--n]);
}
// LAB 1 STUB
// static void put_dec(long v) {
//     static const char m[] = "LAB 1 (c.format): append the signed number v to line[] in decimal -- guest_apps/labs/lab1_envinfo_c/envinfo.c\n";
//     (void)v;
//     exo_console_write((long)m, sizeof m - 1);
//     exo_sched_op(SCHED_EXIT, 99);
// }
// LAB 1 END

/* One line about envid: "env ID (NAME): parent P, status S, N pages", or "env ID: error -E". */
static void print_env(long envid) {
    struct env_info info;
    len = 0;
    // LAB 1 BEGIN c.print: call env_info for envid and format the line (or the error) into line[] as the comment above says
    long r = exo_env_info(envid, (long)&info);
    put_str("env ");
    if (r < 0) {
        put_dec(envid);
        put_str(": error ");
        put_dec(r);
    } else {
        put_dec((long)info.id);
        put_str(" (");
        info.name[sizeof info.name - 1] = 0;  /* the exokernel NUL-terminates it; do not rely on it */
        put_str(info.name);
        put_str("): parent ");
        put_dec((long)info.parent);
        put_str(", status ");
        put_dec((long)info.status);
        put_str(", ");
        put_dec((long)info.pages);
        put_str(" pages");
    }
    // LAB 1 END
    put_char('\n');
    exo_console_write((long)line, len);
}

__attribute__((force_align_arg_pointer, noreturn)) void _start(void) {
    print_env(0);
    long child = exo_env_create();  /* an empty address space, NOT_RUNNABLE: it never runs */
    if (child == 0)
        for (;;) exo_sched_op(SCHED_BLOCK, 0);
    print_env(child);
    print_env(99);
    exo_sched_op(SCHED_EXIT, 0);
    __builtin_unreachable();
}
