"""Compiled code runs as on an x86-64 CPU: gcc -O2/-O3 guests with SSE, x87 and the red zone,
FPU state kept per environment and per user thread, x87 faults reported."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import pytest
from conftest import ROOT, boot, make_app, need_tool

from exo.abi import EXO_REGION_END, HYPERCALL_PAGE, USER_TOP
from exo.build.elf import PF_X, parse_elf

GUEST_MK = ROOT / "guest_apps" / "include" / "guest.mk"


def build_c(tmp_path, name: str, source: str, extra_cflags: str = "") -> tuple:
    """Build ``source`` with the shared recipe (guest_apps/include/guest.mk); (app dir, ELF bytes)."""
    need_tool(shutil.which("gcc") is not None and shutil.which("make") is not None, "gcc or make is not installed")
    src = tmp_path / "src" / name
    src.mkdir(parents=True)
    (src / f"{name}.c").write_text(source)
    subprocess.run(["make", "-s", "-f", str(GUEST_MK), "-C", str(src), name, f"EXTRA_CFLAGS={extra_cflags}"],
                   check=True, capture_output=True)
    app = tmp_path / "apps" / name
    app.mkdir(parents=True)
    blob = (src / name).read_bytes()
    (app / "prog").write_bytes(blob)
    (app / "app.toml").write_text(f'name = "{name}"\nsources = ["prog"]\n')
    return app, blob


def mnemonics(blob: bytes) -> set[str]:
    """Every instruction mnemonic in the ELF's executable segments."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    image = parse_elf(blob, "prog", user_top=USER_TOP, forbidden=(HYPERCALL_PAGE, EXO_REGION_END))
    return {i.mnemonic for s in image.segments if s.flags & PF_X for i in cs.disasm(s.data, s.va)}


# ---------------------------------------------------------------------- red zone
RED_ZONE = r"""
#include "exo.h"
/* A leaf function (the hypercall is inline asm): gcc -O2 keeps buf in the red zone, at RSP-8. */
static __attribute__((noinline)) void say(const char *s, long n) {
    char buf[8];
    for (int i = 0; i < 8; i++) buf[i] = s[i];
    exo_console_write((long)buf, n);
}
__attribute__((force_align_arg_pointer, noreturn)) void _start(void) {
    say("redzone\n", 8);
    exo_sched_op(SCHED_EXIT, 0);
    __builtin_unreachable();
}
"""


def test_a_stack_buffer_in_the_red_zone_is_printed_exactly(tmp_path):
    """exo.h's hypercalls used an inline-asm `call`, whose return address overwrote buf."""
    app, _ = build_c(tmp_path, "redzone", RED_ZONE)
    b = boot(app)
    assert b.stdout == b"redzone\n" and not b.reports


# -------------------------------------------------------- float, SIMD, formatting
C_WORK = r"""
#include "exo.h"
typedef unsigned long size_t;
typedef __builtin_va_list va_list;
#define va_start __builtin_va_start
#define va_arg __builtin_va_arg
#define va_end __builtin_va_end

/* gcc may call these even in freestanding code (struct copies, large initialisers). */
void *memcpy(void *d, const void *s, size_t n) {
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return r;
}
void *memset(void *d, int c, size_t n) {
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}

static char out[8192];
static long outn;

static void put(char c) { if (outn < (long)sizeof out) out[outn++] = c; }
static void putstr(const char *s) { while (*s) put(*s++); }
static void putu(unsigned long v, unsigned base) {
    char b[24];
    int n = 0;
    do { b[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    while (n) put(b[--n]);
}
static void putf(double x, int prec) {
    if (x < 0) { put('-'); x = -x; }
    unsigned long scale = 1;
    for (int i = 0; i < prec; i++) scale *= 10;
    unsigned long whole = (unsigned long)x;
    unsigned long frac = (unsigned long)((x - (double)whole) * (double)scale + 0.5);
    if (frac >= scale) { whole++; frac -= scale; }
    putu(whole, 10);
    if (prec) {
        char b[24];
        put('.');
        for (int i = prec - 1; i >= 0; i--) { b[i] = (char)('0' + frac % 10); frac /= 10; }
        for (int i = 0; i < prec; i++) put(b[i]);
    }
}
/* printf-style: %d %x %s %c %f %.Nf (a varargs function: its prologue saves XMM0-7 with movaps) */
static void fmt(const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    for (; *f; f++) {
        if (*f != '%') { put(*f); continue; }
        int prec = 6;
        f++;
        if (*f == '.') { prec = 0; f++; while (*f >= '0' && *f <= '9') prec = prec * 10 + (*f++ - '0'); }
        switch (*f) {
        case 'd': { long v = va_arg(ap, long); if (v < 0) { put('-'); v = -v; } putu((unsigned long)v, 10); break; }
        case 'x': putu(va_arg(ap, unsigned long), 16); break;
        case 's': putstr(va_arg(ap, const char *)); break;
        case 'c': put((char)va_arg(ap, int)); break;
        case 'f': putf(va_arg(ap, double), prec); break;
        default: put('%'); put(*f);
        }
    }
    va_end(ap);
}

#define N 1000
static float a[N], b[N], c[N];
static int ia[N], ib[N], ic[N];
static double d[N];

static __attribute__((noinline)) void vec(void) {
    for (int i = 0; i < N; i++) { a[i] = i * 0.5f; b[i] = (N - i) * 0.25f; }
    for (int i = 0; i < N; i++) c[i] = a[i] * b[i] + 1.0f;   /* mulps, addps at -O3 */
    double s = 0;
    for (int i = 0; i < N; i++) s += c[i];
    for (int i = 0; i < N; i++) { ia[i] = i * 3; ib[i] = 7 - i; }
    for (int i = 0; i < N; i++) ic[i] = ia[i] * ib[i] + (ia[i] >> 1);
    long is = 0;
    for (int i = 0; i < N; i++) is += ic[i];                 /* paddd */
    fmt("float sum %.3f int sum %d c[999] %f\n", s, is, (double)c[N - 1]);
}

static __attribute__((noinline)) void dbl(void) {
    double x = 2.0, r = 1.0;
    for (int i = 0; i < 20; i++) r = 0.5 * (r + x / r);
    double pi = 0;
    for (int k = 0; k < 100000; k++) pi += (k & 1 ? -4.0 : 4.0) / (2 * k + 1);
    for (int i = 0; i < N; i++) d[i] = i * 1.5 - 100.0;
    for (int i = 0; i < N; i++) d[i] = d[i] * d[i] / 3.0;    /* mulpd, divpd at -O3 */
    double m = 0;
    for (int i = 0; i < N; i++) if (d[i] > m) m = d[i];
    long double h = 0;                                        /* x87 */
    for (int k = 1; k <= 50; k++) h += 1.0L / k;
    fmt("sqrt2 %.9f pi %.5f max %.4f neg %f h50 %.10f\n", r, pi, m, -r * 1e3, (double)h);
}

struct rec { char name[40]; double v; long n; };
static const struct rec templ[3] = {
    {"alpha: the first record", 1.25, 1},
    {"beta: a name of 33 bytes, at last", -2.5, 2},
    {"gamma", 1e6 / 3, 3},
};

static __attribute__((noinline)) void recs(void) {
    for (int i = 0; i < 3; i++) {
        struct rec r = templ[i];           /* a 56-byte copy to the stack */
        char line[48];
        __builtin_memcpy(line, r.name, sizeof r.name);
        r.v *= r.n;
        fmt("%s|%d|%.2f|%x|%c\n", line, r.n, r.v, (unsigned long)(long)(r.v * 100) & 0xffff, 'a' + i);
    }
}

__attribute__((force_align_arg_pointer, noreturn)) void _start(void) {
    char hello[] = "C guest on exo: SSE, x87 and the stack\n";
    exo_console_write((long)hello, sizeof hello - 1);
    vec();
    dbl();
    recs();
    exo_console_write((long)out, outn);
    exo_sched_op(SCHED_EXIT, 0);
    __builtin_unreachable();
}
"""


def _putf(x: float, prec: int) -> str:
    """The guest's putf, with the same double operations."""
    sign = ""
    if x < 0:
        sign, x = "-", -x
    scale = 10**prec
    whole = int(x)
    frac = int((x - float(whole)) * float(scale) + 0.5)
    if frac >= scale:
        whole, frac = whole + 1, frac - scale
    return f"{sign}{whole}" + (f".{frac:0{prec}d}" if prec else "")


def _expected_work() -> bytes:
    import struct

    def f32(v: float) -> float:
        return struct.unpack("<f", struct.pack("<f", v))[0]

    n = 1000
    c = [f32(f32(f32(i * 0.5) * f32((n - i) * 0.25)) + 1.0) for i in range(n)]
    s = 0.0
    for v in c:
        s += v
    ic = [((i * 3) * (7 - i) + ((i * 3) >> 1)) for i in range(n)]
    lines = [f"float sum {_putf(s, 3)} int sum {sum(ic)} c[999] {_putf(c[-1], 6)}"]
    r = 1.0
    for _ in range(20):
        r = 0.5 * (r + 2.0 / r)
    pi = 0.0
    for k in range(100000):
        pi += (-4.0 if k & 1 else 4.0) / (2 * k + 1)
    d = [(i * 1.5 - 100.0) for i in range(n)]
    m = max(0.0, *(v * v / 3.0 for v in d))
    h = float(sum(Fraction(1, k) for k in range(1, 51)))
    lines.append(f"sqrt2 {_putf(r, 9)} pi {_putf(pi, 5)} max {_putf(m, 4)} neg {_putf(-r * 1e3, 6)} "
                 f"h50 {_putf(h, 10)}")
    for i, (name, v, k) in enumerate((("alpha: the first record", 1.25, 1),
                                       ("beta: a name of 33 bytes, at last", -2.5, 2), ("gamma", 1e6 / 3, 3))):
        v *= k
        lines.append(f"{name}|{k}|{_putf(v, 2)}|{int(v * 100) & 0xFFFF:x}|{chr(97 + i)}")
    return ("C guest on exo: SSE, x87 and the stack\n" + "\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("flags", ["", "-O3 -ftree-vectorize"])
def test_c_float_simd_and_formatting_give_exact_output(tmp_path, flags):
    app, blob = build_c(tmp_path, "cwork", C_WORK, flags)
    used = mnemonics(blob)
    assert used & {"movsd", "mulsd", "divsd", "cvtsi2sd"}, "no scalar SSE2 in the binary"
    assert used & {"fld", "faddp", "fdivr", "fdivrp", "fadd"}, "no x87 in the binary"
    if flags:
        assert used & {"mulps", "addps"} and used & {"mulpd", "divpd"}, f"loops not vectorised: {sorted(used)}"
    b = boot(app)
    assert not b.reports, b.reports[0].render()
    assert b.stdout == _expected_work()
    assert b.envs[0].exit_status == 0


# ---------------------------------------------- FPU state per environment and thread
def _xmm_code(loops: int, spin: int, yield_every: int | None) -> str:
    """setup(t) fills XMM0-15, MXCSR (rounding) and FCW (rounding) with values of t;
    check(t) returns 0 when they still hold them."""
    setup = ["setup:"]
    check = ["check:", "    sub rsp, 24"]
    for i in range(16):
        setup += ["    mov rax, rdi", "    shl rax, 32", f"    or rax, {(i << 8) | 0x5A}",
                  f"    movq xmm{i}, rax", f"    punpcklqdq xmm{i}, xmm{i}"]
        check += [f"    movdqu xmmword ptr [rsp], xmm{i}", "    mov rax, rdi", "    shl rax, 32",
                  f"    or rax, {(i << 8) | 0x5A}", "    cmp qword ptr [rsp], rax", "    jne check_bad",
                  "    cmp qword ptr [rsp + 8], rax", "    jne check_bad"]
    setup += ["    sub rsp, 8", "    mov eax, edi", "    shl eax, 13", "    or eax, 0x1f80",
              "    mov dword ptr [rsp], eax", "    ldmxcsr dword ptr [rsp]",
              "    mov eax, edi", "    shl eax, 10", "    or eax, 0x37f", "    mov word ptr [rsp + 4], ax",
              "    fldcw word ptr [rsp + 4]", "    add rsp, 8", "    ret"]
    check += ["    stmxcsr dword ptr [rsp + 16]", "    mov eax, edi", "    shl eax, 13", "    or eax, 0x1f80",
              "    cmp dword ptr [rsp + 16], eax", "    jne check_bad",
              "    fnstcw word ptr [rsp + 20]", "    movzx ecx, word ptr [rsp + 20]", "    mov eax, edi",
              "    shl eax, 10", "    or eax, 0x37f", "    cmp ecx, eax", "    jne check_bad",
              "    xor eax, eax", "    add rsp, 24", "    ret",
              "check_bad:", "    mov eax, 1", "    add rsp, 24", "    ret"]
    yield_code = ""
    if yield_every:
        yield_code = f"""
    test r12d, {yield_every}
    jz no_yield
    call LIB_SCHED_THREAD_YIELD
    mov rdi, rbx
    call check
    test rax, rax
    jnz work_bad
no_yield:"""
    work = f"""
; work(t): set the state of t, then {loops} rounds of a {spin}-iteration spin, checking it after each
work:
    push rbx
    push r12
    push r13
    mov rbx, rdi
    call setup
    mov r12d, {loops}
work_loop:
    mov ecx, {spin}
work_spin:
    dec ecx
    jnz work_spin
    mov rdi, rbx
    call check
    test rax, rax
    jnz work_bad
{yield_code}
    dec r12d
    jnz work_loop
    xor eax, eax
    pop r13
    pop r12
    pop rbx
    ret
work_bad:
    mov rax, rbx
    add rax, 100
    pop r13
    pop r12
    pop rbx
    ret
"""
    return "\n".join(setup) + "\n" + "\n".join(check) + "\n" + work


ENV_XMM = """
section .text
_start:
    call HC_ENV_ID
    mov rdi, rax
    call work
    test rax, rax
    jnz bad
    lea rdi, [rip + ok]
    mov rsi, 3
    call HC_CONSOLE_WRITE
    mov edi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
bad:
    mov edi, SCHED_EXIT
    mov rsi, rax
    call HC_SCHED_OP
""" + _xmm_code(loops=8, spin=30_000, yield_every=None) + """
section .rodata
ok: db "ok", 10
"""


def test_environments_keep_their_vector_state_across_preemption(tmp_path):
    """Two environments, each with its own XMM0-15, MXCSR and FCW, preempted many times."""
    apps = [make_app(tmp_path, f"xmm{i}", ENV_XMM) for i in range(2)]
    b = boot(*apps, slice_instructions=10_000)
    assert not b.reports
    assert [e.exit_status for e in b.envs] == [0, 0] and b.stdout == b"ok\nok\n"
    assert all(e.instructions > 400_000 for e in b.envs)  # 8 rounds of 60,000: > 40 slices each
    assert b.kernel.acct.transitions["context_switch"] > 40  # interleaved, not one after the other


THREAD_XMM = """
section .text
_start:
    mov rdi, 3
    call setup                      ; thread 0's own state, checked after the joins
    lea rdi, [rip + worker]
    mov rsi, 1
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r14, rax
    lea rdi, [rip + worker]
    mov rsi, 2
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r15, rax
    mov rdi, r14
    call LIB_SCHED_THREAD_JOIN
    mov r12, rax
    mov rdi, r15
    call LIB_SCHED_THREAD_JOIN
    or r12, rax
    mov rdi, 3
    call check
    or r12, rax
    jnz bad
    lea rdi, [rip + ok]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_SCHED_THREAD_EXIT
bad:
    mov rsi, r12
    lea rdi, [rip + bad_msg]
    call LIB_CONSOLE_PRINTF
    mov rdi, 1
    call LIB_CORE_EXIT

worker:                             ; worker(t): work(t) with a yield every other round
    jmp work
""" + _xmm_code(loops=10, spin=25_000, yield_every=1) + """
section .rodata
ok: db "threads kept their xmm", 10, 0
bad_msg: db "xmm lost: %x", 10, 0
"""


def test_user_threads_keep_their_vector_state_across_yields_and_preemption(tmp_path):
    app = make_app(tmp_path, "xmmthreads", THREAD_XMM, libos={"sched": "rr", "console": "buffered"})
    b = boot(app, slice_instructions=20_000)
    assert not b.reports, b.reports[0].render()
    assert b.stdout == b"threads kept their xmm\n"
    sched = next(m for m in b.envs[0].modules.values() if hasattr(m, "preemptions"))
    assert sched.preemptions >= 10 and sched.switches >= 20  # both kinds of switch happened


# ------------------------------------------------------------------ #MF report
MF = """
section .text
_start:
    lea rsi, [rip + cw]
    fldcw word ptr [rsi]            ; unmask zero divide (ZM, bit 2)
    fld1
    fldz
    fdivp st(1), st(0)
    fwait                           ; the pending x87 exception is delivered here
    mov edi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .rodata
cw: dw 0x37b
"""


def test_an_unmasked_x87_exception_stops_the_guest_with_a_readable_report(tmp_path):
    b = boot(make_app(tmp_path, "fpfault", MF))
    assert len(b.reports) == 1
    text = b.reports[0].render()
    assert "x87 FP error (#MF)" in text and ": wait" in text
    assert "FSW 0x" in text and "FCW 0x037b: zero divide (ZE)" in text
    assert "unmasked in its control word" in text
    assert b.envs[0].exit_status is None
