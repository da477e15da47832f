"""Small, reusable timing helpers shared by every benchmark suite.

``measure`` times ``inner`` calls of a function per sample with
``time.perf_counter_ns``, takes ``repeat`` samples (after untimed warm-up
calls, with the garbage collector paused as ``timeit`` does) and reports the
per-operation time in microseconds: median, quartiles, min and max over the
samples. A call may perform several operations (``per_call``), e.g. one
``emu_start`` running 50,000 guest ``syscall`` round trips.
``measure_interleaved`` does the same for a group of ``Bench``es, one sample
of each per round, so that a noisy machine's slow spells hit all of them
alike and the ratios between them stay meaningful. ``calibrate`` picks a
trip count that makes a sample last a given time.

A ``Result`` names a measurement, the baseline it is compared with (measured in
the same run), the ratio median/baseline median and, when a target applies,
whether it was met. ``print_results`` renders a rich table; ``to_json`` makes
the same figures machine-readable; ``machine_facts`` says where they come from.
Timings never decide a pass/fail test: they belong here, not in tests/.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Stats:
    """Per-operation figures over ``samples`` samples, in the unit of the Result."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    samples: int
    ops_per_sample: int
    values: tuple[float, ...] = ()  # every sample's figure, in the order taken

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25

    @classmethod
    def of(cls, values: Sequence[float], ops_per_sample: int) -> Stats:
        if not values:
            raise ValueError("no samples")
        vals = sorted(values)
        if len(vals) >= 2:
            q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
        else:
            q1 = q3 = vals[0]
        med = statistics.median(vals)
        return cls(med, q1, q3, vals[0], vals[-1], len(vals), ops_per_sample, tuple(values))

    def inverted(self, scale: float = 1.0) -> Stats:
        """The same samples as ``scale / x`` (time per operation -> rate, e.g. MIPS)."""
        if not self.values:
            raise ValueError("no samples kept to invert")
        return Stats.of([scale / v for v in self.values], self.ops_per_sample)


@dataclass(frozen=True, slots=True)
class Bench:
    """One thing to time: ``inner`` calls of ``fn`` per sample, each call ``per_call`` operations."""

    fn: Callable[[], object]
    inner: int = 1
    per_call: int = 1


def measure_interleaved(benches: Sequence[Bench], *, repeat: int, warmup: int = 1) -> list[Stats]:
    """Time several benchmarks in rounds (one sample of each per round), microseconds per operation.

    Interleaving spreads a noisy machine's slow moments over every benchmark of
    the group, so ratios between them are steadier than if each ran alone.
    ``warmup`` untimed calls of each come first (translation caches, lazy
    imports). The garbage collector is paused while sampling.
    """
    for b in benches:
        if b.inner < 1 or b.per_call < 1:
            raise ValueError("inner and per_call must be >= 1")
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    for b in benches:
        for _ in range(warmup):
            b.fn()
    clock = time.perf_counter_ns
    samples: list[list[float]] = [[] for _ in benches]
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for b, out in zip(benches, samples):
                fn, loop = b.fn, range(b.inner)
                t0 = clock()
                for _ in loop:
                    fn()
                out.append((clock() - t0) / 1000 / (b.inner * b.per_call))
    finally:
        if gc_was_enabled:
            gc.enable()
    return [Stats.of(s, b.inner * b.per_call) for b, s in zip(benches, samples)]


def measure(
    fn: Callable[[], object],
    *,
    inner: int,
    repeat: int,
    per_call: int = 1,
    warmup: int = 1,
) -> Stats:
    """Time ``fn``: ``repeat`` samples of ``inner`` calls; microseconds per operation.

    Each call counts as ``per_call`` operations; ``warmup`` untimed calls come first.
    """
    return measure_interleaved([Bench(fn, inner, per_call)], repeat=repeat, warmup=warmup)[0]


def calibrate(fn: Callable[[int], object], seconds: float, n: int = 1000) -> int:
    """An ``n`` for which ``fn(n)`` takes about ``seconds`` (after one warm-up call).

    ``fn(n)`` must do work proportional to ``n`` (a loop trip count, a number of calls).
    """
    fn(n)
    enough = max(0.005, min(0.1, seconds / 2))  # long enough a trial to scale from
    while True:
        t0 = time.perf_counter()
        fn(n)
        dt = time.perf_counter() - t0
        if dt >= enough or n >= 1 << 40:
            return max(1, int(n * seconds / dt))
        n *= 4


@dataclass(frozen=True, slots=True)
class Result:
    """One benchmark figure, optionally compared with a baseline from the same run."""

    name: str
    stats: Stats
    unit: str  # "us" (time per operation) or e.g. "MIPS" (a rate)
    baseline: str | None = None
    ratio: float | None = None  # stats.median / baseline median
    target: str | None = None  # e.g. "ratio <= 4"
    met: bool | None = None
    note: str = ""


def result(
    name: str,
    stats: Stats,
    unit: str = "us",
    *,
    baseline: Result | None = None,
    target: str | None = None,
    check: Callable[[float], bool] | None = None,
    note: str = "",
) -> Result:
    """Build a Result; ``check(ratio)`` decides whether ``target`` is met."""
    ratio = None
    if baseline is not None:
        if baseline.unit != unit:
            raise ValueError(f"{name}: unit {unit!r} differs from baseline unit {baseline.unit!r}")
        ratio = stats.median / baseline.stats.median
    met = check(ratio) if (check is not None and ratio is not None) else None
    return Result(name, stats, unit, baseline.name if baseline else None, ratio, target, met, note)


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def report_console(stderr: bool = False) -> Console:
    """A Console for result tables: the terminal's width, or 200 columns when redirected (no cut figures)."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200)


def print_results(results: Sequence[Result], console: Console, title: str | None = None) -> None:
    """A rich table of ``results`` on ``console``, then each result's note.

    Make the console with ``Console(stderr=True)`` (or ``report_console(True)``) for stderr.
    """
    table = Table(title=title)
    table.add_column("benchmark", no_wrap=True)
    table.add_column("median", justify="right")
    table.add_column("p25-p75", justify="right")
    table.add_column("min-max", justify="right")
    table.add_column("unit")
    table.add_column("ratio", justify="right")
    table.add_column("baseline")
    table.add_column("target")
    table.add_column("met")
    for r in results:
        s = r.stats
        met = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[r.met]
        table.add_row(
            r.name,
            _fmt(s.median),
            f"{_fmt(s.p25)}-{_fmt(s.p75)}",
            f"{_fmt(s.min)}-{_fmt(s.max)}",
            r.unit,
            f"{r.ratio:.2f}x" if r.ratio is not None else "",
            r.baseline or "",
            r.target or "",
            met,
        )
    console.print(table)
    for r in results:
        if r.note:
            console.print(f"  [bold]{r.name}[/]: {r.note}", highlight=False)


def git_state(root: str | None = None) -> dict[str, Any] | None:
    """The commit the code comes from and the files changed since (None outside a git checkout)."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "modified": [ln[3:] for ln in status.stdout.splitlines()]}


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge the figures: host, Python, emulator versions."""
    facts: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "argv": sys.argv,
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    facts["git"] = git_state()
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu"] = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        facts["cpu"] = platform.processor() or None
    try:
        import unicorn

        facts["unicorn"] = unicorn.__version__
    except ImportError:  # pragma: no cover - unicorn is a hard dependency
        facts["unicorn"] = None
    return facts


def to_json(results: Sequence[Result], meta: dict[str, Any] | None = None) -> str:
    """The results (and ``meta``, e.g. ``machine_facts()``) as JSON text."""
    rows = []
    for r in results:
        row = asdict(r)
        row["stats"]["iqr"] = r.stats.iqr
        rows.append(row)
    return json.dumps({"meta": meta or {}, "results": rows}, indent=2)


def suite_main(argv, prog: str, doc: str, run, title: str, repeat: int) -> int:
    """The command line every suite shares: --repeat, --quick, --json FILE; a table on stderr."""
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=repeat, help=f"samples per figure (default {repeat})")
    p.add_argument("--quick", action="store_true", help="short runs (seconds), for a smoke test")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    console = report_console(stderr=True)
    results = run(args.repeat, args.quick, log=lambda s: console.print(f"[dim]{s}...[/]"))
    print_results(results, console, title=title)
    if args.json:
        Path(args.json).write_text(to_json(results, machine_facts()))
    return 0
