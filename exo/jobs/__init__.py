"""Independent jobs on an executor: local processes by default, or Ray for a cluster.

An experiment sweep (benchmarks/sweep.py) and batch grading (exo/labs/grade.py) are many
independent runs: each job is a module-level function and one picklable argument, and its result
comes back to the caller, which alone writes files. So the same jobs run unchanged on

``local[:N]``      N processes of this machine (default: one per core). Each is a fresh Python
                   (the ``spawn`` start method: no Unicorn state or progress-bar thread is forked).
``thread[:N]``     N threads of this process: for jobs that mostly wait on subprocesses (a grader).
``ray[:ADDRESS]``  Ray (https://docs.ray.io), an existing distributed engine: a local Ray started on
                   demand, or the cluster at ADDRESS (``ray start --head`` prints it; every node
                   needs the same exo installed: ``pip install 'exo[ray]'``).

Results are returned in submission order whatever order the jobs finish in, so a run's output does
not depend on the executor; ``machine()`` says where each job ran.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from exo.errors import ExoUserError

KINDS = ("local", "thread", "ray")


@dataclass(frozen=True)
class Executor:
    kind: str  # one of KINDS
    workers: int | None = None  # local, thread: how many at once (None: one per core)
    address: str | None = None  # ray: the cluster (None: a local Ray started on demand)

    def __str__(self) -> str:
        extra = self.address if self.kind == "ray" else self.workers
        return self.kind + (f":{extra}" if extra else "")


def parse(spec: str, option: str = "--executor") -> Executor:
    """``local``, ``local:4``, ``thread:8``, ``ray`` or ``ray:HOST:PORT``; a one-line error otherwise."""
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise ExoUserError(option, f"unknown executor {spec!r} (choose: local[:N], thread[:N], ray[:ADDRESS])")
    if kind == "ray":
        return Executor("ray", address=rest or None)
    if not rest:
        return Executor(kind)
    if not rest.isdigit() or int(rest) <= 0:
        raise ExoUserError(option, f"{kind}:N needs a positive number of workers, got {rest!r}")
    return Executor(kind, workers=int(rest))


def machine() -> dict[str, str]:
    """Where this process runs: host name, OS, CPU model, Python (a row of results records it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"host": socket.gethostname(), "os": platform.platform(), "cpu": cpu,
            "cores": str(os.cpu_count() or 1), "python": platform.python_version()}


def run(fn: Callable[[Any], Any], items: Iterable[Any], executor: Executor | str = "local",
        progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """``[fn(x) for x in items]`` on ``executor``, in the items' order; ``progress(done, total)``
    after each job. ``fn`` must be a module-level function (it is sent by reference)."""
    ex = parse(executor) if isinstance(executor, str) else executor
    items = list(items)
    if not items:
        return []
    if ex.kind == "ray":
        return _ray(fn, items, ex.address, progress)
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed

    workers = min(ex.workers or os.cpu_count() or 1, len(items))
    if ex.kind == "thread":
        pool = ThreadPoolExecutor(max_workers=workers)
    else:
        import multiprocessing

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    out: list[Any] = [None] * len(items)
    with pool:
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        for done, fut in enumerate(as_completed(futures), 1):
            out[futures[fut]] = fut.result()
            if progress:
                progress(done, len(items))
    return out


def _source_path() -> str:
    """The directory exo is imported from, ahead of any PYTHONPATH already set."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rest = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + rest if rest else "")


def _ray(fn: Callable[[Any], Any], items: list[Any], address: str | None,
         progress: Callable[[int, int], None] | None) -> list[Any]:
    try:
        import ray
    except ImportError:
        raise ExoUserError("--executor", "ray is not installed (pip install 'exo[ray]')") from None
    started = not ray.is_initialized()
    if started:
        try:
            # A local Ray (address None) is started for this run and shut down after it. Ray's
            # dashboard and log forwarding are noise for a batch of jobs.
            # A local one's workers import exo from where this process does, as spawned local
            # processes do (an editable install's path hook may not reach them from their cwd).
            runtime_env = None if address else {"env_vars": {"PYTHONPATH": _source_path()}}
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env=runtime_env)
        except ConnectionError as e:
            raise ExoUserError("--executor", f"cannot reach the Ray cluster at {address}: {e}") from None
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        refs = [remote.remote(x) for x in items]
        index = {r: i for i, r in enumerate(refs)}
        out: list[Any] = [None] * len(items)
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                out[index[r]] = ray.get(r)
                done += 1
                if progress:
                    progress(done, len(items))
        return out
    finally:
        if started:
            ray.shutdown()
