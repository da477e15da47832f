; uregs (lab 4): what a thread switch must save and restore.
;
; checker(arg): the first thing it checks is its entry state: RDI = arg (the
; thread_create argument) and RSP % 16 == 8 (SysV: as if called). Then it loads
; a pattern made from arg into rbx, rbp, r12-r15, xmm0 and xmm1, yields ROUNDS
; times (the other checker loads its own pattern meanwhile) and checks them all.
; It returns 0 when all is well, else the number of the first wrong item:
;   1 rdi at entry, 2 rsp alignment, 3 rbx, 4 rbp, 5 r12, 6 r13, 7 r14, 8 r15,
;   9 xmm0, 10 xmm1
; Main keeps its own pattern in rbx, r12-r15 across thread_create and the joins.
; Output: "uregs: thread 1 -> 0", "uregs: thread 2 -> 0", "uregs: main kept its registers"
ROUNDS equ 4
ARG1 equ 0x1111
ARG2 equ 0x2222

section .text
_start:
    mov rbx, 0x0b0b0b0b
    mov r12, 0x0c0c0c0c
    mov r13, 0x0d0d0d0d
    lea rdi, [rip + checker]
    mov rsi, ARG1
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r14, rax
    lea rdi, [rip + checker]
    mov rsi, ARG2
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r15, rax
    mov rdi, r14
    call LIB_SCHED_THREAD_JOIN
    lea rdi, [rip + status_fmt]
    mov rsi, r14
    mov rdx, rax
    call LIB_CONSOLE_PRINTF
    mov rdi, r15
    call LIB_SCHED_THREAD_JOIN
    lea rdi, [rip + status_fmt]
    mov rsi, r15
    mov rdx, rax
    call LIB_CONSOLE_PRINTF
    mov rax, 0x0b0b0b0b
    cmp rbx, rax
    jne main_lost
    mov rax, 0x0c0c0c0c
    cmp r12, rax
    jne main_lost
    mov rax, 0x0d0d0d0d
    cmp r13, rax
    jne main_lost
    lea rdi, [rip + main_ok]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_SCHED_THREAD_EXIT
main_lost:
    lea rdi, [rip + main_bad]
    call LIB_CONSOLE_PRINTF
    mov edi, 0x1
    call LIB_SCHED_THREAD_EXIT

; checker(rdi = ARG1 or ARG2)
checker:
    mov rax, rsp
    and rax, 0xf
    cmp rax, 0x8
    jne bad_align
    cmp rdi, ARG1
    je arg_ok
    cmp rdi, ARG2
    jne bad_arg
arg_ok:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov rax, rdi
    shl rax, 0x20
    or rax, rdi                     ; p = arg << 32 | arg
    mov rbx, rax
    lea rbp, [rax + 0x1]
    lea r12, [rax + 0x2]
    lea r13, [rax + 0x3]
    lea r14, [rax + 0x4]
    lea r15, [rax + 0x5]
    lea rcx, [rax + 0x6]
    movq xmm0, rcx
    lea rcx, [rax + 0x7]
    movq xmm1, rcx
    push rax                        ; p, for the checks
    mov ecx, ROUNDS
again:
    push rcx
    call LIB_SCHED_THREAD_YIELD
    pop rcx
    dec ecx
    jnz again
    pop rax
    mov edx, 0x3
    cmp rbx, rax
    jne wrong
    inc edx
    lea rcx, [rax + 0x1]
    cmp rbp, rcx
    jne wrong
    inc edx
    lea rcx, [rax + 0x2]
    cmp r12, rcx
    jne wrong
    inc edx
    lea rcx, [rax + 0x3]
    cmp r13, rcx
    jne wrong
    inc edx
    lea rcx, [rax + 0x4]
    cmp r14, rcx
    jne wrong
    inc edx
    lea rcx, [rax + 0x5]
    cmp r15, rcx
    jne wrong
    inc edx
    movq rsi, xmm0
    lea rcx, [rax + 0x6]
    cmp rsi, rcx
    jne wrong
    inc edx
    movq rsi, xmm1
    lea rcx, [rax + 0x7]
    cmp rsi, rcx
    jne wrong
    xor edx, edx
wrong:
    mov eax, edx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
bad_arg:
    mov eax, 0x1
    ret
bad_align:
    mov eax, 0x2
    ret

section .rodata
status_fmt: .asciz "uregs: thread %d -> %d\n"
main_ok: .asciz "uregs: main kept its registers\n"
main_bad: .asciz "uregs: main lost its registers\n"
