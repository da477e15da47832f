"""The public embedding API: build guest apps, boot them on one machine, read the results as data.

The CLI (`python -m exo boot`), the tests, the benchmarks and the grader all boot through here
(docs/embedding.md)::

    from exo.api import run

    r = run("guest_apps/echo", stdin=b"hi\\n")
    print(r.stdout, r.exit_status, r.stats["transitions"], r.reports)

`build` turns an app directory (with its app.toml) into a linked, cached image (`App`); `System`
boots one or more apps on one machine with the boot options and runs them to completion or for an
instruction budget, stepwise; `run` is both in one call. Bad input raises `exo.errors.ExoUserError`
(one line: what and why), which the CLI turns into exit status 2.

Like the commands (exo/cli/), this module composes the layers (it links the library OS into an app), so it is
the exo module outside exo/cli/ allowed to import libos (tests/test_layers.py, pyproject's import-linter
contracts). Imports are lazy: ``import exo.api`` loads neither unicorn nor the toolchain.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from exo.errors import ExoUserError
from exo.record import Record

__all__ = ["App", "Result", "System", "build", "collect_stats", "linux", "run", "run_linux", "spawn_apps"]

STRUCTURES = ("exokernel", "monolithic", "xen-pv", "microkernel")  # docs/experiments.md
CLOCKS = ("virtual", "wall")


class App(NamedTuple):
    """A built guest app: its manifest, its linked image and the libOS classes it links.

    A tuple so that ``(manifest, image, libos)`` unpacks as `spawn_apps` always took it."""

    manifest: Any  # exo.build.manifest.Manifest
    image: Any  # exo.build.image.Image
    libos: list  # libOS module classes, in link order

    @property
    def name(self) -> str:
        return self.manifest.name


def resolve_libos(manifest: Any) -> list:
    """The libOS classes an app's manifest links (an ExoUserError naming the manifest if it is wrong)."""
    from libos.link import LinkError, resolve

    try:
        return resolve(manifest.libos)
    except LinkError as e:
        raise ExoUserError(str(manifest.path), str(e)) from None


def build(path: str | Path, *, use_cache: bool = True) -> App:
    """Build the guest app in directory ``path`` (its app.toml): assemble and link its sources with the
    symbols of the libOS modules it links. The image is cached (EXO_CACHE_DIR) unless ``use_cache`` is false."""
    from exo.build.manifest import load_manifest

    return build_manifest(load_manifest(path), use_cache=use_cache)


def build_manifest(manifest: Any, *, use_cache: bool = True) -> App:
    """`build` for an already loaded manifest (exo.build.manifest.load_manifest)."""
    from exo.build.image import build_image
    from libos.registry import hints, symbols

    if getattr(manifest, "personality", "exo") == "linux":
        return _linux_manifest_app(manifest)
    classes = resolve_libos(manifest)
    names = {c.NAME for c in classes}
    image = build_image(manifest, use_cache=use_cache, extra_symbols=symbols(names), hints=hints(names))
    return App(manifest, image, classes)


def _linux_manifest_app(manifest: Any) -> App:
    """An app.toml with personality = "linux": its one source is a static Linux executable, linked with
    the posix personality's modules unless its [libos] says otherwise (docs/posix.md)."""
    from exo.build.linux_app import DEFAULT_ENV, linux_app

    env = tuple(DEFAULT_ENV) + tuple(e.encode() for e in manifest.env)
    linux, image = linux_app(manifest.sources[0], list(manifest.args), env=env)
    image.name = manifest.name
    manifest.libos = {**linux.libos, **manifest.libos}
    return App(manifest, image, resolve_libos(manifest))


def spawn_apps(kernel: Any, apps: list, guest_args: list[str] = (), quotas: dict[str, dict] | None = None,
               app_args: dict[str, list[str]] | None = None) -> list:
    """Start booted apps as `exo boot` does: each `App` (or ``(manifest, image, libOS classes)``) becomes an
    environment with its libOS linked, the whole disk granted (if the machine has one) and, on a
    machine with a NIC, app i's network address (10.0.2.(15+i): exo/net.py). Each is a tenant
    (exo/tenants.py) with its app.toml [quota], overridden by ``quotas`` (by app name); an app
    that sets no frame quota gets an equal part of the free frames. Each app's arguments are its
    app.toml ``args`` and then ``app_args[name]`` if given, else ``guest_args``. Returns the
    environments."""
    from exo.loader import spawn
    from exo.tenants import QuotaError, Tenants
    from libos.link import LinkError, link, relink_siblings

    kernel.env_create_hooks.append(lambda parent, child: relink_siblings(child.modules))
    disk = kernel.machine.disk
    per_app = [{**m.quota, **(quotas or {}).get(m.name, {})} for m, _, _ in apps]
    try:
        share = Tenants.fair_frames(per_app, kernel.frames.free_count)
    except QuotaError as e:
        raise ExoUserError("--quota", str(e)) from None
    envs = []
    for (m, image, classes), quota in zip(apps, per_app):
        extra = (app_args or {}).get(m.name, guest_args)
        env = spawn(kernel, image, [*m.args, *extra], quota={"frames": share, **quota})
        if classes:
            try:
                link(kernel.libs, env, classes)
            except LinkError as e:  # another app on this machine has a module on the same page
                raise ExoUserError(str(m.path), str(e)) from None
        if disk is not None:
            from exo.disk import grant

            grant(env, disk)  # the whole disk; read-only on a :ro image
        if kernel.net is not None:
            from exo.net import app_address

            kernel.net.assign(env, app_address(len(envs)))
        envs.append(env)
    return envs


def collect_stats(kernel: Any) -> dict:
    """Transition counts, hypercalls, per-environment outcomes and tenant use: what `--stats-json`
    writes (docs/stats.md)."""
    acct = kernel.acct
    by_env = acct.by_env
    kinds = acct.transitions
    envs = []
    for e in kernel.envs.values():
        envs.append({
            "id": e.id, "name": e.name, "parent": e.parent,
            "exit": e.exit_summary() if not e.alive else None,
            "status": e.outcome,
            "fault": e.fault,
            "instructions": e.instructions if kernel.machine.clock.mode == "virtual" else None,
            "transitions": {k: by_env.get(e.id, {}).get(k, 0) for k in kinds},
        })  # fmt: skip
    virtual = kernel.machine.clock.mode == "virtual"
    return {
        "clock": kernel.machine.clock.mode,
        "transitions": dict(kinds),
        "hypercalls": dict(sorted(acct.hypercalls.items())),
        # Linux system calls reflected to a libOS (docs/posix.md), by name; only when there were any
        **({"syscalls": dict(sorted(acct.syscalls.items()))} if acct.reflected else {}),
        "guest_instructions": kernel.cpu.retired_total if virtual else None,
        "envs": envs,
        "tenants": [t.usage() for t in kernel.tenants],
        **({"net": {"exokernel": dict(kernel.net.stats), "nic": dict(kernel.net.nic.stats)}}
           if kernel.net is not None else {}),
    }


def open_disk(spec: str, fail_after: int | None = None, fail_at: int | None = None) -> Any:
    """``IMAGE`` or ``IMAGE:ro`` -> a hw BlockDevice (an ExoUserError naming the file if it is unusable)."""
    from hw import MachineConfigError
    from hw.blockdev import BlockDevice

    path, readonly = spec, False
    if spec.endswith(":ro"):
        path, readonly = spec[:-3], True
    elif spec.endswith(":rw"):
        path = spec[:-3]
    if not path:
        raise ExoUserError("--disk", f"{spec!r} names no image file")
    if fail_after is not None and fail_after < 0:
        raise ExoUserError("--disk-fail-after", f"must be >= 0, got {fail_after}")
    if fail_at is not None and fail_at < 0:
        raise ExoUserError("--disk-fail-at", f"must be >= 0, got {fail_at}")
    try:
        return BlockDevice(path, readonly=readonly, fail_after=fail_after, fail_at=fail_at)
    except MachineConfigError as e:
        raise ExoUserError("--disk", str(e)) from None


def open_nic(spec: str, faults: str | None = None, pcap: str | None = None) -> Any:
    """``--net SPEC`` -> a hw Nic (an ExoUserError naming the option if it is unusable)."""
    from hw.nic import open_nic as hw_open_nic

    try:
        return hw_open_nic(spec, faults=faults, pcap=pcap)
    except ValueError as e:
        opt = "--net-faults" if faults and "fault" in str(e).lower() else "--net"
        raise ExoUserError(opt, str(e)) from None
    except OSError as e:
        raise ExoUserError("--net", f"{spec}: {e.strerror or e}") from None


def check_forwards(nic: Any, net: Any) -> None:
    """A hostfwd to an address no booted app has would leave host clients hanging: refuse it."""
    have = {".".join(map(str, a.ip)): i for i, a in enumerate(net.apps.values())}
    for f in getattr(nic.backend, "forwards", ()):
        if f.guest_addr not in have:
            apps = ", ".join(f"app {i} is {ip}" for ip, i in have.items())
            raise ExoUserError("--net", f"hostfwd to {f.guest_addr}:{f.guest_port}, which no booted app has ({apps})")


class Result(Record):
    """A finished (or budget-limited) run, as data."""
    _FIELDS = ('stdout', 'exit_status', 'stats', 'reports', 'stuck', 'watchdog_fired', 'stderr')

    def __init__(self, stdout: bytes, exit_status: int | None, stats: dict, reports: list | None = None,
                 stuck: dict[str, str] | None = None, watchdog_fired: bool = False, stderr: bytes = b"") -> None:
        self.stdout = stdout  # the guests' console output (b"" when it went to a file descriptor)
        self.exit_status = exit_status  # the first app's exit status (None: it did not exit)
        self.stats = stats  # collect_stats: what `--stats-json` writes (docs/stats.md)
        self.reports = [] if reports is None else reports  # exo.report.FaultReport per guest stopped by a fault
        self.stuck = {} if stuck is None else stuck  # "ID (NAME)" -> why it has not finished
        self.watchdog_fired = watchdog_fired  # the instruction budget ran out before the guests finished
        self.stderr = stderr  # the guests' console error stream (console_error; b"" when it went elsewhere)

    @property
    def ok(self) -> bool:
        """Every app finished, none faulted, and the first exited with status 0."""
        return not self.reports and not self.stuck and not self.watchdog_fired and not self.exit_status


class System:
    """One machine with one or more guest apps booted on it (the exokernel plus each app's libOS).

    ``apps``: app directories or `App` objects from `build`. Options as `exo boot` takes them:
    ``clock`` ("virtual": deterministic; "wall"), ``structure``, ``ram_mib``, ``slice`` (instructions
    under the virtual clock, microseconds under the wall clock), ``stdin`` (bytes, or a file
    descriptor), ``stdout`` (None: captured, read it as `stdout`; or a file descriptor / binary file),
    ``stderr`` (the console's error stream, the same way: None captures it as `stderr`),
    ``args`` (guest arguments, for every app), ``app_args`` ({app name: its arguments}, instead of
    ``args`` for that app), ``quotas`` ({app name: {"frames": N, ...}}),
    ``disk`` (an image path, ``PATH:ro``, or a hw BlockDevice), ``disk_fail_after``, ``disk_fail_at``, ``net``
    (``user[,hostfwd=...]``, ``switch`` or ``tap:IFNAME``), ``net_faults``, ``pcap``, ``trace`` (a
    .json or .jsonl path, written by `close`), ``trace_capacity``, ``use_cache``, ``on_fault``
    (called with each FaultReport; default: keep it quiet, read `reports`).

    Run it with `run` (to completion, or for ``max_instructions`` more; call again to go on), then
    `close` it (or use ``with System(...) as s:``).
    """

    def __init__(self, apps: list, *, clock: str = "virtual", structure: str = "exokernel", ram_mib: int = 256,
                 slice: int | None = None, stdin: bytes | int = b"", stdout: int | BinaryIO | None = None,
                 stderr: int | BinaryIO | None = None, args: list[str] = (), quotas: dict[str, dict] | None = None, disk: Any = None,
                 disk_fail_after: int | None = None, disk_fail_at: int | None = None, net: str | None = None,
                 net_faults: str | None = None,
                 pcap: str | None = None, trace: str | None = None, trace_capacity: int = 1_000_000,
                 use_cache: bool = True, on_fault: Any = None, raw_terminal: bool = False,
                 app_args: dict[str, list[str]] | None = None) -> None:
        if isinstance(apps, (str, Path, App)):
            apps = [apps]
        if not apps:
            raise ExoUserError("apps", "no guest app to boot")
        if clock not in CLOCKS:
            raise ExoUserError("clock", f"{clock!r} is not one of {', '.join(CLOCKS)}")
        if structure not in STRUCTURES:
            raise ExoUserError("structure", f"{structure!r} is not one of {', '.join(STRUCTURES)}")
        limit = host_ram_mib()
        if ram_mib <= 0 or ram_mib > limit:
            raise ExoUserError("--ram", f"{ram_mib} MiB is not between 1 and {limit} (this host's RAM)")
        if slice is not None and slice <= 0:
            raise ExoUserError("--slice", f"must be positive, got {slice}")
        if trace and not str(trace).endswith((".json", ".jsonl")):
            raise ExoUserError(str(trace), "trace file must end in .json (Chrome/Perfetto) or .jsonl (JSON lines)")
        if trace_capacity <= 0:
            raise ExoUserError("--trace-capacity", f"must be positive, got {trace_capacity}")
        if net is not None and not net.strip():
            raise ExoUserError("--net", "empty: give tap:IFNAME, user[,hostfwd=...] or switch")
        if (pcap or net_faults) and not net:
            raise ExoUserError("--pcap" if pcap else "--net-faults", "needs --net")
        if disk is None and disk_fail_after is not None:
            raise ExoUserError("--disk-fail-after", "needs --disk")
        if disk is None and disk_fail_at is not None:
            raise ExoUserError("--disk-fail-at", "needs --disk")
        self.apps = [a if isinstance(a, App) else build(a, use_cache=use_cache) for a in apps]

        from exo.kernel import DEFAULT_SLICE, Exokernel
        from hw import Machine

        if isinstance(disk, (str, Path)):
            disk = open_disk(str(disk), disk_fail_after, disk_fail_at)
        self.nic = open_nic(net, net_faults, pcap) if net else None
        self._out = io.BytesIO() if stdout is None else None
        self._err = io.BytesIO() if stderr is None else None
        self.machine = Machine(ram_mib << 20, clock=clock, stdin=stdin, stdout=self._out or stdout,
                               stderr=self._err or stderr,
                               slice_seconds=(slice or 10_000) / 1e6, disk=disk, nic=self.nic)
        if raw_terminal:  # the guest's libOS is the tty driver (libos/posix/tty.py); close() restores it
            self.machine.console.enter_raw()
        self.kernel = Exokernel(self.machine, slice_instructions=slice or DEFAULT_SLICE, structure=structure,
                                on_fault=on_fault or (lambda report: None))
        self.trace_path = trace
        self.tracer = None
        if trace:
            from exo.trace import Tracer

            self.tracer = Tracer(self.kernel.cpu.instructions, self.machine.clock.at, trace_capacity)
            self.kernel.acct.tracer = self.tracer
        try:
            self.envs = spawn_apps(self.kernel, self.apps, list(args), quotas, app_args)
            if self.kernel.net is not None:
                check_forwards(self.nic, self.kernel.net)
        except BaseException:
            self.machine.close()
            raise
        self.closed = False

    # -- running
    def run(self, max_instructions: int | None = None) -> Result:
        """Run the guests until none is runnable, or for at most ``max_instructions`` more guest
        instructions (the virtual clock counts them: a budget needs ``clock="virtual"``)."""
        if self.closed:
            raise ExoUserError("System", "closed: its machine's devices are gone; boot a new System")
        if max_instructions is not None:
            if max_instructions <= 0:
                raise ExoUserError("--max-instructions", f"must be positive, got {max_instructions}")
            if self.machine.clock.mode == "wall":
                raise ExoUserError("--max-instructions", "counts guest instructions: it needs --clock virtual")
        self.kernel.run(max_instructions=max_instructions)
        return self.result()

    def result(self) -> Result:
        """Where the run stands, as data (a budget-limited run can go on with `run`)."""
        from exo.report import watchdog_reason

        k = self.kernel
        # As `exo boot` reports them: each environment left alive (not a server), and why.
        stuck = {f"{e.id} ({e.name})": e.fault or watchdog_reason(e)
                 for e in k.envs.values() if e.alive and not e.is_server}
        return Result(self.stdout, self.envs[0].exit_status, collect_stats(k), list(k.reports), stuck,
                      bool(k.watchdog_fired), self.stderr)

    @property
    def stdout(self) -> bytes:
        """The guests' console output so far (captured only when no ``stdout`` was given)."""
        return self._out.getvalue() if self._out is not None else b""

    @property
    def stderr(self) -> bytes:
        """The guests' console error stream so far (captured only when no ``stderr`` was given)."""
        return self._err.getvalue() if self._err is not None else b""

    @property
    def reports(self) -> list:
        return self.kernel.reports

    def stats(self) -> dict:
        return collect_stats(self.kernel)

    def env(self, name: str) -> Any:
        """The first booted environment of app ``name``."""
        for e in self.envs:
            if e.name == name:
                return e
        raise KeyError(name)

    def locate(self, env: Any) -> tuple[int, str | None, str]:
        """Where a live environment is: its RIP (in the vCPU if its state is loaded there, else in
        its saved context), that address's symbol (Exokernel.symbol) and the instruction there.
        What a budget-limited run reports for a guest that never finished (the grader's timeouts)."""
        from exo.report import disassemble_one
        from hw.regs import Reg

        k = self.kernel
        rip = k.cpu.regs.read(Reg.RIP) if env is k._live else k.cpu.context_read(env.ctx, Reg.RIP)
        text, _ = disassemble_one(env.space.fetch_code(rip), rip)
        return rip, k.symbol(env, rip), text

    # -- ending
    def close(self) -> None:
        """Close the machine's devices (no implicit disk flush: docs/disk.md) and write the trace."""
        if self.closed:
            return
        self.closed = True
        self.machine.close()
        if self.tracer is not None:
            self.tracer.write(self.trace_path, {e.id: e.name for e in self.kernel.envs.values()})

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def host_ram_mib() -> int:
    """The host's physical RAM in MiB: the most guest RAM a machine may have. Guest RAM is host
    memory mapped on demand (a frame costs the host only once it is touched), so more than 4 GiB
    works where the host has it; more than the host has would fail on touch, not at boot."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    except (ValueError, OSError, AttributeError):  # a platform without these names
        return 4096


def run(*apps: str | Path | App, max_instructions: int | None = None, **options: Any) -> Result:
    """Boot ``apps`` on one machine (`System` options), run them to completion (or for
    ``max_instructions``), close the machine and return the `Result`."""
    with System(list(apps), **options) as s:
        return s.run(max_instructions)


def linux(program: str | Path, *args: str, seed: int = 0, env: tuple[str, ...] = ()) -> App:
    """A static x86-64 Linux ``program`` run with ``args`` (after argv[0]) as an `App`: what `exo run` boots
    (docs/posix.md). ``env``: "NAME=value" strings after exo's fixed environment."""
    from exo.build.linux_app import DEFAULT_ENV, linux_app

    manifest, image = linux_app(program, list(args), seed=seed,
                                env=tuple(DEFAULT_ENV) + tuple(e.encode() for e in env))
    return App(manifest, image, resolve_libos(manifest))


def run_linux(program: str | Path, *args: str, max_instructions: int | None = None, seed: int = 0,
              env: tuple[str, ...] = (), **options: Any) -> Result:
    """`run` for one static Linux program: ``run_linux("/bin/busybox", "echo", "hi").stdout == b"hi\\n"``."""
    return run(linux(program, *args, seed=seed, env=env), max_instructions=max_instructions, **options)
