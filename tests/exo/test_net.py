"""The exokernel's network multiplexing (exo/net.py) from raw-hypercall guests on the switch.

App 0 is 10.0.2.15 / 52:54:00:12:34:56, app 1 is 10.0.2.16 / 52:54:00:12:34:57.
"""

from __future__ import annotations

import struct

import pytest

from tests.conftest import WITNESS, boot

RING = 0x2000_0000

# rx: attach a 2-slot ring, claim UDP port 7, wait, print the payload of what arrives, exit.
RX = f"""
section .text
_start:
    mov rdi, 0
    mov rsi, {RING}
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    mov rdi, {RING}
    mov rsi, 2
    xor edx, edx
    call HC_NET_ATTACH
    test rax, rax
    jnz fail
    mov rdi, NET_FILTER_ADD
    lea rsi, [rip + filt]
    call HC_NET_FILTER
    cmp rax, 0
    jle fail
    xor edi, edi
    call HC_NET_WAIT
    cmp rax, 1
    jne fail
    movzx rsi, word ptr [{RING}]
    sub rsi, 42
    mov rdi, {RING} + 8 + 42
    call HC_CONSOLE_WRITE
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
fail:
    mov rdi, SCHED_EXIT
    mov rsi, 9
    call HC_SCHED_OP
section .rodata
filt: dw 0x0800
    db 17, 0
    dw 7, 0
    dd 0, 0
"""


def udp_frame(src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 1234, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src_ip, dst_ip)
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


MAC0, MAC1 = bytes.fromhex("525400123456"), bytes.fromhex("525400123457")
IP0, IP1 = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 16])


def _db(data: bytes) -> str:
    return "db " + ", ".join(str(b) for b in data)


def tx_source(frame: bytes, after: str = "", gso: int = 0) -> str:
    """Send ``frame`` with net_send (after yielding so the receiver is waiting), print rax as a byte."""
    return f"""
section .text
_start:
    mov r12, 3
again:
    mov rdi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
    dec r12
    jnz again
    lea rax, [rip + frame]
    mov [rip + req], rax
    lea rdi, [rip + req]
    mov rsi, 1
    lea rdx, [rip + done]
    call HC_NET_SEND
    neg rax
    add al, 'A'
    mov [rip + out], al
    mov al, [rip + done]
    add al, '0'
    mov [rip + out + 1], al
    lea rdi, [rip + out]
    mov rsi, 3
    call HC_CONSOLE_WRITE
    {after}
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .data
req: dq 0, {len(frame) | gso << 32}
done: dq 0
out: db "??", 10
frame: {_db(frame)}
"""


def test_a_frame_goes_to_the_environment_whose_filter_claims_it(app):
    rx = app("rx", RX)
    tx = app("tx", tx_source(udp_frame(MAC1, MAC0, IP1, IP0, 7, b"hello over the switch\n")))
    b = boot(rx, tx, net="switch")
    assert b.stdout == b"A1\nhello over the switch\n"  # rax 0 ('A'), 1 sent; then rx's payload
    assert b.env("rx").exit_status == 0 and not b.reports
    stats = b.kernel.net.stats
    assert stats["delivered"] == 1 and stats["tx"] == 1


def test_a_spoofed_source_is_refused_and_nothing_leaves(app):
    rx = app("rx", RX)
    spoof = udp_frame(MAC0, MAC0, IP1, IP0, 7, b"forged\n")  # tx claims to be app 0
    tx = app("tx", tx_source(spoof))
    b = boot(rx, tx, net="switch")
    assert b.stdout.startswith(b"%c0\n" % (ord("A") + 99))  # -EADDRNOTAVAIL, 0 sent
    assert b"forged" not in b.stdout
    assert b.kernel.net.stats["tx_refused"] == 1 and b.kernel.net.nic.stats["tx"] == 0


@pytest.mark.parametrize("kind,gso,want", [
    ("tcp", 1460, "A1"),  # TSO: one 3,000-byte segment leaves as three frames
    ("tcp", 1461, "W0"),  # pieces over the MTU: EINVAL
    ("udp", 1460, "W0"),  # only TCP is cut: EINVAL
    ("tcp", 0, chr(ord("A") + 90) + "0"),  # over the MTU without a segment size: EMSGSIZE
])
def test_net_send_cuts_a_large_tcp_frame_at_its_segment_size(app, kind, gso, want):
    from hw.net import packets as pk

    data = bytes(range(256)) * 12 + bytes(28)  # 3,100 bytes
    if kind == "tcp":
        seg = pk.tcp(IP1, IP0, 1234, 9, 1, 0, 0x18, 1000, data[:3000])
        frame = MAC0 + MAC1 + b"\x08\x00" + pk.ipv4(IP1, IP0, pk.PROTO_TCP, seg)
    else:
        frame = udp_frame(MAC1, MAC0, IP1, IP0, 9, data[:3000])
    tx = app("tx", tx_source(frame, gso=gso))
    b = boot(app("rx", RX), tx, net="switch", max_instructions=2_000_000)
    assert b.stdout.startswith(want.encode("latin-1") + b"\n"), b.stdout
    assert b.kernel.net.nic.stats["tx"] == (3 if want == "A1" else 0)


def test_a_frame_for_a_port_nobody_claims_is_dropped_and_counted(app):
    rx = app("rx", RX)
    tx = app("tx", tx_source(udp_frame(MAC1, MAC0, IP1, IP0, 9, b"to port 9\n")))
    b = boot(rx, tx, net="switch", max_instructions=2_000_000)
    assert b"to port 9" not in b.stdout
    assert b.kernel.net.stats["unclaimed"] == 1
    assert "blocked forever" in (b.env("rx").fault or "")  # no timer, no outside peer: nothing can wake it


def test_without_a_nic_net_hypercalls_say_enodev(app):
    src = """
section .text
_start:
    lea rdi, [rip + info]
    call HC_NET_INFO
    neg rax
    mov rdi, SCHED_EXIT
    mov rsi, rax
    call HC_SCHED_OP
section .data
info: times 32 db 0
"""
    b = boot(app("n", src))
    assert b.envs[0].exit_status == 19  # ENODEV


def test_net_info_tells_each_app_its_addresses(app):
    src = """
section .text
_start:
    lea rdi, [rip + info]
    call HC_NET_INFO
    lea rdi, [rip + info]
    mov rsi, 32
    call HC_CONSOLE_WRITE
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .data
info: times 32 db 0
"""
    b = boot(app("a", src), app("b", src), net="switch")
    a, c = b.stdout[:32], b.stdout[32:]
    mac, mtu, ip, mask, gw, _, _ = struct.unpack("<6sH4s4s4sIQ", a)
    assert (mac, mtu, ip, mask, gw) == (MAC0, 1500, IP0, bytes([255, 255, 255, 0]), bytes([10, 0, 2, 2]))
    assert struct.unpack("<6sH4s4s4sIQ", c)[0:3:2] == (MAC1, IP1)


def test_filters_are_checked_and_one_app_cannot_claim_what_another_holds():
    import pytest

    from exo.abi import PERM_R, PERM_W, Errno
    from exo.errors import HypercallError
    from exo.hypercalls import BY_NAME
    from exo.kernel import Exokernel
    from exo.net import app_address
    from hw import Machine
    from hw.nic import open_nic

    machine = Machine(16 << 20, nic=open_nic("switch"))
    k = Exokernel(machine, on_fault=lambda r: None)
    parent, other = k.create_env("parent"), k.create_env("other")
    k.net.assign(parent, app_address(0))
    k.net.assign(other, app_address(1))
    child = k.create_env("child", parent)
    va = 0x3000_0000

    def add(env, ethertype, proto=0, dport=0, sport=0):
        BY_NAME["page_alloc"].impl(k, env, 0, va, PERM_R | PERM_W) if env.space.lookup(va) is None else None
        env.space.write(va, struct.pack("<HBBHHII", ethertype, proto, 0, dport, sport, 0, 0))
        return k.net.filter(env, 0, va)

    def errno(fn):
        with pytest.raises(HypercallError) as e:
            fn()
        return e.value.errno

    assert errno(lambda: add(parent, 0x86DD)) == Errno.EINVAL  # IPv6: not multiplexed
    assert errno(lambda: add(parent, 0x0800, 0, 80)) == Errno.EINVAL  # a port needs TCP or UDP
    assert errno(lambda: add(parent, 0x0806, 6)) == Errno.EINVAL  # ARP has no protocol
    fid = add(parent, 0x0800, 6, 80)
    assert add(parent, 0x0800, 6, 80) == fid  # the same filter again: idempotent
    assert errno(lambda: add(child, 0x0800, 6, 80)) == Errno.EADDRINUSE  # the child may not take it
    assert add(other, 0x0800, 6, 80) > fid  # another app, another address: no conflict
    # A more specific filter of the child wins over the parent's port filter; a catch-all loses.
    catch_all = add(parent, 0x0800)
    assert catch_all and add(child, 0x0800, 6, 80, 5555) not in (fid, catch_all)
    frame = bytearray(64)
    frame[0:6], frame[12:14] = app_address(0).mac, b"\x08\x00"
    frame[14], frame[23], frame[30:34] = 0x45, 6, app_address(0).ip
    frame[34:38] = struct.pack("!HH", 5555, 80)
    assert k.net._match(parent.id, bytes(frame)).env == child.id
    frame[34:36] = struct.pack("!H", 4444)
    assert k.net._match(parent.id, bytes(frame)).id == fid
    frame[23] = 1  # ICMP
    assert k.net._match(parent.id, bytes(frame)).id == catch_all
    frame[30:34] = app_address(1).ip  # to the other app's IP: not this app's to claim
    assert k.net._match(parent.id, bytes(frame)) is None
    # The child goes: its filters go with it.
    k.destroy(child, exit_status=0)
    assert all(f.env != child.id for f in k.net.filters.values())
    machine.close()


def test_a_full_ring_drops_and_a_bad_ring_is_refused(app):
    # A 1-slot ring that is never given back: the second frame is dropped (ring_full).
    rx = app("rx", RX.replace("mov rsi, 2\n    xor edx, edx", "mov rsi, 1\n    xor edx, edx")
             .replace("xor edi, edi\n    call HC_NET_WAIT", "xor edi, edi\n    call HC_NET_WAIT\n"
                      "    mov r12, 20\nspin:\n    mov rdi, SCHED_YIELD\n    xor esi, esi\n    call HC_SCHED_OP\n"
                      "    dec r12\n    jnz spin\n    xor edi, edi"))
    frame = udp_frame(MAC1, MAC0, IP1, IP0, 7, b"x\n")
    tx = app("tx", tx_source(frame, after="lea rdi, [rip + req]\n    mov rsi, 1\n    xor edx, edx\n"
                                          "    call HC_NET_SEND"))
    b = boot(rx, tx, net="switch")
    assert b.kernel.net.stats["delivered"] == 1 and b.kernel.net.stats["ring_full"] == 1
    bad = """
section .text
_start:
    mov rdi, 0x400000
    mov rsi, 1
    xor edx, edx
    call HC_NET_ATTACH
    neg rax
    mov rdi, SCHED_EXIT
    mov rsi, rax
    call HC_SCHED_OP
"""
    b = boot(app("bad", bad), app("w", WITNESS), net="switch")
    assert b.envs[0].exit_status == 14 and b.stdout == b"ok\n"  # EFAULT: the code page is not writable


def test_no_frame_from_the_wire_can_raise_in_the_exokernel():
    """Random and mutated frames go through the demultiplexer: claimed, unclaimed or malformed, never an exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from exo.abi import PERM_R, PERM_W
    from exo.hypercalls import BY_NAME
    from exo.kernel import Exokernel
    from exo.net import app_address
    from hw import Machine
    from hw.nic import open_nic

    machine = Machine(16 << 20, nic=open_nic("switch"))
    k = Exokernel(machine, on_fault=lambda r: None)
    env = k.create_env("sink")
    k.net.assign(env, app_address(0))
    ring = 0x2000_0000
    for off in range(0, 4 * 2048, 4096):
        BY_NAME["page_alloc"].impl(k, env, 0, ring + off, PERM_R | PERM_W)
    k.net.attach(env, ring, 4)
    for spec in ((0x0806, 0, 0), (0x0800, 0, 0), (0x0800, 17, 7), (0x0800, 6, 80)):  # (staged in slot 3)
        env.space.write(ring + 3 * 2048, struct.pack("<HBBHHII", spec[0], spec[1], 0, spec[2], 0, 0, 0))
        k.net.filter(env, 0, ring + 3 * 2048)
    env.space.write(ring + 3 * 2048, bytes(16))
    base = udp_frame(MAC1, MAC0, IP1, IP0, 7, b"payload")

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(
        st.binary(max_size=1600),
        st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255), st.integers(0, len(base))).map(
            lambda t: (base[: t[0]] + bytes([t[1]]) + base[t[0] + 1 :])[: max(t[2], 0)]),
        st.builds(lambda ihl, total: base[:14] + bytes([0x40 | ihl]) + base[15:16] + total.to_bytes(2, "big")
                  + base[18:], st.integers(0, 15), st.integers(0, 65535)),
    ))
    def check(frame):
        before = dict(k.net.stats)
        k.net.deliver(frame)
        # every frame is accounted for exactly once
        after = k.net.stats
        assert after["rx"] == before["rx"] + 1
        moved = sum(after[c] - before[c] for c in ("delivered", "unclaimed", "malformed", "ring_full"))
        assert moved == 1
        for i in range(4):  # the libOS gives the slots back
            env.space.write(ring + i * 2048 + 2, b"\0\0")

    check()
    machine.close()
