; udp_echo [N]: the RFC 862 echo service over UDP, port 7: every datagram goes
; back to its sender unchanged. With N, exit 0 after N datagrams (autograders);
; without, serve until exo is stopped.
;
;   python -m exo boot guest_apps/udp_echo --net user,hostfwd=udp:127.0.0.1:5555-:7
;   (on the host)  echo hi | nc -u -w1 127.0.0.1 5555
SOCK_DGRAM equ 2
BUFSIZE equ 65536              ; IPv4's largest UDP datagram carries 65,507 bytes

section .text
_start:
    mov r12, -1                 ; datagrams left (-1: forever)
    cmp rdi, 2
    jb serve
    mov rdi, [rsi + 8]          ; argv[1]: a decimal count
    call atoi
    test rax, rax
    jle usage
    mov r12, rax
serve:
    mov rdi, SOCK_DGRAM
    call LIB_NET_SOCKET
    test rax, rax
    js failed
    mov r13, rax                ; fd
    mov rdi, r13
    lea rsi, [rip + local]
    mov rdx, 16
    call LIB_NET_BIND
    test rax, rax
    js failed
next:
    test r12, r12
    jz done
    mov qword ptr [rip + peerlen], 16
    mov rdi, r13
    lea rsi, [rip + buf]
    mov rdx, BUFSIZE
    xor ecx, ecx
    lea r8, [rip + peer]
    lea r9, [rip + peerlen]
    call LIB_NET_RECVFROM
    test rax, rax
    js failed
    mov rdi, r13
    lea rsi, [rip + buf]
    mov rdx, rax                ; exactly what arrived
    xor ecx, ecx
    lea r8, [rip + peer]
    mov r9, 16
    call LIB_NET_SENDTO
    test rax, rax
    js failed
    dec r12
    jmp next
done:
    xor edi, edi
    call LIB_CORE_EXIT
%include "usage_fail.inc"

%include "atoi.inc"

section .rodata
usage_msg: db "usage: udp_echo [N]   (N > 0: exit after N datagrams)", 0
fail_msg: db "udp_echo: %s", 10, 0

section .data
local: dw 2                     ; struct sockaddr_in { AF_INET, port 7 (network order), 0.0.0.0 }
    db 0, 7
    dd 0
    dq 0
peerlen: dq 16

section .bss
peer: resb 16
buf: resb BUFSIZE
