"""Recording and replaying one booted `System`: the header (what must match) and the installation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exo.errors import ExoUserError
from exo.replay.devices import JournaledBackend, JournaledConsole, Tape, journal_advance
from exo.replay.journal import Journal

# The boot options a run depends on, as `exo boot` spells them (for the refusal's message).
# Not here: where stats, traces and captures go, --no-cache, --gdb (none changes what the guests do).
OPTION_FLAGS = {"apps": "the apps", "args": "the guest arguments (after --)", "clock": "--clock",
                "structure": "--structure", "slice": "--slice", "ram": "--ram", "quota": "--quota",
                "max_instructions": "--max-instructions", "disk": "--disk", "disk_fail_after": "--disk-fail-after",
                "net": "--net", "net_faults": "--net-faults"}


def image_hash(image: Any) -> str:
    """SHA-256 of what a built image loads: entry, segments (placement, permissions, bytes), symbols."""
    h = hashlib.sha256()
    h.update(f"{image.name}\0{image.entry}\0".encode())
    for s in image.segments:
        h.update(f"{s.name}\0{s.va}\0{s.memsz}\0{s.perm}\0{len(s.data)}\0".encode())
        h.update(s.data)
    for name, value in sorted(image.symbols.items()):
        h.update(f"{name}={value}\0".encode())
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_header(apps: list, options: dict, disk_path: str | None) -> dict:
    """What a replay must find as it was: the exo version, each app's image, the options, the disk."""
    from exo import __version__

    return {"exo": __version__,
            "apps": [{"name": a.name, "sha256": image_hash(a.image)} for a in apps],
            "options": {k: options.get(k) for k in OPTION_FLAGS},
            "disk": None if disk_path is None else {"sha256": file_hash(disk_path)}}


def check_header(recorded: dict, now: dict) -> None:
    """Refuse a replay whose exo, images, options or disk differ from the recording's (one line)."""
    if recorded.get("exo") != now["exo"]:
        raise ExoUserError("--replay", f"recorded by exo {recorded.get('exo')}, this is exo {now['exo']}")
    rec_opts = recorded.get("options") or {}
    for key, flag in OPTION_FLAGS.items():
        if rec_opts.get(key) != now["options"][key]:
            raise ExoUserError("--replay", f"the recording was made with {flag} {_show(rec_opts.get(key))}; "
                                           f"this run has {_show(now['options'][key])}")
    for rec, cur in zip(recorded.get("apps") or [], now["apps"]):
        if rec.get("sha256") != cur["sha256"]:
            raise ExoUserError("--replay", f"app '{cur['name']}' is not the image that was recorded "
                                           "(rebuilt from changed sources?)")
    rec_disk = recorded.get("disk")
    if (rec_disk is None) != (now["disk"] is None):
        raise ExoUserError("--replay", "the recording was made " + ("without" if rec_disk is None else "with")
                           + " a --disk")
    if rec_disk is not None and rec_disk.get("sha256") != now["disk"]["sha256"]:
        raise ExoUserError("--replay", "the disk changed since the recording: replay needs it as it was; "
                                       "keep a copy of the image before recording (docs/debugging.md)")


def _show(value: object) -> str:
    if value is None:
        return "(not given)"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "(none)"
    return str(value)


def _stamp_of(system: Any) -> Callable[[], tuple[int, int]]:
    from hw.clock import NS_PER_INSTRUCTION

    cpu, clock = system.kernel.cpu, system.machine.clock

    def stamp() -> tuple[int, int]:
        instr = cpu.instructions()
        return instr, clock.now_ns() - instr * NS_PER_INSTRUCTION  # the idle part of the virtual clock

    return stamp


def install(system: Any, journal: Journal, *, replay: bool = False, go_live: bool = False,
            mute_bytes: int = 0) -> Tape:
    """Put the tape between ``system``'s kernel and its console and network backend.

    Recording needs the virtual clock: under the wall clock every time the guest reads is the host's,
    and nothing short of recording each read of it would replay (refused, with a clear line).
    """
    machine = system.machine
    if machine.clock.mode != "virtual":
        raise ExoUserError("--replay" if replay else "--record",
                           "needs --clock virtual: under the wall clock guest time is the host's and a run "
                           "cannot be replayed")
    tape = Tape(journal, _stamp_of(system), replay=replay, go_live=go_live, instructions=system.kernel.cpu.instructions)
    machine.console = JournaledConsole(machine.console, tape, mute_bytes)
    nic = machine.nic
    if nic is not None:
        real = nic.backend
        nic.backend = JournaledBackend(real, tape)
        if nic.external:
            journal_advance(machine.clock, tape)
    return tape
