"""Shared test helpers: build guest apps from assembly text and boot them in-process."""

from __future__ import annotations

import io
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tests that need an outside tool skip on a user's machine that lacks it, but CI
# sets EXO_REQUIRE_TOOLS=1 so that such a skip fails the run instead.
REQUIRE_TOOLS = os.environ.get("EXO_REQUIRE_TOOLS") == "1"


def need_tool(available: bool, why: str) -> None:
    if not available:
        if REQUIRE_TOOLS:
            pytest.fail(f"EXO_REQUIRE_TOOLS=1 but {why}")
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EXO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "exo-cache"))


def make_app(root: Path, name: str, source: str, **manifest: object) -> Path:
    """Write ``root/name/{app.toml,main.s}`` and return the app directory."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "main.s").write_text(textwrap.dedent(source))
    lines = [f'name = "{name}"', 'sources = ["main.s"]']
    libos = manifest.pop("libos", None)
    for k, v in manifest.items():
        lines.append(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"')
    if libos:
        lines.append("[libos]")
        lines += [f'{k} = "{v}"' for k, v in libos.items()]
    (d / "app.toml").write_text("\n".join(lines) + "\n")
    return d


@dataclass
class Booted:
    stdout: bytes
    kernel: object
    envs: list

    @property
    def reports(self):
        return self.kernel.reports

    def env(self, name: str):
        return next(e for e in self.envs if e.name == name)


def boot(*apps: Path, stdin: bytes = b"", clock: str = "virtual", slice_instructions: int | None = None,
         max_instructions: int | None = 50_000_000, ram_mib: int = 32, net: str | None = None,
         net_faults: str | None = None, pcap: str | None = None, structure: str = "exokernel") -> Booted:
    """Boot ``apps`` in-process as `exo boot` does (libOS modules linked per manifest; app i is 10.0.2.(15+i))."""
    from exo.api import build, spawn_apps
    from exo.kernel import DEFAULT_SLICE, Exokernel
    from hw import Machine

    out = io.BytesIO()
    nic = None
    if net is not None:
        from hw.nic import open_nic

        nic = open_nic(net, faults=net_faults, pcap=pcap)
    machine = Machine(ram_mib << 20, clock=clock, stdin=stdin, stdout=out, slice_seconds=0.005, nic=nic)
    kernel = Exokernel(machine, slice_instructions=slice_instructions or DEFAULT_SLICE, on_fault=lambda r: None,
                       structure=structure)
    envs = spawn_apps(kernel, [build(a) for a in apps])
    try:
        kernel.run(max_instructions=max_instructions)
    finally:
        if nic is not None:
            nic.close()
    return Booted(out.getvalue(), kernel, envs)


@pytest.fixture
def app(tmp_path):
    def _make(name: str, source: str, **manifest: object) -> Path:
        return make_app(tmp_path, name, source, **manifest)

    return _make


# A fork bomb of raw env_create calls: each child blocks; the parent exits with the
# errno (positive) of the first env_create that fails.
ENV_BOMB = """
section .text
_start:
    call HC_ENV_CREATE
    test rax, rax
    js full
    jz child
    jmp _start
child:
    mov rdi, SCHED_BLOCK
    xor esi, esi
    call HC_SCHED_OP
full:
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""


# Yield the CPU n times (r12 counts; label `again`), so that other environments run in between.
YIELDS = """
    mov r12, {n}
again:
    mov rdi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
    dec r12
    jnz again
"""

# A well-behaved environment that must finish while a hostile one is stopped:
# it yields a few times (so the other runs in between) and prints "ok\n".
WITNESS = """
section .text
_start:
""" + YIELDS.format(n=5) + """
    lea rdi, [rip + msg]
    mov rsi, 3
    call HC_CONSOLE_WRITE
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .rodata
msg: db "ok", 10
"""
