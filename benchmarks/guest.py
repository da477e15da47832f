"""Booting a small guest written as assembly text, in-process, for measurements."""

from __future__ import annotations

import io
import json
import re
import tempfile
import time
from pathlib import Path


def boot_source(source: str, libos: dict[str, str], *, name: str = "bench", stdin: bytes = b"",
                envs: int = 1, disk=None, structure: str = "exokernel", ram_mib: int = 128,
                max_instructions: int = 2_000_000_000, slice: int | None = None,
                trace: str | None = None) -> tuple[float, dict]:
    """(host seconds of the run, stats as `--stats-json` writes them) for ``source`` linked with ``libos``.

    ``disk`` (a hw BlockDevice) is granted whole to every environment booted.
    A guest that faults or exits non-zero is an error: a benchmark must not time a failure.
    """
    from exo import disk as exodisk
    from exo.api import build, collect_stats
    from exo.kernel import Exokernel
    from exo.loader import spawn
    from hw import Machine
    from libos.link import link, relink_siblings

    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        (d / "main.s").write_text(source)
        table = "".join(f'{k} = "{v}"\n' for k, v in libos.items())
        (d / "app.toml").write_text(f'name = "{name}"\nsources = ["main.s"]\n' + (f"[libos]\n{table}" if table else ""))
        _, image, classes = build(d)
    machine = Machine(ram_mib << 20, stdin=stdin, stdout=io.BytesIO(), disk=disk)
    k = Exokernel(machine, structure=structure, on_fault=lambda r: None,
                  **({"slice_instructions": slice} if slice else {}))
    k.env_create_hooks.append(lambda parent, child: relink_siblings(child.modules))
    if trace:
        from exo.trace import Tracer

        k.acct.tracer = Tracer(k.cpu.instructions, machine.clock.at)
    booted = []
    for _ in range(envs):
        env = spawn(k, image, [])
        if disk is not None:
            exodisk.grant(env, disk)
        if classes:
            link(k.libs, env, classes)
        booted.append(env)
    t0 = time.perf_counter()
    try:
        k.run(max_instructions=max_instructions)
    finally:
        machine.close()  # the disk image's lock goes with it: the next run may open it (hw/blockdev.py)
        if trace:
            k.acct.tracer.write(trace, {e.id: e.name for e in k.envs.values()})
    dt = time.perf_counter() - t0
    bad = [e for e in booted if e.exit_status not in (0, None) or e.fault]
    if k.reports or bad:
        why = k.reports[0].summary if k.reports else f"exit status {bad[0].exit_status}"
        raise RuntimeError(f"{name} under {structure}: {why}")
    return dt, collect_stats(k)


def app_with_args(tmp: Path, name: str, args: list[str]) -> Path:
    """A copy of guest_apps/NAME's manifest, in a new directory under ``tmp``, that passes ``args``.

    (The arguments after `exo boot ... --` go to every app of a run: a server and its
    client booted together need their own.)
    """
    apps = Path(__file__).resolve().parent.parent / "guest_apps"
    src = (apps / name / "app.toml").read_text()
    sources = re.search(r"^sources = \[(.*?)\]", src, re.M).group(1)
    absolute = ", ".join(f'"{apps / name / s.strip().strip(chr(34))}"' for s in sources.split(","))
    text = re.sub(r"^sources = \[.*?\]", f"sources = [{absolute}]", src, flags=re.M)
    text = text.replace("[libos]", f"args = {json.dumps(args)}\n\n[libos]", 1)
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    (d / "app.toml").write_text(text)
    return d


def boot_apps(apps: list[Path], *, net: str | None = None, clock: str = "virtual") -> tuple[float, bytes]:
    """(host seconds of the run, console output) for the guest apps in ``apps`` (app i is 10.0.2.(15+i)).

    Any fault is an error.
    """
    from exo.api import build, spawn_apps
    from exo.kernel import Exokernel
    from hw import Machine
    from hw.nic import open_nic

    nic = open_nic(net) if net else None
    out = io.BytesIO()
    machine = Machine(128 << 20, clock=clock, stdin=b"", stdout=out, nic=nic)
    k = Exokernel(machine, on_fault=lambda r: None)
    spawn_apps(k, [build(a) for a in apps])
    t0 = time.perf_counter()
    try:
        k.run()
    finally:
        machine.close()
    dt = time.perf_counter() - t0
    if k.reports:
        raise RuntimeError(k.reports[0].summary)
    return dt, out.getvalue()
