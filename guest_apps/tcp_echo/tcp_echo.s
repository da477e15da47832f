; tcp_echo [N]: the RFC 862 echo service over TCP, port 7, one user-level
; thread per connection (the sched module), so many clients are served at once.
; With N, exit 0 once N connections have been served (autograders); without,
; serve until exo is stopped.
;
;   python -m exo boot guest_apps/tcp_echo --net user,hostfwd=tcp:127.0.0.1:5556-:7
;   (on the host)  nc 127.0.0.1 5556
SOCK_STREAM equ 1
BUFSIZE equ 8192                ; half the thread's 16 KiB stack (libos/sched.py STACK_PAGES)
MAXCONN equ 1024

section .text
_start:
    mov r12, -1                 ; connections left to accept (-1: forever)
    cmp rdi, 2
    jb serve
    mov rdi, [rsi + 8]
    call atoi
    test rax, rax
    jle usage
    cmp rax, MAXCONN
    ja usage
    mov r12, rax
serve:
    mov rdi, SOCK_STREAM
    call LIB_NET_SOCKET
    test rax, rax
    js failed
    mov r13, rax                ; the listening socket
    mov rdi, r13
    lea rsi, [rip + local]
    mov rdx, 16
    call LIB_NET_BIND
    test rax, rax
    js failed
    mov rdi, r13
    mov rsi, 64                 ; backlog
    call LIB_NET_LISTEN
    test rax, rax
    js failed
    xor ebx, ebx                ; threads started
accept_next:
    cmp rbx, r12                ; (r12 = -1: never equal)
    je join_all
    mov rdi, r13
    xor esi, esi
    xor edx, edx
    call LIB_NET_ACCEPT
    test rax, rax
    jns accepted
    cmp rax, -EMFILE            ; out of descriptors or memory: the server lives on; a connection
    je accept_wait              ; that ends frees one, so try again a little later
    cmp rax, -ENOMEM
    je accept_wait
    jmp failed
accept_wait:
    mov rdi, 10000000           ; 10 ms of guest time
    call LIB_SCHED_THREAD_SLEEP
    jmp accept_next
accepted:
    lea rdi, [rip + connection]
    mov rsi, rax                ; its fd
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    test rax, rax
    js failed
    cmp r12, -1
    je accept_next              ; serving forever: nobody joins
    lea rcx, [rip + tids]
    mov [rcx + rbx*8], rax
    inc rbx
    jmp accept_next
join_all:
    xor r14d, r14d
join_next:
    cmp r14, rbx
    je done
    lea rcx, [rip + tids]
    mov rdi, [rcx + r14*8]
    call LIB_SCHED_THREAD_JOIN
    inc r14
    jmp join_next
done:
    mov rdi, r13
    call LIB_NET_CLOSE
    xor edi, edi
    call LIB_SCHED_THREAD_EXIT  ; the last thread: the environment exits 0
%include "usage_fail.inc"

; connection(fd): echo until the client closes, then close. Runs as its own thread;
; its buffer is on its own stack.
connection:
    push rbx
    push r12
    mov rbx, rdi                ; fd
    sub rsp, BUFSIZE
echo_more:
    mov rdi, rbx
    mov rsi, rsp
    mov rdx, BUFSIZE
    xor ecx, ecx
    call LIB_NET_RECV
    test rax, rax
    jle closing                 ; 0: the client closed; < 0: reset or timed out
    mov r12, rax                ; bytes to send back
    xor r8d, r8d                ; sent so far
send_more:
    mov rdi, rbx
    lea rsi, [rsp + r8]
    mov rdx, r12
    sub rdx, r8
    xor ecx, ecx
    push r8
    push r8
    call LIB_NET_SEND
    pop r8
    pop r8
    test rax, rax
    js closing
    add r8, rax
    cmp r8, r12
    jb send_more
    jmp echo_more
closing:
    mov rdi, rbx
    call LIB_NET_CLOSE
    add rsp, BUFSIZE
    pop r12
    pop rbx
    xor eax, eax
    ret

%include "atoi.inc"

section .rodata
usage_msg: db "usage: tcp_echo [N]   (1 <= N <= 1024: exit after N connections)", 0
fail_msg: db "tcp_echo: %s", 10, 0

section .data
local: dw 2                     ; struct sockaddr_in { AF_INET, port 7, 0.0.0.0 }
    db 0, 7
    dd 0
    dq 0

section .bss
tids: resq MAXCONN
