"""``python -m exo bench fs``: sequential file throughput from a guest, beside debugfs.

A 16 MiB file is written by a guest (64 KiB `write`s, then `fsync`) on a fresh
64 MiB ext2 image made by mke2fs (4 KiB blocks), then read back (64 KiB
`read`s). Reported: MB/s (median and spread over ``--repeat`` runs), disk_io
hypercalls per MiB with the library's batching (up to 112 sectors, 14 blocks,
per hypercall) and without it (one request per hypercall, the ``ext2-unbatched``
implementation), and the ratio to ``debugfs -R "dump"`` of the same file on
the host, measured in the same run.

Directories at scale (issue 16): ``ls`` (guest_apps/ls) of a directory of 3,000 files against one
of 30, on images made by ``mke2fs -d`` (4 KiB blocks): the whole run's time and its ratio, and
the time per listed entry; readdir continues a listing from a cursor (libos/fs ``_listing``)
instead of reading the directory again for every entry. And ``exo mkfs --from`` of a tree of
3,000 files (30 directories, 94 MB of random data, seeded) into a 256 MiB image, against
``mke2fs -d`` of the same tree in the same run.
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


def _ls_image(d: Path, files: int) -> Path:
    src = d / f"tree{files}"
    src.mkdir()
    for i in range(files):
        (src / f"file{i:05d}.txt").write_bytes(b"x" * (i % 7))
    img = d / f"ls{files}.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext2", "-b", "4096", "-d", str(src), "-F", str(img), "32M"], check=True,
                   capture_output=True)
    return img


def bench_ls(d: Path, repeat: int, log: Callable[[str], None]) -> list[Result]:
    source = (Path(__file__).resolve().parent.parent / "guest_apps" / "ls" / "ls.s").read_text()
    out = []
    times: dict[int, list[float]] = {}
    for files in (30, 3000):
        img = _ls_image(d, files)
        log(f"ls of {files} files")
        times[files] = [_run_ls(source, img)[0] * 1e6 for _ in range(repeat)]
    small = result("ls of 30 files (guest_apps/ls), whole run", Stats.of(times[30], 1))
    big = result("ls of 3,000 files, whole run", Stats.of(times[3000], 1), baseline=small,
                 note="100 times the entries; the run includes boot, mount and exit")
    per = [t / 3000 for t in times[3000]]
    per_small = result("ls of 30 files, per entry", Stats.of([t / 30 for t in times[30]], 1))
    out += [small, big, per_small,
            result("ls of 3,000 files, per entry", Stats.of(per, 1), baseline=per_small,
                   note="linear listing: about the same per entry (the fixed start-up spreads thinner)")]
    return out


def bench_mkfs(d: Path, repeat: int, log: Callable[[str], None]) -> list[Result]:
    import random

    from libos.fs.mkfs import mkfs

    tree = d / "mkfs-tree"
    rng = random.Random(1)
    for i in range(30):
        (tree / f"d{i}").mkdir(parents=True)
        for j in range(100):
            (tree / f"d{i}" / f"f{j}").write_bytes(rng.randbytes(rng.randint(0, 60000)))
    mine, theirs = [], []
    for _ in range(repeat):
        log("exo mkfs --from: 3,000 files into 256 MiB")
        t0 = time.perf_counter()
        mkfs(d / "exo.img", 256 << 20, from_dir=tree)
        mine.append(time.perf_counter() - t0)
        (d / "exo.img").unlink()
        t0 = time.perf_counter()
        subprocess.run(["mke2fs", "-q", "-t", "ext2", "-d", str(tree), "-F", str(d / "m.img"), "256M"], check=True,
                       capture_output=True)
        theirs.append(time.perf_counter() - t0)
        (d / "m.img").unlink()
    base = result("mke2fs -d, 3,000 files / 94 MB into 256 MiB (host)", Stats.of(theirs, 1), unit="s")
    return [base, result("exo mkfs --from, the same tree", Stats.of(mine, 1), unit="s", baseline=base,
                         note="pure Python through the ext2 library; blocks of zeros stay holes")]


def bench_htree(d: Path, repeat: int, log: Callable[[str], None]) -> list[Result]:
    """Names in one large directory through the ext2 library (the fs module's code, on the host):
    create 3,000 files in an empty directory, then look each up, on an image with dir_index
    (the directory is indexed once it passes a block: htree.py) and on one without (linear)."""
    from libos.fs.blockio import FileBlockIO
    from libos.fs.ext2 import Ext2

    names = [f"file-{i:05d}.txt" for i in range(3000)]
    times: dict[str, list[float]] = {"linear": [], "htree": []}
    for _ in range(repeat):
        for kind, features in (("linear", "^dir_index"), ("htree", "dir_index")):
            img = d / f"{kind}.img"
            subprocess.run(["mke2fs", "-q", "-t", "ext2", "-b", "4096", "-O", features, "-F", str(img), "32M"],
                           check=True)
            log(f"3,000 names in one directory ({kind})")
            fs = Ext2.open(FileBlockIO(str(img)))
            fs.mkdir("/d", 0o755)
            t0 = time.perf_counter()
            for n in names:
                fs.create(f"/d/{n}")
            for n in names:
                fs.lookup(f"/d/{n}")
            times[kind].append((time.perf_counter() - t0) * 1e6 / (2 * len(names)))
            fs.close()
            img.unlink()
    base = result("create + lookup in a directory of 3,000 names, linear (no dir_index), per call",
                  Stats.of(times["linear"], 1))
    return [base, result("the same with the htree index, per call", Stats.of(times["htree"], 1), baseline=base,
                         note="a lookup reads one leaf; the linear directory is scanned from its start")]


def bench_journal(d: Path, repeat: int, log: Callable[[str], None]) -> list[Result]:
    """What the journal costs: guest_apps/fsstress (metadata-heavy: 48 files created, written,
    renamed, removed, verified, one sync at the end) on a fresh 8 MiB image, ext2 against ext3."""
    from exo.api import run as run_app
    from hw.blockdev import BlockDevice

    app = Path(__file__).resolve().parent.parent / "guest_apps" / "fsstress"
    times: dict[str, list[float]] = {}
    io: dict[str, tuple[int, int]] = {}
    for kind in ("ext2", "ext3"):
        times[kind] = []
        for _ in range(repeat):
            img = d / f"{kind}.img"
            subprocess.run(["mke2fs", "-q", "-t", kind, "-b", "1024", "-F", str(img), "8M"], check=True)
            dev = BlockDevice(str(img))
            log(f"fsstress on {kind}")
            t0 = time.perf_counter()
            if run_app(app, disk=dev).exit_status != 0:
                raise SystemExit(f"exo: error: fsstress failed on {kind}")
            times[kind].append((time.perf_counter() - t0) * 1e6)
            io[kind] = (dev.writes, dev.flushes)
            img.unlink()
    base = result("fsstress on ext2 (no journal), whole run", Stats.of(times["ext2"], 1),
                  note=f"{io['ext2'][0]} block writes, {io['ext2'][1]} flushes")
    return [base, result("fsstress on ext3 (the journal, ordered mode)", Stats.of(times["ext3"], 1), baseline=base,
                         note=f"{io['ext3'][0]} block writes, {io['ext3'][1]} flushes")]


def _run_ls(source: str, image: Path) -> tuple[float, dict]:
    from hw.blockdev import BlockDevice

    return boot_source(source, {"console": "buffered", "fs": "ext2"}, name="ls", disk=BlockDevice(str(image)),
                       max_instructions=10_000_000_000)


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
        out += bench_ls(d, repeat, log)
        out += bench_htree(d, repeat, log)
        out += bench_mkfs(d, repeat, log)
        out += bench_journal(d, repeat, log)
    return out


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, "python -m exo bench fs", __doc__, run, "file system (fs = ext2)", repeat=3)


if __name__ == "__main__":
    raise SystemExit(main())
