; latency (lab 4): an interactive thread beside CPU hogs. It works a little
; (about 6,000 ns), naps NAP ns, and measures with time_ns how late it was
; dispatched after its wake-up time; ROUNDS times. Main joins it and prints
; "latency: total <ns> worst <ns>". A sleeper is woken at the next slice
; boundary (the timer upcall looks at the sleepers), so the latency is the rest
; of the current hog's slice plus whatever the policy runs before it.
HOGS equ 3
ROUNDS equ 20
NAP equ 20000

section .text
_start:
    xor ebx, ebx
hogs:
    lea rdi, [rip + hog]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    inc rbx
    cmp rbx, HOGS
    jne hogs
    lea rdi, [rip + interactive]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov rdi, rax
    call LIB_SCHED_THREAD_JOIN
    lea rdi, [rip + fmt]
    lea rax, [rip + total]
    mov rsi, qword ptr [rax]
    lea rax, [rip + worst]
    mov rdx, qword ptr [rax]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT              ; ends the hogs too

hog:
    jmp hog

interactive:
    push rbx
    push r12
    mov rbx, ROUNDS
nap:
    mov rcx, 3000
work:
    dec rcx
    jnz work
    call LIB_CORE_TIME_NS
    mov r12, rax
    mov rdi, NAP
    call LIB_SCHED_THREAD_SLEEP
    call LIB_CORE_TIME_NS
    sub rax, r12
    sub rax, NAP                    ; how late: past the requested wake-up time
    lea rcx, [rip + total]
    add qword ptr [rcx], rax
    lea rcx, [rip + worst]
    cmp rax, qword ptr [rcx]
    jbe not_worse
    mov qword ptr [rcx], rax
not_worse:
    dec rbx
    jnz nap
    pop r12
    pop rbx
    xor eax, eax
    ret

section .rodata
fmt: .asciz "latency: total %ld worst %ld\n"

section .data
total: dq 0
worst: dq 0
