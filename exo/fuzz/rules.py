"""The fuzzer's rules: which hypercall a step makes, from which environment, with which arguments.

One set of rules serves both drivers: tests/exo/test_fuzz_abi.py draws through
hypothesis (a ``Chooser`` over ``st.data()``, so failures shrink), ``exo fuzz``
through a seeded ``random.Random`` (fast, no test dependency). A rule returns
the list of ``Call``s it makes; the driver runs them one by one and checks the
invariants after each.

Arguments come from pools mixing what a well-behaved libOS passes (its own
scratch pages, its children, frames it looked up) with what an attacker tries:
kernel-half and non-canonical addresses, the UVPT window, the exokernel region
and hypercall page, the reserved low 64 KiB, unaligned and wrapping pointers,
huge counts, other apps' environment ids and frame numbers (learnt through any
app's frame_of, or page-table frames an attacker might guess), bad permission
bits (W|X, PS, NX, reserved bits).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from exo.abi import (
    EXO_REGION_END,
    HYPERCALL_PAGE,
    INFO_PAGE,
    LIBOS_PAGE,
    PERM_COW,
    PERM_R,
    PERM_W,
    PERM_X,
    STACK_TOP,
    USER_BOTTOM,
    USER_TOP,
    UVPML4,
    UVPT,
    EnvStatus,
)
from exo.env import Env
from exo.fuzz.harness import CODE_VA, FUZZ_PAGES, FUZZ_VA, SCRATCH_PAGES, SCRATCH_VA, Call, Harness
from exo.hypercalls import BY_NAME, HYPERCALLS, MAX_MMU_BATCH

T = TypeVar("T")
U64 = (1 << 64) - 1


class Chooser(Protocol):
    def pick(self, seq: Sequence[T]) -> T: ...
    def num(self, lo: int, hi: int) -> int: ...  # inclusive
    def chance(self, percent: int) -> bool: ...


class RandomChooser:
    """The ``exo fuzz`` driver's chooser: a seeded generator (the same seed, the same run)."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.r.randrange(len(seq))]

    def num(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def chance(self, percent: int) -> bool:
        return self.r.randrange(100) < percent


# ------------------------------------------------------------------ pools
KERNEL = 0xFFFF_8000_0000_0000
NONCANON = 0x0000_8000_0000_0000
SCRATCH_END = SCRATCH_VA + SCRATCH_PAGES * 4096
REQS = SCRATCH_VA  # request arrays
DONE = SCRATCH_VA + 0x800  # `done` counters
INFO = SCRATCH_VA + 0xA00  # out-structures
FILTER = SCRATCH_VA + 0xC00
BUF = SCRATCH_VA + 0x1000  # frames, disk buffers, console text
RING = SCRATCH_VA + 0x2000  # net ring (2 pages: 4 slots)

BAD_PAGES = (0, 0x1000, USER_BOTTOM - 0x1000, HYPERCALL_PAGE, LIBOS_PAGE, INFO_PAGE, EXO_REGION_END - 0x1000,
             UVPT, UVPT + 0x1000, UVPML4, USER_TOP - 0x1000, USER_TOP, NONCANON, KERNEL, U64 & ~0xFFF,
             FUZZ_VA + 1, CODE_VA)
BAD_PTRS = (0, 8, 0x1000, HYPERCALL_PAGE, INFO_PAGE, CODE_VA, UVPT, UVPML4, SCRATCH_END - 8, USER_TOP - 8,
            NONCANON, KERNEL, U64 - 7, STACK_TOP)
GOOD_PERMS = (PERM_R, PERM_R | PERM_W, PERM_R | PERM_X, PERM_R | PERM_COW, PERM_R | PERM_W | PERM_COW)
BAD_PERMS = (0, PERM_W, PERM_W | PERM_X, PERM_R | PERM_W | PERM_X, 0x4, 0x10, 0x80, 0x100, 1 << 63, 0xFFFF, U64)
COUNTS = (0, 1, 2, 3, 16, 255, 256, 257, 4095, 4096, 4097, 1 << 31, 1 << 32, 1 << 63, U64)


def envid(h: Harness, env: Env, c: Chooser) -> int:
    """Mostly self (0 or own id) and own children; sometimes anyone else, dead, or nonsense."""
    k = h.k
    if c.chance(35):
        return c.pick((0, env.id))
    if env.children and c.chance(60):
        return c.pick(env.children)
    if c.chance(70) and len(k.envs) > 1:
        return c.pick(list(k.envs))  # a sibling, parent, another app's env, a dead one
    return c.pick((k._next_id, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 63, U64))


def page(c: Chooser) -> int:
    """A page address: mostly the fuzz window, sometimes an attacker's favourite."""
    if c.chance(70):
        return FUZZ_VA + c.num(0, FUZZ_PAGES - 1) * 4096
    if c.chance(25):
        return SCRATCH_VA + c.num(0, SCRATCH_PAGES - 1) * 4096
    if c.chance(70):
        return c.pick(BAD_PAGES)
    return c.num(0, (1 << 47) - 1) & ~0xFFF


def ptr(c: Chooser, good: int) -> int:
    if c.chance(85):
        return good
    return c.pick(BAD_PTRS) if c.chance(80) else c.num(0, U64)


def perm(c: Chooser) -> int:
    return c.pick(GOOD_PERMS) if c.chance(80) else c.pick(BAD_PERMS)


def count(c: Chooser, real: int) -> int:
    return real if c.chance(80) else c.pick(COUNTS)


def frame(h: Harness, env: Env, c: Chooser) -> int:
    """A frame number: learnt through frame_of, another env's page tables, the hypercall page, nonsense."""
    k = h.k
    roll = c.num(0, 9)
    if roll < 5 and h.frames_seen:
        return c.pick(h.frames_seen)
    if roll < 7:
        other = k.envs[c.pick(list(k.envs))]
        if other.alive and other.space.frame_maps and c.chance(70):
            return c.pick(sorted(other.space.frame_maps))
        if other.alive and other.space.table_frames:
            return c.pick(other.space.table_frames)
    if roll < 8:
        return k.hypercall_frame
    return c.pick((0, 1, 15, k.frames.memory.frames - 1, k.frames.memory.frames, 1 << 32, 1 << 63, U64))


def small(c: Chooser) -> int:
    return c.pick((0, 1, 2, 7, 0x1234, 1 << 31, 1 << 32, 1 << 63, U64)) if c.chance(30) else c.num(0, 64)


# ------------------------------------------------------------------ rules
Rule = Callable[[Harness, Env, Chooser], list[Call]]
NR = {name: h.nr for name, h in BY_NAME.items()}


def _call(env: Env, name: str, *args: int, mem: tuple = (), rule: str = "") -> Call:
    return Call(env.id, NR[name], tuple(a & U64 for a in args), tuple(mem), rule or name)


def r_console(h: Harness, env: Env, c: Chooser) -> list[Call]:
    n = c.num(0, 64)
    text = bytes(c.num(32, 126) for _ in range(min(n, 8))) + b"\n"
    name = c.pick(("console_write", "console_write", "console_read", "log"))
    length = count(c, len(text)) if c.chance(90) else c.pick((4096, 4097, 1 << 20, (1 << 20) + 1))
    return [_call(env, name, ptr(c, BUF), length, mem=((BUF, text),))]


def r_page_alloc(h: Harness, env: Env, c: Chooser) -> list[Call]:
    return [_call(env, "page_alloc", envid(h, env, c), page(c), perm(c))]


def r_page_map(h: Harness, env: Env, c: Chooser) -> list[Call]:
    return [_call(env, "page_map", envid(h, env, c), page(c), envid(h, env, c), page(c), perm(c))]


def r_page_unmap(h: Harness, env: Env, c: Chooser) -> list[Call]:
    return [_call(env, "page_unmap", envid(h, env, c), page(c))]


def r_mmu_update(h: Harness, env: Env, c: Chooser) -> list[Call]:
    n = c.num(0, 6)
    raw = b""
    for _ in range(n):
        op = c.pick((0, 0, 1, 2, 2, 3, (1 << 32) - 1))
        raw += struct.pack("<IIQQQ", op, envid(h, env, c) & 0xFFFF_FFFF, page(c), frame(h, env, c), perm(c))
    cnt = count(c, n) if c.chance(95) else c.pick((MAX_MMU_BATCH, MAX_MMU_BATCH + 1))
    done = c.pick((0, DONE, DONE, DONE, DONE, DONE, CODE_VA, INFO_PAGE, KERNEL))
    return [_call(env, "mmu_update", ptr(c, REQS), cnt, done, mem=((REQS, raw),))]


def r_frame_of(h: Harness, env: Env, c: Chooser) -> list[Call]:
    va = c.pick((INFO_PAGE, HYPERCALL_PAGE, CODE_VA, SCRATCH_VA, LIBOS_PAGE)) if c.chance(60) else page(c)
    return [_call(env, "frame_of", va + (c.num(0, 4095) if c.chance(10) else 0))]


MANY_ENVS = 8  # an app's live environments above which env_create mostly gives way to env_destroy


def r_env_create(h: Harness, env: Env, c: Chooser) -> list[Call]:
    app = h.tenant(env.id)
    live = sum(1 for e in h.k.envs.values() if e.alive and e.tenant.id == app)
    if live >= MANY_ENVS and env.children and c.chance(90):  # keep the invariant walk short
        return [_call(env, "env_destroy", c.pick(env.children))]
    return [_call(env, "env_create")]


def r_adopt(h: Harness, env: Env, c: Chooser) -> list[Call]:
    """Start a child as a libOS fork does: share the code page, give it scratch pages, make it runnable."""
    kids = [cid for cid in env.children if h.k.envs[cid].status == EnvStatus.NOT_RUNNABLE]
    if not kids:
        return r_env_create(h, env, c)
    kid = c.pick(kids)
    calls = [_call(env, "page_map", 0, CODE_VA, kid, CODE_VA, PERM_R | PERM_X, rule="adopt")]
    calls += [_call(env, "page_alloc", kid, SCRATCH_VA + i * 4096, PERM_R | PERM_W, rule="adopt")
              for i in range(SCRATCH_PAGES)]
    calls.append(_call(env, "env_set_status", kid, EnvStatus.RUNNABLE, rule="adopt"))
    return calls


def r_env_destroy(h: Harness, env: Env, c: Chooser) -> list[Call]:
    target = c.pick(env.children) if env.children and c.chance(80) else envid(h, env, c)
    return [_call(env, "env_destroy", target)]


def r_env_set(h: Harness, env: Env, c: Chooser) -> list[Call]:
    name = c.pick(("env_set_status", "env_set_upcall", "env_set_entry", "env_set_timer"))
    target = envid(h, env, c)
    if name == "env_set_status":
        return [_call(env, name, target, c.pick((1, 1, 2, 0, 3, 4, 5, 1 << 32)))]
    entry = c.pick((0, CODE_VA, KERNEL, NONCANON, 1 << 47, U64, HYPERCALL_PAGE))
    if name == "env_set_timer":
        return [_call(env, name, target, entry)]
    return [_call(env, name, target, entry, c.pick((0, STACK_TOP, KERNEL, U64, SCRATCH_END)))]


def r_sched(h: Harness, env: Env, c: Chooser) -> list[Call]:
    roll = c.num(0, 99)
    if roll < 80 or (roll < 86 and env.parent is None):
        op, arg = 0, small(c)  # YIELD
    elif roll < 86:
        op, arg = 1, 0  # BLOCK: until the parent sets it runnable again (a booted app has none: it yields)
    elif roll < 90:
        op, arg = 2, small(c)  # EXIT
    else:
        op, arg = c.pick((3, 1 << 32, U64)), 0
    return [_call(env, "sched_op", op, arg)]


def r_cheap(h: Harness, env: Env, c: Chooser) -> list[Call]:
    name = c.pick(("env_id", "time_now", "null", "svc", "svc_return", "svc_reply_wait"))
    return [Call(env.id, NR[name], tuple(small(c) for _ in BY_NAME[name].args), (), name)]


def r_ipc_send(h: Harness, env: Env, c: Chooser) -> list[Call]:
    k = h.k
    live = [e.id for e in k.envs.values() if e.alive and e is not env]
    target = c.pick(live) if live and c.chance(85) else envid(h, env, c)
    srcva = 0 if c.chance(40) else c.pick((SCRATCH_VA, FUZZ_VA, CODE_VA, INFO_PAGE)) if c.chance(50) else page(c)
    return [_call(env, "ipc_try_send", target, small(c), srcva, perm(c))]


def r_ipc_recv(h: Harness, env: Env, c: Chooser) -> list[Call]:
    roll = c.num(0, 99)
    # The page holding info itself, often: a receive that maps over its own out-buffer.
    dstva = 0 if roll < 20 else SCRATCH_VA if roll < 45 else page(c)
    flags = 1 if c.chance(85) else c.pick((0, 3, U64))
    return [_call(env, "ipc_recv", dstva, ptr(c, INFO), flags)]


def r_disk(h: Harness, env: Env, c: Chooser) -> list[Call]:
    roll = c.num(0, 9)
    sectors = (0, 1, 7, 8, 63, 64, 65, 1 << 32, 1 << 63, U64)
    if roll < 2:
        return [_call(env, "disk_info", ptr(c, INFO))]
    if roll < 5:
        mode = c.pick((0, 1, 2, 2, 3, U64))
        return [_call(env, "disk_grant", envid(h, env, c), c.num(0, 64) if c.chance(80) else c.pick(sectors),
                      c.num(1, 16) if c.chance(80) else c.pick(sectors), mode)]
    n = c.num(0, 3)
    raw = b"".join(struct.pack("<IIQQQ", c.pick((0, 0, 1, 1, 2, 3)), 0 if c.chance(95) else 1,
                               c.num(0, 63) if c.chance(85) else c.pick(sectors),
                               c.num(1, 8) if c.chance(85) else c.pick((0, 256, 257, U64)), ptr(c, BUF))
                   for _ in range(n))
    return [_call(env, "disk_io", ptr(c, REQS), count(c, n), c.pick((0, DONE, CODE_VA)), mem=((REQS, raw),))]


def _udp_frame(h: Harness, env: Env, c: Chooser) -> bytes:
    net = h.k.net
    me = net.apps.get(h.tenant(env.id))
    addrs = list(net.apps.values())
    if me is None or not addrs:
        return bytes(c.num(0, 255) for _ in range(c.num(0, 60)))
    dst = c.pick(addrs)
    dst_mac = b"\xff" * 6 if c.chance(15) else dst.mac
    src_mac = me.mac if c.chance(97) else dst.mac
    src_ip = me.ip if c.chance(97) else dst.ip
    payload = bytes(c.num(0, 255) for _ in range(c.num(0, 16)))
    udp = struct.pack(">HHHH", c.pick((7, 9000, 53)), c.pick((9000, 9000, 53, 7)), 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, c.pick((17, 17, 6, 1)), 0, src_ip, dst.ip)
    return dst_mac + src_mac + (b"\x08\x00" if c.chance(90) else c.pick((b"\x08\x06", b"\x86\xdd"))) + ip + udp


def r_net(h: Harness, env: Env, c: Chooser) -> list[Call]:
    roll = c.num(0, 9)
    if roll < 1:
        return [_call(env, "net_info", ptr(c, INFO))]
    if roll < 3:
        nslots = c.pick((0, 1, 2, 4, 4, 3, 512, 1024, U64))
        return [_call(env, "net_attach", RING if c.chance(90) else page(c), nslots,
                      c.pick((0, 0, CODE_VA, KERNEL)))]
    if roll < 5:
        if c.chance(25):
            return [_call(env, "net_filter", 1, small(c))]
        if c.chance(70):  # what a UDP socket asks for: the fuzzer's frames go to port 9000 or 53
            filt = struct.pack("<HBBHHII", 0x800, 17, 0, c.pick((9000, 53, 0)), 0, 0, 0)
        else:
            filt = struct.pack("<HBBHHII", c.pick((0x800, 0x806, 0x86DD, 0)), c.pick((17, 0, 6, 1)),
                               0 if c.chance(90) else 1, c.pick((0, 7, 9000, 53)), c.pick((0, 0, 7)), 0,
                               0 if c.chance(90) else 1)
        return [_call(env, "net_filter", 0 if c.chance(90) else c.pick((2, U64)), ptr(c, FILTER),
                      mem=((FILTER, filt),))]
    if roll < 6:
        return [_call(env, "net_wait", c.pick((1, 1, 0, h.k.machine.clock.now_ns() + 1000)))]
    frames = [_udp_frame(h, env, c) for _ in range(c.num(0, 3))]
    mem = [(BUF, b"".join(frames))]
    reqs = b""
    off = 0
    for f in frames:
        bad = c.chance(8)
        reqs += struct.pack("<QQ", c.pick(BAD_PTRS) if bad and c.chance(50) else BUF + off,
                            c.pick((0, 13, 1515, U64)) if bad else len(f))
        off += len(f)
    mem.append((REQS, reqs))
    return [_call(env, "net_send", REQS if c.chance(95) else ptr(c, REQS), count(c, len(frames)),
                  c.pick((0, DONE, DONE, CODE_VA)), mem=tuple(mem))]


def r_posix_abi(h: Harness, env: Env, c: Chooser) -> list[Call]:
    """Hypercalls 32-39, the ones a POSIX personality uses (issue 15): reflection and FS base,
    event waits, the doorbell across apps, child records, the error stream, the console's facts,
    the app's quotas."""
    roll = c.num(0, 10)
    if roll < 1:
        slot = c.pick((0, LIBOS_PAGE, LIBOS_PAGE + 8 * 4096, CODE_VA, KERNEL, U64))
        return [_call(env, "env_set_syscall", envid(h, env, c), c.pick((0, 1, 1, 2, U64)), slot)]
    if roll < 3:
        base = c.pick((0, SCRATCH_VA, USER_TOP - 8, USER_TOP, NONCANON, KERNEL, U64))
        return [_call(env, "env_set_fsbase", envid(h, env, c), c.pick((0, 1, 2, U64)), base)]
    if roll < 5:
        mask = c.pick((1, 2, 4, 8, 16, 31, 0, 32, U64)) if c.chance(80) else c.num(0, U64)
        now = h.k.machine.clock.now_ns()
        deadline = c.pick((1, now + 1000, now + 1_000_000, 0 if mask & 31 else 1, U64 >> 1))
        return [_call(env, "event_wait", mask, deadline)]
    if roll < 6:
        k = h.k
        live = [e.id for e in k.envs.values() if e.alive]
        return [_call(env, "env_notify", c.pick(live) if live and c.chance(70) else envid(h, env, c))]
    if roll < 8:
        return [_call(env, "env_reap", envid(h, env, c) if c.chance(50) else 0, ptr(c, INFO))]
    if roll < 9:
        text = b"fuzz: error stream\n"
        return [_call(env, "console_error", ptr(c, BUF), count(c, len(text)), mem=((BUF, text),))]
    if roll < 10:
        return [_call(env, "console_info", ptr(c, INFO))]
    return [_call(env, "quota_info", ptr(c, INFO))]


def r_unknown(h: Harness, env: Env, c: Chooser) -> list[Call]:
    nr = c.pick((len(HYPERCALLS), 64, 255, 1 << 32, 1 << 63, U64))
    return [Call(env.id, nr, (small(c),), (), "unknown")]


def r_random(h: Harness, env: Env, c: Chooser) -> list[Call]:
    """Any hypercall with arbitrary 64-bit registers."""
    hc = c.pick(HYPERCALLS)
    if hc.name in ("sched_op", "net_wait", "console_read"):  # may block or end the env: their own rules
        hc = BY_NAME["null"]
    return [Call(env.id, hc.nr, tuple(c.num(0, U64) if c.chance(50) else small(c) for _ in hc.args), (), "random")]


# (rule, weight): the mix of one step.
RULES: tuple[tuple[Rule, int], ...] = (
    (r_console, 4),
    (r_page_alloc, 10),
    (r_page_map, 8),
    (r_page_unmap, 5),
    (r_mmu_update, 10),
    (r_frame_of, 6),
    (r_env_create, 2),
    (r_adopt, 3),
    (r_env_destroy, 1),
    (r_env_set, 4),
    (r_sched, 3),
    (r_cheap, 3),
    (r_ipc_send, 6),
    (r_ipc_recv, 6),
    (r_disk, 6),
    (r_net, 8),
    (r_posix_abi, 5),
    (r_unknown, 1),
    (r_random, 4),
)
_CUMULATIVE: list[int] = []
for _r, _w in RULES:
    _CUMULATIVE.append((_CUMULATIVE[-1] if _CUMULATIVE else 0) + _w)


def choose_rule(c: Chooser) -> Rule:
    x = c.num(0, _CUMULATIVE[-1] - 1)
    for (rule, _), edge in zip(RULES, _CUMULATIVE):
        if x < edge:
            return rule
    raise AssertionError("unreachable")


def step(h: Harness, c: Chooser) -> list[Call] | None:
    """The calls of one step (None: no environment can run, the episode is over)."""
    envs = h.runnable()
    if not envs:
        return None
    env = c.pick(envs)
    if env.retrying:  # woken from a blocking call: it re-runs that call first
        return [Call(env.id, h.blocked[env.id].nr if env.id in h.blocked else 0, (), (), "resume", resume=True)]
    return choose_rule(c)(h, env, c)


