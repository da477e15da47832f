; pingpong (lab 4): cooperative user-level threads. Main creates "ping" and
; "pong", then joins them in turn. Each thread prints its word and a counter,
; yields, three times, and returns 3 (ping) or 4 (pong): thread_join hands main
; the status. Under rr the output is exactly
;   main: created 1 2 / ping 0 / pong 0 / ping 1 / pong 1 / ping 2 / pong 2 /
;   main: joined 3 4
; The whole run is far shorter than a slice: no timer upcall switches here.
ROUNDS equ 3

section .text
_start:
    lea rdi, [rip + player]
    lea rsi, [rip + ping]
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r12, rax
    lea rdi, [rip + player]
    lea rsi, [rip + pong]
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r13, rax
    lea rdi, [rip + created_fmt]
    mov rsi, r12
    mov rdx, r13
    call LIB_CONSOLE_PRINTF
    mov rdi, r12
    call LIB_SCHED_THREAD_JOIN
    mov r14, rax
    mov rdi, r13
    call LIB_SCHED_THREAD_JOIN
    lea rdi, [rip + joined_fmt]
    mov rsi, r14
    mov rdx, rax
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_SCHED_THREAD_EXIT      ; the last thread: the environment exits with 0

; player(rdi = &{word, status}): ROUNDS times print "<word> <i>" and yield; return status
player:
    push rbx
    push r12
    push r13
    mov r12, rdi
    xor ebx, ebx
round:
    lea rdi, [rip + round_fmt]
    lea rsi, [r12 + 8]
    mov rdx, rbx
    call LIB_CONSOLE_PRINTF
    call LIB_SCHED_THREAD_YIELD
    inc ebx
    cmp ebx, ROUNDS
    jne round
    mov rax, qword ptr [r12]
    pop r13
    pop r12
    pop rbx
    ret                             ; to thread_exit(rax)

section .rodata
created_fmt: .asciz "main: created %d %d\n"
joined_fmt: .asciz "main: joined %d %d\n"
round_fmt: .asciz "%s %d\n"
ping: dq 3
    .asciz "ping"
pong: dq 4
    .asciz "pong"
