"""What must hold after every hypercall, whatever the guests asked for: the exokernel's protection invariants.

``check(h)`` walks the page tables of every live environment (the hardware's
view: what the CPU would let each environment reach, read from physical memory,
not from the exokernel's bookkeeping) into a ``Snapshot``, then runs each
function of ``CHECKS`` over it; each yields one line per violation. The
``exo fuzz`` command and tests/exo/test_fuzz_abi.py share this list. A new rule
is one more function appended to ``CHECKS``; the tenant quotas and maximum
rights of issue 11 (sections 3 and 4) are two such functions.

The walk reads each page-table page once and finds its non-zero entries with a
regular-expression scan (C speed), so a check of a few dozen environments costs
a fraction of a millisecond per environment.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exo.abi import (
    EXO_REGION_END,
    HYPERCALL_PAGE,
    USER_BOTTOM,
    USER_TOP,
    UVPT_SLOT,
)
from exo.frames import EXO, SHARED, FrameType, over_max_right
from exo.vm import pte_rights
from hw.cpu import SYSTEM_PML4E, SYSTEM_SLOT
from hw.memory import PAGE_SHIFT
from hw.paging import ADDR_MASK, PTE_NX, PTE_P, PTE_U, PTE_W

if TYPE_CHECKING:
    from exo.fuzz.harness import Harness

_NONZERO = re.compile(rb"[^\x00]")
_U64 = 0xFFFF_FFFF_FFFF_FFFF
INTERMEDIATE = PTE_P | PTE_W | PTE_U  # what exo writes in PML4/PDPT/PD entries (hw/paging.py entry_address)
CPU_SET = 0x60  # accessed and dirty: the CPU sets them on a walk (SDM 4.8)
# SYSTEM_SLOT, SYSTEM_PML4E: where the vCPU links the descriptor tables into every address
# space (hw/cpu.py), supervisor only.
assert not SYSTEM_PML4E & PTE_U
UVPT_ENTRY = PTE_P | PTE_U | PTE_NX  # the recursive slot: read-only, never executable (exo/vm.py)


@dataclass
class Leaf:
    env: int
    va: int
    pte: int

    @property
    def writable(self) -> bool:
        return bool(self.pte & PTE_W)

    @property
    def executable(self) -> bool:
        return not self.pte & PTE_NX


@dataclass
class Snapshot:
    """Every live environment's mappings, as the page tables in physical memory say."""

    leaves: dict[int, list[Leaf]] = field(default_factory=lambda: defaultdict(list))  # frame -> mappings
    tables: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # table frame -> envs reaching it
    per_env: dict[int, int] = field(default_factory=dict)  # env -> leaf count
    problems: list[str] = field(default_factory=list)  # found during the walk itself


_parsed: dict[bytes, list[tuple[int, int]]] = {}  # table contents -> its non-zero entries (a cache)


def _entries(view, pa: int) -> list[tuple[int, int]]:
    """(index, entry) of the non-zero entries of the 512-entry table at ``pa``.

    Read from physical memory on every call; parsed once per distinct content
    (page-table pages change little between two calls, and a dict lookup of 4 KiB
    of bytes is a hash and a compare at C speed).
    """
    page = bytes(view[pa : pa + 4096])
    found = _parsed.get(page)
    if found is not None:
        return found
    found = []
    search = _NONZERO.search
    pos = 0
    while True:
        m = search(page, pos)
        if m is None:
            break
        i = m.start() >> 3
        found.append((i, int.from_bytes(page[i * 8 : i * 8 + 8], "little")))
        pos = (i + 1) * 8
    if len(_parsed) > 50_000:
        _parsed.clear()
    _parsed[page] = found
    return found


def walk(h: Harness) -> Snapshot:
    k = h.k
    mem = k.machine.memory
    view = mem.view
    nframes = mem.frames
    snap = Snapshot()
    for env in h.live:
        root = env.space.root
        count = 0
        snap.tables[root >> PAGE_SHIFT].append(env.id)
        stack = [(root, 3, 0)]
        while stack:
            table, level, base = stack.pop()
            for i, e in _entries(view, table):
                va = base | (i << (12 + 9 * level))
                if level == 3 and i >= 256:
                    if i == SYSTEM_SLOT and e & ~CPU_SET == SYSTEM_PML4E:
                        continue  # the CPU's descriptor tables: supervisor only (U=0), no guest reaches them
                    snap.problems.append(f"env {env.id}: PML4 entry {i} ({e:#x}) in the kernel half")
                    continue
                if level == 3 and i == UVPT_SLOT:
                    if e & ~CPU_SET != root | UVPT_ENTRY:
                        snap.problems.append(f"env {env.id}: UVPT slot holds {e:#x}, not {root | UVPT_ENTRY:#x}")
                    continue
                if not e & PTE_P:
                    snap.problems.append(f"env {env.id}: non-present entry {e:#x} left at level {level} va {va:#x}")
                    continue
                frame = (e & ADDR_MASK) >> PAGE_SHIFT
                if frame >= nframes:
                    snap.problems.append(f"env {env.id}: entry {e:#x} at va {va:#x} points outside RAM")
                    continue
                if level:
                    if e & ~ADDR_MASK & ~CPU_SET != INTERMEDIATE:
                        snap.problems.append(f"env {env.id}: level-{level} entry {e:#x} at va {va:#x} has flags "
                                             f"{e & ~ADDR_MASK:#x}, not P|W|U")
                    snap.tables[frame].append(env.id)
                    stack.append((frame << PAGE_SHIFT, level - 1, va))
                else:
                    snap.leaves[frame].append(Leaf(env.id, va, e & ~ADDR_MASK))
                    count += 1
        snap.per_env[env.id] = count
    return snap


# ------------------------------------------------------------------ the checks
Check = Callable[["Harness", Snapshot], Iterator[str]]


def walk_problems(h: Harness, s: Snapshot) -> Iterator[str]:
    """Page tables are well formed: no kernel-half entries, intermediate entries P|W|U, UVPT read-only."""
    yield from s.problems


def tables_private(h: Harness, s: Snapshot) -> Iterator[str]:
    """Every page-table frame is typed PAGETABLE, owned by and listed for exactly one live environment."""
    ft = h.k.frames
    listed: dict[int, int] = {}
    for env in h.live:
        for f in env.space.table_frames:
            listed[f] = env.id
    for f, envs in s.tables.items():
        if len(envs) != 1:
            yield f"page-table frame {f:#x} is reached from {len(envs)} tables (envs {envs})"
        if ft.type[f] != FrameType.PAGETABLE:
            yield f"frame {f:#x} is used as a page table by env {envs[0]} but typed {FrameType(ft.type[f]).name}"
        if listed.get(f) != envs[0] or ft.owner[f] != envs[0]:
            yield f"page-table frame {f:#x} of env {envs[0]} is owned by {ft.owner[f]}, listed for {listed.get(f)}"
    for f, eid in listed.items():
        if f not in s.tables:
            yield f"page-table frame {f:#x} listed for env {eid} is not reachable from its root"


def leaves_allowed(h: Harness, s: Snapshot) -> Iterator[str]:
    """Leaves map user pages of NORMAL frames; page-table and EXO frames never; the hypercall frame read+execute."""
    k = h.k
    ft = k.frames
    hc = k.hypercall_frame
    for f, leaves in s.leaves.items():
        t = ft.type[f]
        for m in leaves:
            where = f"env {m.env} va {m.va:#x} -> frame {f:#x} (pte flags {m.pte:#x})"
            if not m.pte & PTE_U:
                yield f"{where}: a leaf without the user bit"
            if not USER_BOTTOM <= m.va < USER_TOP:
                yield f"{where}: outside the user range"
            if t == FrameType.PAGETABLE:
                yield f"{where}: a page-table frame is mapped (only the read-only UVPT window may show it)"
            elif t != FrameType.NORMAL:
                yield f"{where}: a {FrameType(t).name} frame is mapped"
            if ft.owner[f] == EXO and f != hc:
                yield f"{where}: an exokernel-owned frame is mapped"
            if f == hc and (m.va != HYPERCALL_PAGE or m.writable):
                yield f"{where}: the hypercall page mapped elsewhere or writable"
            if HYPERCALL_PAGE <= m.va < EXO_REGION_END and m.va == HYPERCALL_PAGE and f != hc:
                yield f"{where}: something other than the hypercall frame at the hypercall page"


def refcounts(h: Harness, s: Snapshot) -> Iterator[str]:
    """A frame's reference count is its mappings + IPC messages holding it (+1: the hypercall page)."""
    k = h.k
    ft = k.frames
    held: dict[int, int] = defaultdict(int)
    for env in h.live:
        if env.mailbox is not None and env.mailbox[2] >= 0:
            held[env.mailbox[2]] += 1
    held[k.hypercall_frame] += 1
    refs = ft.refs
    for f in set(s.leaves) | set(held):
        want = len(s.leaves.get(f, ())) + held.get(f, 0)
        if refs[f] != want:
            yield f"frame {f:#x}: refs {refs[f]} but {want} mappings/holders"
        w = sum(m.writable for m in s.leaves.get(f, ()))
        x = sum(m.executable for m in s.leaves.get(f, ()))
        if ft.wmaps[f] != w or ft.xmaps[f] != x:
            yield f"frame {f:#x}: W/X counters {ft.wmaps[f]}/{ft.xmaps[f]} but {w}/{x} mappings"
    for env in h.live:
        sp = env.space
        if sp.pages != s.per_env.get(env.id, 0):
            yield f"env {env.id}: space.pages {sp.pages} but {s.per_env.get(env.id, 0)} leaves"
        if sum(sp.frame_maps.values()) != sp.pages:
            yield f"env {env.id}: frame_maps sum {sum(sp.frame_maps.values())} != pages {sp.pages}"


def frame_table(h: Harness, s: Snapshot) -> Iterator[str]:
    """Free list = the FREE frames; every frame in use is reachable (no leak); free + used = total.

    In use means: mapped, a page table, held by an IPC message, the hypercall page or
    the machine's reserved low memory. Counted with C-speed array operations.
    """
    k = h.k
    ft = k.frames
    types = ft.type
    free = ft.free_list()
    if len(set(free)) != len(free):
        yield f"the free list holds duplicates ({len(free) - len(set(free))})"
    kinds = set(map(types.__getitem__, free))
    if kinds - {FrameType.FREE}:
        yield f"the free list holds frames of types {sorted(kinds)}"
    n_free = types.count(FrameType.FREE)
    if n_free != len(free) or n_free != ft.free_count:
        yield f"{n_free} FREE frames but {len(free)} on the free list (free_count {ft.free_count})"
    used = set(s.leaves) | set(s.tables) | {k.hypercall_frame}
    for env in h.live:
        if env.mailbox is not None and env.mailbox[2] >= 0:
            used.add(env.mailbox[2])
    for f in used:
        if types[f] == FrameType.FREE:
            yield f"frame {f:#x} is in use but FREE"
    reserved = types.count(FrameType.EXO)
    if len(types) - n_free != len(used) + reserved:
        leaked = [f for f in range(len(types)) if types[f] not in (FrameType.FREE, FrameType.EXO) and f not in used]
        yield (f"{len(types) - n_free - reserved} frames in use but {len(used)} reachable: leaked "
               f"{[(f, ft.owner[f], FrameType(types[f]).name) for f in leaked[:5]]}")


def write_exclusive(h: Harness, s: Snapshot) -> Iterator[str]:
    """W^X per frame, and no frame writable in two apps unless its owner's app sent it writable by IPC."""
    ft = h.k.frames
    tenant = h.tenant
    for f, leaves in s.leaves.items():
        w = [m for m in leaves if m.writable]
        if w and any(m.executable for m in leaves):
            yield f"frame {f:#x}: writable at env {w[0].env} va {w[0].va:#x} and executable elsewhere (W^X)"
        if ft.owner[f] == SHARED:  # an image's read-only page, mapped by its instances: never writable
            if w:
                yield f"frame {f:#x}: a shared image page is writable at env {w[0].env} va {w[0].va:#x}"
            continue
        owner_app = tenant(ft.owner[f])
        granted = h.grants.get(f, {})
        for m in leaves:
            app = tenant(m.env)
            if app == owner_app or f == h.k.hypercall_frame:
                continue
            if app not in granted:
                yield (f"env {m.env} (app {app}) maps frame {f:#x} of app {owner_app} at {m.va:#x}: "
                       "neither owned nor received")
            elif m.writable and not granted[app]:
                yield f"env {m.env} (app {app}) maps frame {f:#x} of app {owner_app} writable; it was sent read-only"


def accounting(h: Harness, s: Snapshot) -> Iterator[str]:
    """exo's hypercall counts equal the `syscall`s the fuzzer's environments really made."""
    if h.k.acct._hc == h.expected:  # neither holds zeros: equal dicts, equal counts (C speed)
        return
    got = {key: n for key, n in h.k.acct._hc.items() if n}
    want = {key: n for key, n in h.expected.items() if n}
    if got != want:
        diff = {key: (got.get(key, 0), want.get(key, 0)) for key in set(got) | set(want)
                if got.get(key, 0) != want.get(key, 0)}
        yield f"hypercall accounting differs from the calls made (exo, made): {dict(sorted(diff.items())[:6])}"


def environments(h: Harness, s: Snapshot) -> Iterator[str]:
    """Dead environments hold nothing; a live one's mailbox holds a normal frame.

    (An app's live environments against its quota: tenant_quotas.)
    """
    k = h.k
    for env in h.new_dead:  # a dead environment never changes again: checked once
        if env.space.pages or env.space.table_frames or env.mailbox is not None:
            yield f"dead env {env.id} still holds pages {env.space.pages}, tables {len(env.space.table_frames)}"
        if env.net is not None:
            yield f"dead env {env.id} still has a network port"
        if env.ctx is not None and env is not h.k.current:
            yield f"dead env {env.id} kept its CPU context"
    for env in h.live:
        if env.mailbox is not None and env.mailbox[2] >= 0 and k.frames.type[env.mailbox[2]] != FrameType.NORMAL:
            yield f"env {env.id}'s mailbox holds frame {env.mailbox[2]:#x} of type {k.frames.type[env.mailbox[2]]}"


def disk_grants(h: Harness, s: Snapshot) -> Iterator[str]:
    """Disk ranges stay on the disk, and a child holds only what its live parent holds (rights included)."""
    k = h.k
    disk = k.machine.disk
    if disk is None:
        return
    for env in h.live:
        for sec, n, w in env.disk_grants:
            if not (0 <= sec and 0 < n and sec + n <= disk.sectors) or (w and disk.readonly):
                yield f"env {env.id} holds disk range {sec}+{n} w={w} on a {disk.sectors}-sector disk"
        parent = k.envs.get(env.parent) if env.parent is not None else None
        if parent is None or not parent.alive:
            continue
        for sec, n, w in env.disk_grants:
            if not _covered(sec, sec + n, [(ps, ps + pn) for ps, pn, pw in parent.disk_grants if pw or not w]):
                yield f"env {env.id} holds sectors {sec}+{n} (w={w}) that its parent {parent.id} does not"


def _covered(lo: int, hi: int, ranges: list[tuple[int, int]]) -> bool:
    """[lo, hi) lies inside the union of ``ranges``."""
    for s, e in sorted(ranges):
        if s > lo:
            return False
        if e > lo:
            lo = e
            if lo >= hi:
                return True
    return lo >= hi


def network(h: Harness, s: Snapshot) -> Iterator[str]:
    """Every packet filter belongs to a live environment of the app it claims frames for."""
    net = h.k.net
    if net is None:
        return
    for fid, f in net.filters.items():
        env = h.k.envs.get(f.env)
        if env is None or not env.alive or env.net is None or fid not in env.net.filters:
            yield f"filter {fid} belongs to env {f.env}, which is gone or does not hold it"
        elif h.tenant(f.env) != f.app:
            yield f"filter {fid} of env {f.env} (app {h.tenant(f.env)}) claims frames of app {f.app}"


def tenant_quotas(h: Harness, s: Snapshot) -> Iterator[str]:
    """Each app's frames and live environments stay within its quota, and exo's counts of them
    equal a census (the frames its environments own, the environments alive): exo/tenants.py."""
    tenants = h.k.tenants
    owned = Counter(h.k.frames.owner)
    frames: dict[int, int] = defaultdict(int)
    for eid, t in tenants.by_owner.items():
        frames[id(t)] += owned.get(eid, 0)
    envs: dict[int, int] = defaultdict(int)
    for e in h.live:
        envs[id(e.tenant)] += 1
    for t in tenants:
        if t.frames_used > t.frame_limit or t.envs_used > t.env_limit:
            yield (f"app {t.name}: {t.frames_used} of {t.frame_limit} frames, "
                   f"{t.envs_used} of {t.env_limit} environments")
        if t.frames_used != frames[id(t)] or t.envs_used != envs[id(t)]:
            yield (f"app {t.name}: exo counts {t.frames_used} frames and {t.envs_used} environments, "
                   f"a census finds {frames[id(t)]} and {envs[id(t)]}")


def max_rights(h: Harness, s: Snapshot) -> Iterator[str]:
    """No mapping exceeds its frame's maximum right (exo/frames.py MAX_RIGHT)."""
    ft = h.k.frames
    for f, leaves in s.leaves.items():
        for m in leaves:
            why = over_max_right(ft, f, pte_rights(m.pte))
            if why is not None:
                yield f"env {m.env} va {m.va:#x}: {why}"


def no_exceptions(h: Harness, s: Snapshot) -> Iterator[str]:
    """The exokernel raised no Python exception."""
    yield from h.exceptions


def scheduler(h: Harness, s: Snapshot) -> Iterator[str]:
    """A live environment is on the run queue once at most, exactly when marked queued.

    (A dead one may linger there: the scheduler drops it when it pops it.)
    """
    on_queue: dict[int, int] = defaultdict(int)
    k = h.k
    queues = [t.runq for t in k.tenants]  # one per app
    for q in queues:
        for e in q:
            on_queue[e.id] += 1
    for e in h.live:
        if on_queue[e.id] > 1 or e.queued != (on_queue[e.id] == 1):
            yield f"env {e.id} is on the run queue {on_queue[e.id]} times, marked queued={e.queued}"


# The list the fuzzer runs after every step: one function per rule.
CHECKS: list[Check] = [
    walk_problems,
    tables_private,
    leaves_allowed,
    refcounts,
    frame_table,
    write_exclusive,
    accounting,
    environments,
    disk_grants,
    network,
    scheduler,
    tenant_quotas,
    max_rights,
    no_exceptions,
]


# Checks that read only what ``_state_key`` covers (page-table pages, the frame table's
# arrays and free list, live environments' spaces and mailboxes, the IPC grants). After a
# clean check, an unchanged key would give the same empty answer: they are skipped then
# (most calls fail or touch no frame), which makes a check after every call affordable in
# a million-call run. Every other check (and any appended to CHECKS) runs every time.
KEYED = frozenset({"walk_problems", "tables_private", "leaves_allowed", "refcounts", "frame_table",
                   "write_exclusive", "max_rights"})


def _state_key(h: Harness) -> tuple[tuple, tuple]:
    """(what the walk reads, what the keyed checks read besides the walk)."""
    k = h.k
    view = k.machine.memory.view
    ft = k.frames
    spaces = []
    pages = []
    for env in h.live:
        sp = env.space
        spaces.append((env.id, env.tenant.id, sp.root, tuple(sp.table_frames), sp.pages,
                       sum(sp.frame_maps.values()), env.mailbox))
        pages += [view[f << PAGE_SHIFT : (f + 1) << PAGE_SHIFT] for f in sp.table_frames]
    walk_key = (tuple(spaces), b"".join(pages))
    rest = (ft.owner.tobytes(), ft.refs.tobytes(), ft.type.tobytes(), ft.wmaps.tobytes(), ft.xmaps.tobytes(),
            ft.max_right.tobytes(),
            tuple(ft.free_list()), tuple(sorted((f, tuple(sorted(g.items()))) for f, g in h.grants.items())))
    return walk_key, rest


def check(h: Harness, checks: list[Check] | None = None) -> list[str]:
    """Every violation of the invariants now, one line each, prefixed with the check's name."""
    h.forget_stale_grants()
    dead = h.check_cache.setdefault("dead", set())
    h.live = []
    h.new_dead = []
    for e in h.k.envs.values():
        if e.alive:
            h.live.append(e)
        elif e.id not in dead:
            dead.add(e.id)
            h.new_dead.append(e)
    walk_key, rest = _state_key(h)
    cache = h.check_cache
    if cache.get("walk_key") == walk_key:
        snap = cache["snap"]
    else:
        snap = walk(h)
        cache["walk_key"], cache["snap"] = walk_key, snap
    unchanged = cache.get("clean_key") == (walk_key, rest)
    out = []
    for c in CHECKS if checks is None else checks:
        if unchanged and c.__name__ in KEYED:
            continue
        try:
            out.extend(f"{c.__name__}: {line}" for line in c(h, snap))
        except Exception as e:  # noqa: BLE001 - a check that cannot even run is a finding too
            out.append(f"{c.__name__}: the check raised {type(e).__name__}: {e}")
    cache["clean_key"] = None if out else (walk_key, rest)
    return out
