"""``python -m exo fuzz``: run the hypercall fuzzer for a while; report calls made and any violation.

A run is a sequence of episodes. Each boots a fresh machine (``Harness``) and
makes up to ``episode`` steps chosen by the rules (exo/fuzz/rules.py) from a
generator seeded with (seed, episode number), checking every invariant
(exo/fuzz/invariants.py) after every call. An episode ends early when no
environment can run any more (all exited, blocked or destroyed). The same seed
gives the same calls, results and counts (virtual clock); only the wall time and
hence the number of episodes a ``--seconds`` budget fits differ.

On a violation the episode's calls are replayed on fresh machines with chunks
removed (delta debugging) until no call can be dropped, and the shortest
sequence that still violates an invariant is printed: the reproduction.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from exo.errors import ExoUserError
from exo.fuzz.harness import Call, Harness
from exo.fuzz.invariants import check
from exo.fuzz.rules import RandomChooser, step

EPISODE_STEPS = 600
MAX_APPS = 16


@dataclass
class Finding:
    episode: int
    violations: list[str]
    calls: list[Call]
    minimal: list[Call] | None = None


@dataclass
class RunStats:
    seed: int
    apps: int
    calls: int = 0  # hypercalls that reached the exokernel
    steps: int = 0
    episodes: int = 0
    per_call: Counter[str] = field(default_factory=Counter)
    faults: int = 0  # environments stopped with a fault report (their code page unmapped, say)
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)


def _tally(stats: RunStats, h: Harness) -> None:
    stats.calls += h.calls
    stats.steps += h.steps
    stats.faults += len(h.reports)
    for (_, name), n in h.expected.items():
        stats.per_call[name] += n


def run_episode(seed: int, episode: int, apps: int, steps: int, deadline: float | None = None,
                check_every: int = 1) -> tuple[Harness, Finding | None]:
    """One episode: a fresh machine, ``steps`` rule steps; stops at the first violation."""
    chooser = RandomChooser(seed * 1_000_003 + episode)
    h = Harness(apps=apps)
    log: list[Call] = []
    try:
        for i in range(steps):
            calls = step(h, chooser)
            if calls is None:
                break
            for c in calls:
                log.append(c)
                h.call(c)
                if check_every == 1 or h.steps % check_every == 0:
                    bad = check(h)
                    if bad:
                        return h, Finding(episode, bad, log)
            if deadline is not None and i % 64 == 0 and time.monotonic() > deadline:
                break
        bad = check(h)
        return h, (Finding(episode, bad, log) if bad else None)
    finally:
        h.close()


def replay(calls: list[Call], apps: int) -> list[str]:
    """Run ``calls`` on a fresh machine (skipping any whose environment cannot run); the first violations."""
    h = Harness(apps=apps)
    try:
        for c in calls:
            env = h.k.envs.get(c.env)
            if env is None or env.status != 1 or (c.resume and not env.retrying):
                continue
            h.call(c)
            bad = check(h)
            if bad:
                return bad
        return []
    finally:
        h.close()


def minimize(calls: list[Call], apps: int, budget_s: float = 120.0,
             fails: Callable[[list[Call]], bool] | None = None) -> list[Call] | None:
    """Delta debugging (Zeller's ddmin, chunk removal): a shorter sequence that still violates."""
    fails = fails or (lambda cs: bool(replay(cs, apps)))
    if not fails(calls):
        return None  # not reproducible on a fresh machine: the report shows the whole episode
    end = time.monotonic() + budget_s
    cur = list(calls)
    n = 2
    while len(cur) >= 2 and time.monotonic() < end:
        size = max(1, len(cur) // n)
        removed = False
        for start in range(0, len(cur), size):
            trial = cur[:start] + cur[start + size :]
            if trial and fails(trial):
                cur = trial
                n = max(n - 1, 2)
                removed = True
                break
            if time.monotonic() > end:
                break
        if not removed:
            if size == 1:
                break
            n = min(len(cur), n * 2)
    return cur


def fuzz(seed: int, seconds: float, apps: int, max_calls: int | None = None, episode_steps: int = EPISODE_STEPS,
         progress: Callable[[RunStats], None] | None = None, minimize_s: float = 120.0) -> RunStats:
    stats = RunStats(seed, apps)
    t0 = time.monotonic()
    deadline = t0 + seconds
    episode = 0
    while time.monotonic() < deadline and (max_calls is None or stats.calls < max_calls):
        h, finding = run_episode(seed, episode, apps, episode_steps, deadline)
        _tally(stats, h)
        stats.episodes += 1
        episode += 1
        if finding is not None:
            finding.minimal = minimize(finding.calls, apps, minimize_s)
            stats.findings.append(finding)
            break
        del h
        if episode % 16 == 0:
            gc.collect()  # a Unicorn instance sits in a reference cycle (UNICORN_NOTES trap 7)
        if progress is not None:
            progress(stats)
    stats.seconds = time.monotonic() - t0
    return stats


def render(stats: RunStats) -> str:
    rate = stats.calls / stats.seconds if stats.seconds else 0.0
    lines = [f"exo fuzz: seed {stats.seed}, {stats.apps} apps: {stats.calls:,} hypercalls in {stats.steps:,} steps, "
             f"{stats.episodes} episodes, {stats.seconds:.1f} s ({rate:,.0f} calls/s), "
             f"{stats.faults} environments stopped by fault reports, "
             f"{len(stats.findings)} violations"]
    lines.append("calls per hypercall:")
    width = max((len(name) for name in stats.per_call), default=0)
    lines += [f"  {name:<{width}} {n:>10,}" for name, n in sorted(stats.per_call.items())]
    for f in stats.findings:
        lines.append(f"VIOLATION in episode {f.episode} (seed {stats.seed}) after {len(f.calls)} calls:")
        lines += [f"  {v}" for v in f.violations[:20]]
        if f.minimal is not None:
            repro = f.minimal
            lines.append(f"reproduction ({len(repro)} calls on a fresh machine with {stats.apps} apps; "
                         "exo.fuzz.runner.replay):")
        else:
            repro = f.calls
            lines.append(f"the episode's {len(repro)} calls (replaying them did not reproduce it):")
        lines += [f"  {c.render()}" for c in repro]
    return "\n".join(lines)


def cmd_fuzz(args) -> int:
    """The CLI command: exit 0 clean, 1 on a violation (2 on bad usage, raised as ExoUserError)."""
    if not args.seconds > 0:
        raise ExoUserError("--seconds", f"must be positive, got {args.seconds}")
    if not 1 <= args.apps <= MAX_APPS:
        raise ExoUserError("--apps", f"must be between 1 and {MAX_APPS}, got {args.apps}")
    if args.calls is not None and args.calls <= 0:
        raise ExoUserError("--calls", f"must be positive, got {args.calls}")
    if args.seed < 0:
        raise ExoUserError("--seed", f"must be >= 0, got {args.seed}")
    last = [time.monotonic()]

    def progress(s: RunStats) -> None:
        if args.progress and time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            sys.stderr.write(f"exo fuzz: {s.calls:,} hypercalls, {s.episodes} episodes\n")
            sys.stderr.flush()

    stats = fuzz(args.seed, args.seconds, args.apps, args.calls, progress=progress)
    print(render(stats))
    return 1 if stats.findings else 0
