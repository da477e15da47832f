"""``python -m exo bench libos``: what library-OS abstractions cost, beside the exokernel's.

* library call (``core.null``: a ``call`` to a trampoline slot, no ring
  transition) vs hypercall (``env_id``) vs the bare Unicorn ``syscall`` hook
  round trip, all measured in the same run (ratios to the bare hook);
* copy-on-write fork of an environment with 1 MiB of heap touched
  (libos/memory.py ``cow`` against ``eager`` copying);
* a user-level thread switch (two threads of libos/sched.py yielding);
* an IPC round trip between two environments (libos/ipc.py, ``jos``).

Each figure is the difference between a guest that performs ``2n`` operations
and one that performs ``n`` (start-up and exit drop out), per operation, over
``--repeat`` runs: median, quartiles, min and max.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.guest import boot_source
from benchmarks.harness import (
    Result,
    Stats,
    result,
    suite_main,
)
from benchmarks.hw import (
    SYSCALL_LOOP,
    _empty_hook,
    _time_loop,
    assemble,
    bare_runner,
    bare_syscall_uc,
    calibrate,
)

EXIT = "    xor edi, edi\n    call LIB_CORE_EXIT\n"

LIBCALL = "section .text\n_start:\n    mov r12, {n}\nl:\n    call LIB_CORE_NULL\n    dec r12\n    jnz l\n" + EXIT
HYPERCALL = "section .text\n_start:\n    mov r12, {n}\nl:\n    call HC_ENV_ID\n    dec r12\n    jnz l\n" + EXIT

FORK = """section .text
_start:
    mov edi, 0x100000 + 0x1000
    call LIB_MEMORY_MALLOC
    mov rbx, rax
    mov rcx, 0x101
touch:
    mov byte ptr [rbx], 1
    add rbx, 0x1000
    dec rcx
    jnz touch
    mov r12, {n}
again:
    call LIB_MEMORY_FORK
    test rax, rax
    jz child
    dec r12
    jnz again
""" + EXIT + "child:\n" + EXIT

THREADS = """section .text
_start:
    lea rdi, [rip + other]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r13, rax
    mov r12, {n}
mine:
    call LIB_SCHED_THREAD_YIELD
    dec r12
    jnz mine
    mov rdi, r13
    call LIB_SCHED_THREAD_JOIN
""" + EXIT + """other:
    mov r12, {n}
theirs:
    call LIB_SCHED_THREAD_YIELD
    dec r12
    jnz theirs
    xor eax, eax
    ret
"""

IPC = """section .text
_start:
    call LIB_CORE_ENV_ID
    mov r14, rax                  ; the parent's id
    call LIB_MEMORY_FORK
    test rax, rax
    jz child
    mov r13, rax                  ; the child's id
    mov r12, {n}
ping:
    mov rdi, r13
    mov rsi, r12
    xor edx, edx
    xor ecx, ecx
    call LIB_IPC_SEND
    xor edi, edi
    xor esi, esi
    xor edx, edx
    call LIB_IPC_RECV
    dec r12
    jnz ping
""" + EXIT + """child:
    mov r12, {n}
pong:
    xor edi, edi
    xor esi, esi
    xor edx, edx
    call LIB_IPC_RECV
    mov rsi, rax
    mov rdi, r14
    xor edx, edx
    xor ecx, ecx
    call LIB_IPC_SEND
    dec r12
    jnz pong
""" + EXIT


def boot_time(source: str, libos: dict[str, str], n: int) -> tuple[float, dict]:
    """Host seconds of ``kernel.run`` for the guest ``source`` with ``n`` operations, and its stats."""
    return boot_source(source.replace("{n}", str(n)), libos, ram_mib=256)


def per_op(source: str, libos: dict[str, str], n: int, repeat: int, ops_per_n: int = 1) -> tuple[Stats, dict]:
    """Microseconds per operation by differencing 2n and n, ``repeat`` times; and counts per op."""
    samples = []
    counts: dict = {}
    for _ in range(repeat):
        t1, s1 = boot_time(source, libos, n)
        t2, s2 = boot_time(source, libos, 2 * n)
        samples.append((t2 - t1) / (n * ops_per_n) * 1e6)
        counts = {k: (s2["transitions"][k] - s1["transitions"][k]) / (n * ops_per_n) for k in s2["transitions"]}
        counts["hypercalls"] = {h: (s2["hypercalls"].get(h, 0) - s1["hypercalls"].get(h, 0)) / (n * ops_per_n)
                                for h in s2["hypercalls"] if s2["hypercalls"].get(h, 0) != s1["hypercalls"].get(h, 0)}
    return Stats.of(samples, n * ops_per_n), counts


def _counts_note(c: dict) -> str:
    kinds = ", ".join(f"{k} {v:g}" for k, v in c.items() if k != "hypercalls" and v)
    hcs = ", ".join(f"{k} {v:g}" for k, v in sorted(c.get("hypercalls", {}).items()))
    return f"per operation: {kinds}" + (f" (hypercalls: {hcs})" if hcs else "")


def run(repeat: int = 5, quick: bool = False, log: Callable[[str], None] | None = None) -> list[Result]:
    log = log or (lambda s: None)
    if quick:
        repeat = min(repeat, 3)
    scale = 1 if quick else 4
    code, until = assemble(SYSCALL_LOOP)
    bare_run = bare_runner(bare_syscall_uc(code, _empty_hook), until)
    log("bare Unicorn syscall hook")
    trips = calibrate(bare_run, 0.05 if quick else 0.3)
    bare = result("bare syscall, empty hook", _time_loop(bare_run, trips, trips + 1, repeat))
    out = [bare]
    log("library call (core.null)")
    s, c = per_op(LIBCALL, {"console": "direct"}, 2000 * scale, repeat)
    out.append(result("library call (core.null)", s, baseline=bare, note=_counts_note(c)))
    log("hypercall (env_id)")
    s, c = per_op(HYPERCALL, {"console": "direct"}, 2000 * scale, repeat)
    out.append(result("hypercall (env_id)", s, baseline=bare, note=_counts_note(c)))
    for impl in ("cow", "eager"):
        log(f"fork with 1 MiB touched ({impl})")
        s, c = per_op(FORK, {"console": "direct", "memory": impl}, 5 * scale, repeat)
        out.append(result(f"fork, 1 MiB touched ({impl})", s, note=_counts_note(c) + "; the child exits at once"))
    log("user-level thread switch")
    s, c = per_op(THREADS, {"console": "direct", "sched": "rr"}, 500 * scale, repeat, ops_per_n=2)
    out.append(result("thread switch (sched rr, yield)", s, note=_counts_note(c)))
    log("IPC round trip")
    s, c = per_op(IPC, {"console": "direct", "memory": "cow", "ipc": "jos"}, 200 * scale, repeat)
    out.append(result("IPC round trip (ipc jos)", s, note=_counts_note(c)))
    return out


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, "python -m exo bench libos", __doc__, run, "library OS (libos)", repeat=5)


if __name__ == "__main__":
    raise SystemExit(main())
