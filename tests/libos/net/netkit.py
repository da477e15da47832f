"""Two pure stacks joined by a fake Ethernet link with a virtual clock (for the libos/net tests)."""

from __future__ import annotations

import random

from libos.net.stack import Stack

MAC_A, MAC_B = "52:54:00:12:34:56", "52:54:00:12:34:57"
IP_A, IP_B = "10.0.2.15", "10.0.2.16"


class Link:
    """Frames sent by one stack are delivered to the other; ``drop`` filters frames (tests of loss)."""

    def __init__(self, mtu: int = 1500) -> None:
        self.t = 1_000_000_000
        self.queues: dict[str, list[bytes]] = {"a": [], "b": []}
        self.sent: dict[str, list[bytes]] = {"a": [], "b": []}
        self.drop = None  # (side, frame) -> bool
        self.a = Stack(MAC_A, IP_A, "255.255.255.0", "10.0.2.2", mtu, self._tx("b"), self.now)
        self.b = Stack(MAC_B, IP_B, "255.255.255.0", "10.0.2.2", mtu, self._tx("a"), self.now)

    def now(self) -> int:
        return self.t

    def _tx(self, to: str):
        def transmit(frames: list[bytes]) -> None:
            for f in frames:
                self.sent["b" if to == "a" else "a"].append(f)
                if self.drop is None or not self.drop(to, f):
                    self.queues[to].append(f)
        return transmit

    def deliver(self) -> int:
        """Deliver queued frames until the link is quiet; how many were delivered."""
        n = 0
        while self.queues["a"] or self.queues["b"]:
            for side, stack in (("a", self.a), ("b", self.b)):
                frames, self.queues[side] = self.queues[side], []
                for f in frames:
                    stack.input(f, self.t)
                    n += 1
        return n

    def run(self, until=lambda: False, limit_ns: int = 600_000_000_000) -> None:
        """Deliver, and jump the clock to the next timer when quiet, until ``until()`` or the limit."""
        end = self.t + limit_ns
        while not until():
            if self.deliver():
                continue
            times = [t for t in (self.a.next_timer(), self.b.next_timer()) if t is not None]
            if not times or min(times) > end:
                return
            self.t = max(self.t, min(times))
            self.a.poll(self.t)
            self.b.poll(self.t)


# The start of a guest that listens on port 9 and accepts one connection (listener in r13, the
# connection in rax), and the address it binds (in .data, where a guest's data may follow).
ACCEPT_ON_9 = """
section .text
_start:
    mov rdi, 1
    call LIB_NET_SOCKET
    mov r13, rax
    mov rdi, r13
    lea rsi, [rip + local]
    mov rdx, 16
    call LIB_NET_BIND
    mov rdi, r13
    mov rsi, 1
    call LIB_NET_LISTEN
    mov rdi, r13
    xor esi, esi
    xor edx, edx
    call LIB_NET_ACCEPT
"""
LOCAL_9 = """
section .data
local: dw 2
    db 0, 9
    dd 0
    dq 0
"""

# A guest that accepts one TCP connection on port 9, counts what it receives until EOF and prints
# the count (test_net_module.py, test_linger.py).
SINK = ACCEPT_ON_9 + """    mov r14, rax
    xor ebx, ebx
more:
    mov rdi, r14
    lea rsi, [rip + buf]
    mov rdx, 65536
    xor ecx, ecx
    call LIB_NET_RECV
    test rax, rax
    jle done
    add rbx, rax
    jmp more
done:
    lea rdi, [rip + fmt]
    mov rsi, rbx
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT
""" + LOCAL_9 + """fmt: db "%d", 10, 0
section .bss
buf: resb 65536
"""


def sender(nbytes: int) -> str:
    """A guest that connects to 10.0.2.15:9, sends ``nbytes`` and closes (the other end of SINK)."""
    return f"\nNBYTES equ {nbytes}\n" + _SENDER_BODY


_SENDER_BODY = """section .text
_start:
    mov rdi, 1
    call LIB_NET_SOCKET
    mov r13, rax
    mov rdi, r13
    lea rsi, [rip + server]
    mov rdx, 16
    call LIB_NET_CONNECT
    test rax, rax
    js failed
    xor ebx, ebx
more:
    mov rdi, r13
    lea rsi, [rip + data]
    add rsi, rbx
    mov rdx, NBYTES
    sub rdx, rbx
    xor ecx, ecx
    call LIB_NET_SEND
    test rax, rax
    js failed
    add rbx, rax
    cmp rbx, NBYTES
    jb more
    mov rdi, r13
    call LIB_NET_CLOSE
    xor edi, edi
    call LIB_CORE_EXIT          ; at once: the library lingers until the data is acknowledged
failed:
    neg rax
    mov rdi, rax
    call LIB_CORE_EXIT
section .data
server: dw 2
    db 0, 9
    db 10, 0, 2, 15
    dq 0
section .bss
data: resb NBYTES
"""


class FaultyLink(Link):
    """A Link whose IPv4 frames are lost, duplicated and reordered (one frame held back until the
    next overtakes it), seeded: the same seed, the same wire."""

    def __init__(self, seed: int, loss: float = 0.1, dup: float = 0.1, reorder: float = 0.1) -> None:
        self.rng = random.Random(seed)
        self.faults = (loss, dup, reorder)
        self.held: dict[str, bytes | None] = {"a": None, "b": None}
        super().__init__()

    def _tx(self, to: str):
        def transmit(frames: list[bytes]) -> None:
            loss, dup, reorder = self.faults
            for f in frames:
                if f[12:14] != b"\x08\x00":  # ARP goes through: the stacks must find each other
                    self.queues[to].append(f)
                    continue
                if self.rng.random() < loss:
                    continue
                for c in [f, f] if self.rng.random() < dup else [f]:
                    if self.held[to] is None and self.rng.random() < reorder:
                        self.held[to] = c
                        continue
                    self.queues[to].append(c)
                    if self.held[to] is not None:
                        self.queues[to].append(self.held[to])
                        self.held[to] = None
        return transmit

    def release(self) -> None:
        """Deliver the frames held back (the wire is quiet: nothing else will overtake them)."""
        for side, f in self.held.items():
            if f is not None:
                self.queues[side].append(f)
                self.held[side] = None
