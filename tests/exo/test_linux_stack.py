"""The System V initial stack exo/loader.py builds for a Linux program (x86-64 psABI 3.4.1)."""

from __future__ import annotations

import struct

from exo.abi import STACK_TOP
from exo.linux import AT_EXECFN, AT_NULL, AT_PAGESZ, AT_PHDR, AT_PHNUM, AT_RANDOM, linux_stack

LINUX = {"path": b"/bin/prog", "env": (b"A=1", b"HOME=/root"), "seed": 7, "phdr": 0x400040, "phnum": 9,
         "entry": 0x401000, "brk_start": 0x500000, "hwcap": 0x178BFBFF}


def test_layout_argc_argv_envp_auxv():
    stack, rsp = linux_stack(LINUX, [b"/bin/prog", b"x", b""])
    assert rsp % 16 == 0 and rsp + len(stack) == STACK_TOP

    def u64(va: int) -> int:
        return struct.unpack_from("<Q", stack, va - rsp)[0]

    def cstr(va: int) -> bytes:
        return stack[va - rsp : stack.index(b"\0", va - rsp)]

    assert u64(rsp) == 3
    argv = [u64(rsp + 8 * (1 + i)) for i in range(3)]
    assert [cstr(a) for a in argv] == [b"/bin/prog", b"x", b""] and u64(rsp + 32) == 0
    envp = [u64(rsp + 40), u64(rsp + 48)]
    assert [cstr(e) for e in envp] == [b"A=1", b"HOME=/root"] and u64(rsp + 56) == 0
    aux, at = {}, rsp + 64
    while True:
        tag, value = u64(at), u64(at + 8)
        at += 16
        if tag == AT_NULL:
            break
        aux[tag] = value
    assert aux[AT_PHDR] == 0x400040 and aux[AT_PHNUM] == 9 and aux[AT_PAGESZ] == 4096
    assert aux[AT_EXECFN] == argv[0]
    rnd = stack[aux[AT_RANDOM] - rsp : aux[AT_RANDOM] - rsp + 16]
    assert len(rnd) == 16 and aux[AT_RANDOM] + 16 <= STACK_TOP


def test_at_random_follows_the_seed_only():
    a = linux_stack(LINUX, [b"p"])
    assert a == linux_stack(dict(LINUX), [b"p"])  # deterministic
    assert a != linux_stack({**LINUX, "seed": 8}, [b"p"])
