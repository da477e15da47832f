"""``exo experiment ring-transitions --sweep SPEC``: a grid of runs, each an independent job.

SPEC is a TOML or JSON file, or the same keys inline (``"structures=exokernel,monolithic;
workloads=null,write;slices=1000,100000;repeats=3"``):

    structures  OS structures (default: the command's --structures)
    workloads   workloads (default: the command's --workloads)
    profiles    cost profiles whose modelled cycles each row carries (default: all, exo/costmodel.py)
    slices      time slices in guest instructions (default: exo's own, 10,000)
    seeds       seeds of the guest's randomness: a Linux program's AT_RANDOM bytes; the assembly
                workloads have none, so their counts must not change with it (default: 0)
    repeats     runs of each point, for the spread of host time (default: the command's --repeat)
    ops         operations of the counted runs (n and 2n: lmbench's differencing; default --ops)
    timing_ops  operations of the timed runs (default: the workload's own, 1,000 for most)

A point is a (workload, structure, slice, seed) and a run is one repeat of a point: one job
(``run_point``) on the executor (exo/jobs: local processes, or Ray). Each run boots its workload
four times: n and 2n operations for the counts, which are exact and must be the same on every
executor and every repeat, and timing_ops and twice that for the host time. Results are one tidy
row per run (``tidy``: its parameters, its transitions per operation, modelled cycles under each
profile, host microseconds per operation, and the machine it ran on), as JSON and CSV, a summary
table per point, and with ``--plot`` one chart per workload.
"""

from __future__ import annotations

import itertools
import json
import statistics
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exo.errors import ExoUserError

LISTS = ("structures", "workloads", "profiles", "slices", "seeds")
NUMBERS = ("repeats", "ops", "timing_ops")


@dataclass
class Sweep:
    structures: list[str]
    workloads: list[str]
    profiles: list[str]
    slices: list[int | None] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0])
    repeats: int = 1
    ops: int = 200
    timing_ops: int | None = None

    def points(self) -> list[dict]:
        """Every run of the grid: one dict of parameters each (workload-major, repeats innermost).
        A workload limited to some structures (``fault``: not under microkernel) skips the others."""
        from benchmarks.ring_transitions import STRUCTURES, WORKLOADS

        out = []
        for w, s, sl, seed in itertools.product(self.workloads, self.structures, self.slices, self.seeds):
            if s not in WORKLOADS[w].get("structures", STRUCTURES):
                continue
            for r in range(self.repeats):
                out.append({"workload": w, "structure": s, "slice": sl, "seed": seed, "repeat": r,
                            "ops": self.ops, "timing_ops": self.timing_ops, "profiles": list(self.profiles)})
        return out


def parse(spec: str, defaults: dict) -> Sweep:
    """A sweep from SPEC (a file, or ``key=a,b;key=c`` inline) over ``defaults`` (the command's
    own options); every problem is a one-line error naming SPEC."""
    from benchmarks.ring_transitions import STRUCTURES, WORKLOADS
    from exo.costmodel import PROFILES

    path = Path(spec)
    if path.suffix in (".toml", ".json") or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ExoUserError(spec, f"cannot read the sweep: {e.strerror or e}") from None
        try:
            raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as e:
            raise ExoUserError(spec, f"not a valid sweep file: {e}") from None
        if not isinstance(raw, dict):
            raise ExoUserError(spec, "a sweep file is a table of keys (structures, workloads, ...)")
    else:
        raw = {}
        for part in spec.replace("\n", ";").split(";"):
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            if not eq:
                raise ExoUserError(spec, f"{part.strip()!r} is not KEY=VALUE[,VALUE...]")
            raw[key.strip()] = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(raw) - set(LISTS) - set(NUMBERS))
    if unknown:
        raise ExoUserError(spec, f"unknown key {unknown[0]!r} (keys: {', '.join(LISTS + NUMBERS)})")
    choices = {"structures": STRUCTURES, "workloads": tuple(WORKLOADS), "profiles": tuple(PROFILES)}
    values: dict = {"profiles": list(PROFILES), **defaults}
    for key, v in raw.items():
        items = v if isinstance(v, list) else [v]
        if not items:
            raise ExoUserError(spec, f"{key} is empty")
        if key in choices:
            bad = [x for x in items if x not in choices[key]]
            if bad:
                raise ExoUserError(spec, f"unknown {key[:-1]} {bad[0]!r} (choose: {', '.join(choices[key])})")
            values[key] = [str(x) for x in items]
            continue
        try:
            nums = [int(x) for x in items]
        except (TypeError, ValueError):
            raise ExoUserError(spec, f"{key} must be whole numbers, got {items!r}") from None
        if key in NUMBERS:
            if len(nums) != 1 or nums[0] <= 0:
                raise ExoUserError(spec, f"{key} is one positive number, got {items!r}")
            values[key] = nums[0]
        elif key == "slices" and any(n <= 0 for n in nums):
            raise ExoUserError(spec, f"slices must be positive, got {items!r}")
        elif key == "seeds" and any(n < 0 for n in nums):
            raise ExoUserError(spec, f"seeds must not be negative, got {items!r}")
        else:
            values[key] = nums
    return Sweep(**values)


def run_point(point: dict) -> dict:
    """One run of the grid (a job: module-level, its argument and result plain data): the counts
    from n and 2n operations, the host time from timing_ops and twice that; its tidy row."""
    import tempfile
    import time

    from benchmarks.ring_transitions import WORKLOADS, boot, inputs_of, modelled
    from exo import jobs
    from exo.costmodel import PROFILES
    from exo.structures import crossings

    w = WORKLOADS[point["workload"]]
    n = w.get("n", point["ops"])
    per = w.get("per_op", 1)
    args = (point["workload"], point["structure"])
    opts = {"slice": point["slice"], "seed": point["seed"]}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        small, _ = boot(*args, n, tmp, **opts)
        big, _ = boot(*args, 2 * n, tmp, **opts)
        tn = point["timing_ops"] or max(n, w.get("timing_ops", 1000))
        _, t_small = boot(*args, tn, tmp, **opts)
        _, t_big = boot(*args, 2 * tn, tmp, **opts)
        inputs = inputs_of(point["workload"], tmp)
    per_op = {k: (big["transitions"][k] - small["transitions"][k]) / (n * per) for k in big["transitions"]}
    names = set(big["hypercalls"]) | set(small["hypercalls"])
    hcs = {h: (big["hypercalls"].get(h, 0) - small["hypercalls"].get(h, 0)) / (n * per) for h in sorted(names)}
    hcs = {h: v for h, v in hcs.items() if v}
    return {**{k: point[k] for k in ("workload", "structure", "slice", "seed", "repeat")},
            "ops": n, "timing_ops": tn, "per_op": per_op, "crossings": crossings(per_op),
            "guest_instructions": (big["guest_instructions"] - small["guest_instructions"]) / (n * per),
            "hypercalls": hcs,
            "modelled_cycles": modelled(small, big, n * per, {p: PROFILES[p] for p in point["profiles"]}),
            "host_us": (t_big - t_small) / (tn * per) * 1e6,
            "job_seconds": time.perf_counter() - t_start,
            "inputs": inputs, "machine": jobs.machine()}


def run(sweep: Sweep, executor: str = "local", progress=None) -> list[dict]:
    """Every run of ``sweep`` on ``executor`` (exo/jobs); the tidy rows in grid order."""
    from exo import jobs

    ex = jobs.parse(executor)
    rows = jobs.run(run_point, sweep.points(), ex, progress)
    for r in rows:
        r["executor"] = ex.kind
    return rows


# ------------------------------------------------------------------------------ results
HOST_FIELDS = ("host_us", "job_seconds", "machine", "executor")  # all that may differ between executors


def exact(rows: list[dict]) -> list[dict]:
    """The rows without what depends on the host (times, the machine, the executor): equal on
    every executor and every repeat of a point."""
    return [{k: v for k, v in r.items() if k not in HOST_FIELDS} for r in rows]


def tidy(rows: list[dict]) -> tuple[list[str], list[list]]:
    """One flat row per run (CSV): parameters, transitions per op by kind, cycles per profile, host."""
    kinds = sorted({k for r in rows for k in r["per_op"]})
    profiles = list(dict.fromkeys(p for r in rows for p in r["modelled_cycles"]))
    head = ["workload", "structure", "slice", "seed", "repeat", "ops", "crossings", "guest_instructions",
            *(f"per_op_{k}" for k in kinds), *(f"cycles_{p}" for p in profiles), "host_us",
            "executor", "host", "cpu", "python"]
    out = []
    for r in rows:
        m = r["machine"]
        out.append([r["workload"], r["structure"], r["slice"] or "", r["seed"], r["repeat"], r["ops"],
                    r["crossings"], r["guest_instructions"], *(r["per_op"].get(k, 0) for k in kinds),
                    *(r["modelled_cycles"].get(p, "") for p in profiles), round(r["host_us"], 3),
                    r.get("executor", ""), m["host"], m["cpu"], m["python"]])
    return head, out


def write(rows: list[dict], json_path: str | None, csv_path: str | None) -> None:
    import csv

    for path, kind in ((json_path, "json"), (csv_path, "csv")):
        if not path:
            continue
        try:
            if kind == "json":
                Path(path).write_text(json.dumps(rows, indent=2) + "\n")
            else:
                head, body = tidy(rows)
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerows([head, *body])
        except OSError as e:
            raise ExoUserError(path, f"cannot write: {e.strerror or e}") from None


def _key(r: dict) -> tuple:
    return r["workload"], r["structure"], r["slice"], r["seed"]


def summary(rows: list[dict], console) -> None:
    """A table per workload: one line per point, host time as median (min-max) over its repeats."""
    from rich.table import Table

    points: dict[tuple, list[dict]] = {}
    for r in rows:
        points.setdefault(_key(r), []).append(r)
    profiles = list(dict.fromkeys(p for r in rows for p in r["modelled_cycles"]))
    for workload in dict.fromkeys(r["workload"] for r in rows):
        t = Table(title=f"sweep: {workload} (per operation)")
        for col in ("structure", "slice", "seed", "runs", "crossings", "guest\ninsns", *(f"cycles\n{p}" for p in profiles),
                    "host us\nmedian (min-max)"):
            t.add_column(col, justify="left" if col == "structure" else "right")
        for (w, s, sl, seed), rs in points.items():
            if w != workload:
                continue
            host = [r["host_us"] for r in rs]
            first = rs[0]
            t.add_row(s, str(sl or "default"), str(seed), str(len(rs)), f"{first['crossings']:g}",
                      f"{first['guest_instructions']:.0f}",
                      *(f"{first['modelled_cycles'][p]:,.0f}" for p in profiles),
                      f"{statistics.median(host):.1f} ({min(host):.1f}-{max(host):.1f})")
        console.print(t)


def plot(rows: list[dict], path: str) -> list[str]:
    """One chart per workload (PATH-<workload>.png): modelled cycles per profile and host time
    (median, min-max) per structure and slice. Needs matplotlib; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ExoUserError(path, "--plot needs matplotlib (pip install 'exo[plot]')") from None
    base = Path(path)
    written = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["workload"] == workload:
                groups.setdefault((r["structure"], r["slice"], r["seed"]), []).append(r)
        labels = [s + (f"\nslice {sl}" if sl else "") + (f"\nseed {sd}" if sd else "") for s, sl, sd in groups]
        profiles = list(groups[next(iter(groups))][0]["modelled_cycles"])
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(8.0, 0.8 * len(groups)), 8))
        width = 0.8 / max(1, len(profiles))
        for i, p in enumerate(profiles):
            a1.bar([x + i * width for x in range(len(groups))], [rs[0]["modelled_cycles"][p] for rs in groups.values()],
                   width, label=p)
        a1.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))], labels, fontsize=7)
        a1.set_ylabel("modelled cycles per operation")
        a1.legend(fontsize=7)
        med = [statistics.median(r["host_us"] for r in rs) for rs in groups.values()]
        lo = [m - min(r["host_us"] for r in rs) for m, rs in zip(med, groups.values())]
        hi = [max(r["host_us"] for r in rs) - m for m, rs in zip(med, groups.values())]
        a2.bar(range(len(groups)), med, yerr=[lo, hi], capsize=3)
        a2.set_xticks(range(len(groups)), labels, fontsize=7)
        a2.set_ylabel("host us per operation (median, min-max)")
        fig.suptitle(f"{workload}: {sum(len(rs) for rs in groups.values())} runs")
        fig.tight_layout()
        out = base.with_name(f"{base.stem}-{workload}{base.suffix or '.png'}")
        try:
            fig.savefig(out)
        except OSError as e:
            raise ExoUserError(str(out), f"cannot write: {e.strerror or e}") from None
        plt.close(fig)
        written.append(str(out))
    return written


def as_dict(sweep: Sweep) -> dict:
    return asdict(sweep)
