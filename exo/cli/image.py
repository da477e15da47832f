"""``exo image APP``: what a guest app's image holds and calls (a static look at its code)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("app", metavar="APP")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--elf", metavar="OUT", help="also write the image as an ELF file with every label as a symbol and DWARF "
                   "line numbers, for gdb/objdump (an ELF guest's own file is copied); docs/debugging.md")


def run(args: argparse.Namespace) -> int:
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    from exo.abi import HYPERCALL_PAGE, HYPERCALL_STUB_SIZE, LIBOS_END, LIBOS_PAGE, PERM_X
    from exo.api import build_manifest
    from exo.build.manifest import load_manifest
    from exo.hypercalls import BY_NR
    from exo.libcall import BASE_HYPERCALLS
    from libos.registry import symbols

    manifest, image, classes = build_manifest(load_manifest(args.app))
    if args.elf:
        _write_elf(args.elf, manifest, image, classes)
    by_addr = {v: k for k, v in symbols().items()}
    hypercalls, libcalls, raw = set(), set(), 0
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    for seg in image.segments:
        if not seg.perm & PERM_X:
            continue
        last_eax = None
        for insn in cs.disasm(seg.data, seg.va):
            if insn.mnemonic == "mov" and insn.op_str.startswith(("eax, ", "rax, ")):
                try:
                    last_eax = int(insn.op_str.split(", ")[1], 0)
                except ValueError:
                    last_eax = None
            elif insn.mnemonic == "syscall":
                h = BY_NR.get(last_eax) if last_eax is not None else None
                if h:
                    hypercalls.add(h.name)
                else:
                    raw += 1
            elif insn.mnemonic in ("call", "jmp") and insn.op_str.startswith("0x"):
                target = int(insn.op_str, 16)
                if HYPERCALL_PAGE <= target < HYPERCALL_PAGE + 4096:
                    h = BY_NR.get((target - HYPERCALL_PAGE) // HYPERCALL_STUB_SIZE)
                    hypercalls.add(h.name if h else f"#{(target - HYPERCALL_PAGE) // HYPERCALL_STUB_SIZE}")
                elif LIBOS_PAGE <= target < LIBOS_END:
                    libcalls.add(by_addr.get(target, f"{target:#x}").removeprefix("LIB_").lower())
    allowed = None
    if classes:
        allowed = set(BASE_HYPERCALLS)
        for c in classes:
            allowed |= c.HYPERCALLS
    report = {
        "name": image.name, "entry": image.entry, "entry_symbol": image.symbolize(image.entry),
        "entry_line": image.line_of(image.entry) if image.line_of else None, "size": image.size,
        "segments": [{"name": s.name, "va": s.va, "size": s.memsz,
                      "perm": ("r" if s.perm & 1 else "-") + ("w" if s.perm & 2 else "-")
                      + ("x" if s.perm & 8 else "-")} for s in image.segments],
        "libos": {c.NAME: c.IMPL for c in classes},
        "library_calls": sorted(libcalls),
        "hypercalls_called": sorted(hypercalls),
        "unresolved_syscalls": raw,
        "hypercalls_allowed": sorted(allowed) if allowed is not None else "all (no libOS module linked)",
        "denied_but_called": sorted(hypercalls - allowed) if allowed is not None else [],
        "instances": instance_cost(image, classes),
    }  # fmt: skip
    if args.json:
        import json

        print(json.dumps(report, indent=2))
        return 0
    where = " at ".join(w for w in (report["entry_symbol"], report["entry_line"]) if w)
    where = f" ({where})" if where else ""
    print(f"{image.name}: entry {image.entry:#x}{where}, {image.size} bytes in {len(image.segments)} segments")
    for seg in report["segments"]:
        print(f"  {seg['name']:8} {seg['va']:#010x} {seg['size']:9} bytes  {seg['perm']}")
    linked = ", ".join(f"{k} = {v}" for k, v in report["libos"].items()) or "none (the app is its own libOS)"
    print(f"libOS modules: {linked}")
    print(f"library calls: {', '.join(report['library_calls']) or 'none'}")
    print(f"hypercalls called directly: {', '.join(report['hypercalls_called']) or 'none'}"
          + (f" (+{raw} syscall(s) with a computed number)" if raw else ""))
    allowed_text = report["hypercalls_allowed"]
    print(f"hypercalls allowed: {allowed_text if isinstance(allowed_text, str) else ', '.join(allowed_text)}")
    if report["denied_but_called"]:
        print(f"warning: called but not allowed (will get -EPERM): {', '.join(report['denied_but_called'])}")
    cost = report["instances"]
    parts = ", ".join(f"{n} {kind}" for kind, n in cost["own_frames_by_kind"].items())
    print(f"instances: {cost['shared_bytes']:,} bytes shared by all ({cost['shared_frames']} frames), "
          f"{cost['own_bytes']:,} bytes each at its start ({parts})")
    return 0


def instance_cost(image, classes) -> dict:
    """What the instances of ``image`` share and what each needs at its start: measured by loading
    two instances (libOS linked) into a scratch machine and counting frames (exo/images.py)."""
    import io
    from collections import Counter

    from exo.frames import FrameKind
    from exo.kernel import Exokernel
    from exo.loader import spawn
    from hw import Machine
    from libos.link import link

    k = Exokernel(Machine(512 << 20, stdin=b"", stdout=io.BytesIO()), on_fault=lambda r: None)
    envs = []
    for _ in range(2):
        env = spawn(k, image, share=True)
        if classes:
            link(k.libs, env, classes)
        envs.append(env)
    mine = envs[1].id
    kinds = Counter(FrameKind(k.frames.kind[f]).name.lower() for f in range(len(k.frames.owner))
                    if k.frames.owner[f] == mine)
    own = sum(kinds.values())
    return {"shared_frames": k.images.frames_held, "shared_bytes": k.images.frames_held * 4096,
            "own_frames": own, "own_bytes": own * 4096,
            "own_frames_by_kind": {name.replace("image_", ""): n for name, n in kinds.most_common()}}


def _write_elf(out: str, manifest, image, classes) -> None:
    import sys

    from exo.build.image import elf_file, source_lines
    from exo.errors import ExoUserError
    from libos.registry import hints, symbols

    if manifest.is_elf:
        blob = manifest.sources[0].read_bytes()
    else:
        names = {c.NAME for c in classes}
        blob = elf_file(image, source_lines(manifest, symbols(names), hints(names)))
    try:
        with open(out, "wb") as f:
            f.write(blob)
    except OSError as e:
        raise ExoUserError(out, f"cannot write the ELF file: {e.strerror or e}") from None
    what = "copied the guest's own ELF" if manifest.is_elf else f"{len(image.symbols)} labels as symbols"
    sys.stderr.write(f"exo: wrote {out} ({len(blob)} bytes, {what})\n")
