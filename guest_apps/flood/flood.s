; flood [N]: N datagrams of 1472 bytes (the most one Ethernet frame holds) to
; 10.0.2.15:7, back to back, never reading the echoes. Without a net quota the
; exokernel sends them as fast as the guest asks; with one (exo/tenants.py) each
; send waits in guest time until its app's token bucket holds enough bytes.
SOCK_DGRAM equ 2
SIZE equ 1472

section .text
_start:
    mov r12, 10000              ; datagrams left
    cmp rdi, 2
    jb go
    mov rdi, [rsi + 8]          ; argv[1]: a decimal count
    call atoi
    test rax, rax
    jle usage
    mov r12, rax
go:
    mov rdi, SOCK_DGRAM
    call LIB_NET_SOCKET
    test rax, rax
    js failed
    mov r13, rax                ; fd
    call send                   ; one round trip first: the stack learns the echo's MAC (ARP)
    mov rdi, r13
    lea rsi, [rip + buf]
    mov rdx, SIZE
    xor ecx, ecx
    xor r8d, r8d
    xor r9d, r9d
    call LIB_NET_RECVFROM
    test rax, rax
    js failed
next:
    call send
    dec r12
    jnz next
    xor edi, edi
    call LIB_CORE_EXIT
send:

    mov rdi, r13
    lea rsi, [rip + buf]
    mov rdx, SIZE
    xor ecx, ecx
    lea r8, [rip + target]
    mov r9, 16
    call LIB_NET_SENDTO
    test rax, rax
    js failed_pop
    ret
failed_pop:
    add rsp, 8
    jmp failed
%include "usage_fail.inc"

%include "atoi.inc"

section .rodata
usage_msg: db "usage: flood [N]   (N > 0 datagrams to 10.0.2.15 port 7)", 0
fail_msg: db "flood: %s", 10, 0

section .data
target: dw 2                    ; struct sockaddr_in { AF_INET, port 7, 10.0.2.15 } (network order)
    db 0, 7
    db 10, 0, 2, 15
    dq 0

section .bss
buf: resb SIZE
