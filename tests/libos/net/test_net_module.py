"""The net libOS module in guests: sockets over the exokernel's NIC ring (the in-process switch).

App i of a run is 10.0.2.(15+i); every run uses the virtual clock, so each one
is deterministic.
"""

from __future__ import annotations

import shutil

from conftest import ROOT, boot
from netkit import SINK, sender


def with_args(tmp_path, name: str, args: list[str]):
    d = tmp_path / name
    shutil.copytree(ROOT / "guest_apps" / name, d)
    toml = d / "app.toml"
    toml.write_text(toml.read_text().replace("[libos]", f"args = {args!r}\n\n[libos]".replace("'", '"')))
    return d


UDP_CLIENT = """
section .text
_start:
    mov rdi, 2                  ; SOCK_DGRAM
    call LIB_NET_SOCKET
    test rax, rax
    js failed
    mov r13, rax
    mov r12, 3
again:
    mov rdi, r13
    lea rsi, [rip + msg]
    mov rdx, msglen
    xor ecx, ecx
    lea r8, [rip + server]
    mov r9, 16
    call LIB_NET_SENDTO
    test rax, rax
    js failed
    mov qword ptr [rip + peerlen], 16
    mov rdi, r13
    lea rsi, [rip + buf]
    mov rdx, 2048
    xor ecx, ecx
    lea r8, [rip + peer]
    lea r9, [rip + peerlen]
    call LIB_NET_RECVFROM
    test rax, rax
    js failed
    lea rdi, [rip + buf]
    mov rsi, rax
    call LIB_CONSOLE_WRITE
    dec r12
    jnz again
    mov rdi, r13
    call LIB_NET_CLOSE
    xor edi, edi
    call LIB_CORE_EXIT
failed:
    neg rax
    mov rdi, rax
    call LIB_CORE_EXIT
section .data
server: dw 2
    db 0, 7
    db 10, 0, 2, 15
    dq 0
msg: db "echo me", 10
msglen equ $ - msg
peer: dq 0, 0
peerlen: dq 16
buf: times 2048 db 0
"""

TCP_CLIENT = """
NBYTES equ 200000
section .text
_start:
    xor ecx, ecx                ; out[i] = i * 7 + i / 251 (not a short period)
fill:
    mov eax, ecx
    imul eax, eax, 7
    mov r8d, ecx
    mov r9, rdx
    xor edx, edx
    mov eax, ecx
    mov r10d, 251
    div r10d
    imul r8d, r8d, 7
    add eax, r8d
    lea rdx, [rip + out]
    mov [rdx + rcx], al
    inc rcx
    cmp rcx, NBYTES
    jb fill
    mov rdi, 1                  ; SOCK_STREAM
    call LIB_NET_SOCKET
    test rax, rax
    js failed
    mov r13, rax
    mov rdi, r13
    lea rsi, [rip + server]
    mov rdx, 16
    call LIB_NET_CONNECT
    test rax, rax
    js failed
    xor ebx, ebx                ; sent
    xor r14d, r14d              ; received
loop:
    cmp rbx, NBYTES
    jae receive
    mov rdi, r13
    lea rsi, [rip + out]
    add rsi, rbx
    mov rdx, NBYTES
    sub rdx, rbx
    mov rcx, 0x40               ; MSG_DONTWAIT: keep reading while the window is full
    call LIB_NET_SEND
    cmp rax, -11
    je receive
    test rax, rax
    js failed
    add rbx, rax
receive:
    cmp r14, NBYTES
    jae check
    mov rdi, r13
    lea rsi, [rip + in]
    add rsi, r14
    mov rdx, NBYTES
    sub rdx, r14
    xor ecx, ecx
    cmp rbx, NBYTES
    jae blocking
    mov rcx, 0x40
blocking:
    call LIB_NET_RECV
    cmp rax, -11
    je loop
    test rax, rax
    jle failed
    add r14, rax
    jmp loop
check:
    xor ecx, ecx
compare:
    lea rdx, [rip + out]
    mov al, [rdx + rcx]
    lea rdx, [rip + in]
    cmp al, [rdx + rcx]
    jne bad
    inc rcx
    cmp rcx, NBYTES
    jb compare
    mov rdi, r13
    call LIB_NET_CLOSE
    lea rdi, [rip + okmsg]
    mov rsi, 3
    call LIB_CONSOLE_WRITE
    xor edi, edi
    call LIB_CORE_EXIT
bad:
    mov rdi, 99
    call LIB_CORE_EXIT
failed:
    neg rax
    mov rdi, rax
    call LIB_CORE_EXIT
section .data
server: dw 2
    db 0, 7
    db 10, 0, 2, 15
    dq 0
okmsg: db "ok", 10
section .bss
out: resb NBYTES
in: resb NBYTES
"""


def test_udp_echo_between_two_guests(tmp_path, app):
    server = with_args(tmp_path, "udp_echo", ["3"])
    client = app("udpc", UDP_CLIENT, libos={"net": "tcpip", "console": "buffered"})
    b = boot(server, client, net="switch")
    assert b.reports == []
    assert b.stdout == b"echo me\n" * 3
    assert [e.exit_status for e in b.envs] == [0, 0]
    net = b.envs[1].modules[6]
    assert net.stack.stats.get("input_errors", 0) == 0
    assert net.stack.stats["arp_requests_sent"] == 1


def test_tcp_echo_between_two_guests(tmp_path, app):
    server = with_args(tmp_path, "tcp_echo", ["1"])
    client = app("tcpc", TCP_CLIENT, libos={"net": "tcpip", "console": "buffered"})
    b = boot(server, client, net="switch", max_instructions=400_000_000)
    assert b.reports == []
    assert b.stdout == b"ok\n"
    assert [e.exit_status for e in b.envs] == [0, 0]
    net = b.envs[1].modules[6]
    # Batching: far fewer net_send hypercalls than segments sent (TSO merges some of them further)
    assert net.sends * 2 < net.stack.stats["tcp_segments_sent"]


def test_tcp_echo_over_a_faulty_switch(tmp_path, app):
    server = with_args(tmp_path, "tcp_echo", ["1"])
    client = app("tcpc", TCP_CLIENT, libos={"net": "tcpip", "console": "buffered"})
    b = boot(server, client, net="switch", net_faults="loss=0.05,dup=0.02,reorder=0.05,corrupt=0.02,seed=0",
             max_instructions=400_000_000)
    assert b.reports == [] and b.stdout == b"ok\n"
    assert [e.exit_status for e in b.envs] == [0, 0]
    stats = [e.modules[6].stack.stats for e in b.envs]
    assert all(s.get("input_errors", 0) == 0 for s in stats)
    assert sum(v for s in stats for k, v in s.items() if k.endswith("bad_checksum")) > 0  # corruption was caught


THREADS = """
section .text
_start:
    mov rdi, 2                  ; SOCK_DGRAM
    call LIB_NET_SOCKET
    mov r13, rax
    mov rdi, r13
    lea rsi, [rip + me]
    mov rdx, 16
    call LIB_NET_BIND
    test rax, rax
    jnz failed
    lea rdi, [rip + reader]
    mov rsi, r13
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r14, rax
    call LIB_SCHED_THREAD_YIELD  ; the reader runs and blocks in recvfrom: only it waits
    lea rdi, [rip + mainmsg]
    mov rsi, mainlen
    call LIB_CONSOLE_WRITE
    mov rdi, r13
    lea rsi, [rip + x]
    mov rdx, 1
    xor ecx, ecx
    lea r8, [rip + me]
    mov r9, 16
    call LIB_NET_SENDTO         ; to ourselves: looped back inside the stack, the reader wakes
    mov rdi, r14
    call LIB_SCHED_THREAD_JOIN
    xor edi, edi
    call LIB_CORE_EXIT
failed:
    neg rax
    mov rdi, rax
    call LIB_CORE_EXIT
reader:
    push rbx
    mov rbx, rdi
    mov rdi, rbx
    lea rsi, [rip + buf]
    mov rdx, 64
    xor ecx, ecx
    call LIB_NET_RECV
    lea rdi, [rip + readmsg]
    mov rsi, readlen
    call LIB_CONSOLE_WRITE
    lea rdi, [rip + buf]
    mov rsi, 1
    call LIB_CONSOLE_WRITE
    pop rbx
    xor eax, eax
    ret
section .data
me: dw 2
    db 0, 9
    db 10, 0, 2, 15
    dq 0
x: db "x"
mainmsg: db "main runs", 10
mainlen equ $ - mainmsg
readmsg: db "reader got "
readlen equ $ - readmsg
buf: times 64 db 0
"""


def test_with_sched_only_the_calling_thread_blocks(app):
    a = app("thr", THREADS, libos={"net": "tcpip", "sched": "rr", "console": "buffered"})
    b = boot(a, net="switch")
    assert b.reports == []
    assert b.stdout == b"main runs\nreader got x"
    assert b.envs[0].exit_status == 0


REFUSED = """
section .text
_start:
    mov rdi, 1                  ; SOCK_STREAM
    call LIB_NET_SOCKET
    mov r13, rax
    mov rdi, r13
    lea rsi, [rip + closed]
    mov rdx, 16
    call LIB_NET_CONNECT        ; app 0 has no listener on port 80: it answers with a reset
    mov r12, rax
    mov rdi, 0x802              ; SOCK_DGRAM | SOCK_NONBLOCK
    call LIB_NET_SOCKET
    mov r13, rax
    mov rdi, r13
    lea rsi, [rip + buf]
    mov rdx, 64
    xor ecx, ecx
    call LIB_NET_RECV           ; nothing there, non-blocking: -EAGAIN
    cmp rax, -11
    jne bad
    mov rdi, r13
    lea rsi, [rip + buf]
    mov rdx, 1
    xor ecx, ecx
    lea r8, [rip + echo]
    mov r9, 16
    call LIB_NET_SENDTO         ; lets the echo server finish
    mov rdi, r12
    neg rdi
    call LIB_CORE_EXIT
bad:
    mov rdi, 99
    call LIB_CORE_EXIT
section .data
closed: dw 2
    db 0, 80
    db 10, 0, 2, 15
    dq 0
echo: dw 2
    db 0, 7
    db 10, 0, 2, 15
    dq 0
buf: times 64 db 0
"""


def test_connect_to_a_closed_port_is_refused_and_nonblocking_gives_eagain(tmp_path, app):
    server = with_args(tmp_path, "udp_echo", ["1"])
    client = app("refused", REFUSED, libos={"net": "tcpip"})
    b = boot(server, client, net="switch")
    assert b.reports == []
    assert [e.exit_status for e in b.envs] == [0, 111]  # ECONNREFUSED
    assert b.envs[0].modules[6].stack.stats["tcp_resets_sent"] == 1



SENDER = sender(300_000)


def test_data_sent_before_exit_is_delivered(app):
    sink = app("sink", SINK, libos={"net": "tcpip", "console": "buffered"})
    sender = app("sender", SENDER, libos={"net": "tcpip"})
    b = boot(sink, sender, net="switch", max_instructions=400_000_000)
    assert b.reports == []
    assert b.stdout == b"300000\n"
    assert [e.exit_status for e in b.envs] == [0, 0]
