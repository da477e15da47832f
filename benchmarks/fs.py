"""``python -m exo bench fs``: sequential file throughput from a guest, beside debugfs.

A 16 MiB file is written by a guest (64 KiB `write`s, then `fsync`) on a fresh
64 MiB ext2 image made by mke2fs (4 KiB blocks), then read back (64 KiB
`read`s). Reported: MB/s (median and spread over ``--repeat`` runs), disk_io
hypercalls per MiB with the library's batching (up to 112 sectors, 14 blocks,
per hypercall) and without it (one request per hypercall, the ``ext2-unbatched``
implementation), and the ratio to ``debugfs -R "dump"`` of the same file on
the host, measured in the same run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.guest import boot_source
from benchmarks.harness import Result, Stats, result, suite_main

MIB = 1 << 20
CHUNK = 0x10000

WRITE = """section .text
_start:
    lea rdi, [rip + path]
    mov rsi, 0x241
    mov rdx, 0x1a4
    call LIB_FS_OPEN
    mov r12, rax
    mov r13, {chunks}
again:
    mov rdi, r12
    lea rsi, [rip + buf]
    mov rdx, 0x10000
    call LIB_FS_WRITE
    dec r13
    jnz again
    mov rdi, r12
    call LIB_FS_FSYNC
    xor edi, edi
    call LIB_CORE_EXIT
section .rodata
path: db "/big", 0
section .data
buf: times 0x10000 db 0x5a
"""

READ = """section .text
_start:
    lea rdi, [rip + path]
    xor esi, esi
    xor edx, edx
    call LIB_FS_OPEN
    mov r12, rax
again:
    mov rdi, r12
    lea rsi, [rip + buf]
    mov rdx, 0x10000
    call LIB_FS_READ
    test rax, rax
    jg again
    xor edi, edi
    call LIB_CORE_EXIT
section .rodata
path: db "/big", 0
section .bss
buf: resb 0x10000
"""


def _run(source: str, image: Path, impl: str) -> tuple[float, dict]:
    from hw.blockdev import BlockDevice

    return boot_source(source, {"fs": impl}, name="fsbench", disk=BlockDevice(str(image)),
                       max_instructions=10_000_000_000)


def _fresh_image(d: Path) -> Path:
    img = d / "fs.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext2", "-b", "4096", "-F", str(img), "64M"], check=True)
    return img


def run(repeat: int = 3, quick: bool = False, log: Callable[[str], None] | None = None) -> list[Result]:
    log = log or (lambda s: None)
    if not shutil.which("mke2fs") or not shutil.which("debugfs"):
        raise SystemExit("exo: error: bench fs needs e2fsprogs (mke2fs, debugfs)")
    size_mib = 4 if quick else 16
    repeat = min(repeat, 2) if quick else repeat
    chunks = size_mib * MIB // CHUNK
    out: list[Result] = []
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        per_mib: dict[str, float] = {}
        for impl in ("ext2", "ext2-unbatched"):
            w, r = [], []
            for _ in range(repeat):
                img = _fresh_image(d)
                log(f"{impl}: write {size_mib} MiB")
                dt, stats = _run(WRITE.replace("{chunks}", str(chunks)), img, impl)
                w.append(size_mib / dt)
                per_mib[f"{impl} write"] = stats["hypercalls"].get("disk_io", 0) / size_mib
                log(f"{impl}: read {size_mib} MiB")
                dt, stats = _run(READ, img, impl)
                r.append(size_mib / dt)
                per_mib[f"{impl} read"] = stats["hypercalls"].get("disk_io", 0) / size_mib
            out.append(result(f"guest write, {size_mib} MiB + fsync ({impl})", Stats.of(w, 1), unit="MB/s",
                              note=f"{per_mib[f'{impl} write']:.0f} disk_io hypercalls per MiB"))
            out.append(result(f"guest read, {size_mib} MiB ({impl})", Stats.of(r, 1), unit="MB/s",
                              note=f"{per_mib[f'{impl} read']:.0f} disk_io hypercalls per MiB"))
        log("debugfs dump of the same file")
        img = _fresh_image(d)
        _run(WRITE.replace("{chunks}", str(chunks)), img, "ext2")
        dumps = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(["debugfs", "-R", f"dump /big {d / 'dump'}", str(img)], check=True, capture_output=True)
            dumps.append(size_mib / (time.perf_counter() - t0))
        base = result(f"debugfs dump, {size_mib} MiB (host)", Stats.of(dumps, 1), unit="MB/s")
        out = [base] + [
            result(r.name, r.stats, unit="MB/s", baseline=base, note=r.note) if "read" in r.name else r for r in out
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, "python -m exo bench fs", __doc__, run, "file system (fs = ext2)", repeat=3)


if __name__ == "__main__":
    raise SystemExit(main())
