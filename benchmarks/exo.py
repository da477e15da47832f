"""``python -m exo bench exo``: the exokernel's costs beside bare Unicorn.

* null hypercall round trip (``env_id``: number in, id out) and a 4-argument
  hypercall (``null``), each as a ratio to the bare Unicorn ``syscall`` hook
  round trip (empty Python hook, no paging) measured in the same run;
  target: null hypercall within 3x; the null hypercall again with ``--trace``'s
  tracer on, as a ratio to the untraced one; whole runs of guest_apps/primes
  (IPC between 8 environments) and guest_apps/threads with and without
  ``--trace`` (the file written included), interleaved;
* environment create + destroy (address space, hypercall page, saved
  context), target under 100 us; compared with Firecracker's published 150
  microVMs per second per host (about 6.7 ms each);
* a context switch between two environments that yield to each other;
* process start to first echo: ``python -m exo boot guest_apps/echo`` as a
  subprocess, from spawn to the first byte on its stdout; target under 300 ms;
  baseline: ``python -c pass`` started the same way;
* whole-process start-up: ``python -m exo boot guest_apps/echo`` with empty
  input, from spawn to exit, against ``python -c "import unicorn"`` started
  the same way (runs alternate); target: ratio <= 1.5. Both run with Python's
  bytecode cache on (in a temporary ``PYTHONPYCACHEPREFIX``, filled by a
  warm-up run), as an installed exo runs: with ``PYTHONDONTWRITEBYTECODE`` set,
  exo's sources would be compiled on every start while unicorn's installed
  ``.pyc`` files are used, which measures the compiler, not the start-up.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import (
    Result,
    Stats,
    measure,
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

ROOT = Path(__file__).resolve().parent.parent

_LOOP = """
section .text
_start:
top:                          ; RBX = trip count (set by the benchmark)
{body}
    dec rbx
    jnz top
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
"""
NULL_BODY = "    call HC_ENV_ID"
FOUR_BODY = "    mov rdi, 1\n    mov rsi, 2\n    mov rdx, 3\n    mov r10, 4\n    call HC_NULL"
YIELD_BODY = "    mov rdi, SCHED_YIELD\n    xor esi, esi\n    call HC_SCHED_OP"


def _guest_runner(body: str, envs: int = 1, trace: bool = False) -> Callable[[int], None]:
    """A function running ``envs`` guests that each loop ``trips`` times over ``body`` (``trace``:
    with a tracer recording every call, as ``--trace`` does, into its default 1,000,000-event buffer)."""
    from exo.build.asm import assemble as exo_assemble
    from exo.build.image import Image, Segment, predefined_symbols
    from exo.kernel import Exokernel
    from exo.loader import load_image
    from hw import Machine
    from hw.regs import Reg

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "loop.s"
        src.write_text(_LOOP.format(body=body))
        asm = exo_assemble([src], 0x400000, [], predefined_symbols())
    image = Image(
        "loop", asm.symbols["_start"], [Segment(n, va, data, size, 0x9) for n, va, data, size in asm.segments]
    )

    machine = Machine(16 << 20, stdin=b"", stdout=io.BytesIO())  # built once, outside the timing

    def run(trips: int) -> None:
        k = Exokernel(machine, slice_instructions=1 << 30)
        if trace:
            from exo.trace import Tracer

            k.acct.tracer = Tracer(k.cpu.instructions, machine.clock.at)
        for _ in range(envs):
            env = k.create_env("loop")
            load_image(k, env, image, [])
            k.cpu.context_write(env.ctx, Reg.RBX, trips)
        k.run()
        bad = [e for e in k.envs.values() if e.exit_status != 0]
        if bad:
            raise RuntimeError(f"benchmark guest failed: {bad[0].fault}")

    return run


def _hypercall_bench(body: str, repeat: int, seconds: float, trace: bool = False) -> Stats:
    run = _guest_runner(body, trace=trace)
    trips = calibrate(run, seconds, n=2000)
    return _time_loop(run, trips, trips, repeat)


def bench_hypercalls(repeat: int, seconds: float, log: Callable[[str], None]) -> list[Result]:
    code, until = assemble(SYSCALL_LOOP)
    bare_run = bare_runner(bare_syscall_uc(code, _empty_hook), until)
    log("bare Unicorn syscall hook round trip")
    trips = calibrate(bare_run, seconds)
    bare = result("bare syscall, empty hook", _time_loop(bare_run, trips, trips + 1, repeat))
    log("null hypercall (env_id)")
    null = result(
        "null hypercall (env_id)",
        _hypercall_bench(NULL_BODY, repeat, seconds),
        baseline=bare,
        target="ratio <= 3",
        check=lambda r: r <= 3,
        note="guest `call HC_ENV_ID` in a loop: call into the hypercall page, syscall hook, "
        "table dispatch, RAX read and write, ret; includes the guest's loop instructions",
    )
    log("4-argument hypercall (null)")
    four = result(
        "4-argument hypercall (null)",
        _hypercall_bench(FOUR_BODY, repeat, seconds),
        baseline=bare,
        note="the same with 4 argument registers set and read in one batch",
    )
    log("null hypercall, traced")
    traced = result(
        "null hypercall, traced (--trace)",
        _hypercall_bench(NULL_BODY, repeat, seconds, trace=True),
        baseline=null,
        note="the same loop with a tracer: each call recorded as a span with its arguments and result "
        "(exo/trace.py); the ratio is to the untraced null hypercall",
    )
    return [bare, null, four, traced]


def bench_traced_runs(repeat: int, log: Callable[[str], None]) -> list[Result]:
    """Whole runs with and without --trace (interleaved), trace file written included."""
    from benchmarks.harness import Bench, measure_interleaved
    from exo.api import run

    root = Path(__file__).resolve().parent.parent / "guest_apps"
    out: list[Result] = []
    with tempfile.TemporaryDirectory() as d:
        for app in ("primes", "threads"):
            log(f"{app}: a whole run, untraced and traced")
            path = Path(d) / f"{app}.json"
            plain, traced = measure_interleaved(
                [Bench(lambda a=app: run(root / a, stdin=b"")),
                 Bench(lambda a=app, p=path: run(root / a, stdin=b"", trace=str(p)))], repeat=repeat)
            events = len([e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] != "M"])
            base = result(f"exo boot {app}, untraced", plain)
            out += [base, result(f"exo boot {app}, --trace ({events:,} events)", traced, baseline=base,
                                 note="the same run with a trace of every call written to a .json file")]
    return out


def bench_envs(repeat: int, log: Callable[[str], None]) -> list[Result]:
    from exo.kernel import Exokernel
    from hw import Machine

    machine = Machine(256 << 20, stdin=b"", stdout=io.BytesIO())
    k = Exokernel(machine)

    def create_destroy() -> None:
        env = k.create_env("e")
        k.destroy(env, exit_status=0)

    log("environment create + destroy")
    stats = measure(create_destroy, inner=2000, repeat=repeat)
    firecracker = Stats.of([1e6 / 150], 1)
    fc = result("Firecracker microVM start (published: 150/s per host)", firecracker)
    env = result(
        "environment create + destroy",
        stats,
        baseline=fc,
        target="< 100 us",
        check=lambda r: stats.median < 100,
        note="page-table root, hypercall page mapping (3 table frames), saved CPU context; "
        "then unmap, free frames, drop the context. Firecracker's figure is from its "
        "README/NSDI'20 paper, not measured here.",
    )
    log("context switch (two environments yielding)")
    run1 = _guest_runner(YIELD_BODY, envs=1)
    run2 = _guest_runner(YIELD_BODY, envs=2)
    trips = 5000
    one = _time_loop(run1, trips, trips, repeat)
    two = _time_loop(run2, trips, 2 * trips, repeat)
    yield1 = result("yield, one environment (no switch)", one)
    switch = result(
        "yield + switch between two environments",
        two,
        baseline=yield1,
        note="per yield; the difference to the one-environment figure is the switch: "
        "context save, context restore, CR3 write, emu_start restart",
    )
    return [fc, env, yield1, switch]


def _first_byte_time(cmd: list[str], stdin: bytes, cache: str) -> float:
    env = dict(os.environ, EXO_CACHE_DIR=cache)
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=env
    )
    p.stdin.write(stdin)
    p.stdin.close()
    first = p.stdout.read(1)
    t = time.perf_counter() - t0
    p.stdout.read()
    p.wait()
    if stdin and first != stdin[:1]:
        raise RuntimeError(f"{cmd}: unexpected output {first!r}")
    return t * 1e6


def bench_start(repeat: int, log: Callable[[str], None]) -> list[Result]:
    with tempfile.TemporaryDirectory() as cache:
        boot = [sys.executable, "-m", "exo", "boot", "guest_apps/echo"]
        _first_byte_time(boot, b"x\n", cache)  # fill the image cache
        log("process start to first echo")
        samples = [_first_byte_time(boot, b"x\n", cache) for _ in range(repeat)]
        log("python -c pass (interpreter start)")
        base = [
            _first_byte_time([sys.executable, "-c", "import sys; sys.stdout.write('x')"], b"", cache)
            for _ in range(repeat)
        ]
    py = result("python start to first byte (python -c)", Stats.of(base, 1))
    echo = result(
        "exo boot echo: start to first echo",
        Stats.of(samples, 1),
        baseline=py,
        target="< 300 ms",
        check=lambda r: Stats.of(samples, 1).median < 300_000,
        note="image from the cache; includes interpreter start, imports, machine probes",
    )
    return [py, echo]


def _exit_time(cmd: list[str], env: dict[str, str]) -> float:
    """Microseconds from spawning ``cmd`` (empty stdin) to its exit; it must exit 0."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=ROOT, env=env)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit status {p.returncode}: {p.stderr.decode()[-300:]}")
    return t * 1e6


def startup_against_unicorn(cmd: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """Start-to-exit microseconds of ``cmd`` and of ``python -c "import unicorn"``, runs
    alternating, after one warm-up of each (image and bytecode caches filled, in temporary
    directories of their own)."""
    bare = [sys.executable, "-c", "import unicorn"]
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as pyc:
        env = dict(os.environ, EXO_CACHE_DIR=cache, PYTHONPYCACHEPREFIX=pyc)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for c in (cmd, bare):  # fill the image cache and the bytecode cache
            _exit_time(c, env)
        samples: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeat):
            samples[0].append(_exit_time(cmd, env))
            samples[1].append(_exit_time(bare, env))
    return samples


def bench_process(repeat: int, log: Callable[[str], None]) -> list[Result]:
    boot = [sys.executable, "-m", "exo", "boot", "guest_apps/echo"]
    log("whole-process start-up: exo boot echo and python -c 'import unicorn', alternating")
    samples = startup_against_unicorn(boot, repeat)
    uc = result("python -c 'import unicorn': start to exit", Stats.of(samples[1], 1))
    echo = result(
        "exo boot guest_apps/echo, empty input: start to exit",
        Stats.of(samples[0], 1),
        baseline=uc,
        target="ratio <= 1.5",
        check=lambda r: r <= 1.5,
        note="the whole process (interpreter, imports, machine probes, run, exit), image and bytecode "
        "cached; runs alternate with the baseline",
    )
    return [uc, echo]


def run(repeat: int = 7, quick: bool = False, log: Callable[[str], None] | None = None) -> list[Result]:
    log = log or (lambda s: None)
    seconds = 0.05 if quick else 0.3
    if quick:
        repeat = min(repeat, 3)
    return (bench_hypercalls(repeat, seconds, log) + bench_traced_runs(repeat, log) + bench_envs(repeat, log)
            + bench_start(repeat, log) + bench_process(repeat, log))


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, "python -m exo bench exo", __doc__, run, "exokernel (exo)", repeat=7)


if __name__ == "__main__":
    raise SystemExit(main())
