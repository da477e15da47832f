; wakeshare (lab 4): a thread that wakes must not be paid for the time it slept.
; A (100 tickets) counts from the start. B (100 tickets) sleeps SLEEP_NS first,
; then notes A's count and counts. Main sleeps RUN_NS, then prints
; "wakeshare: a_at_wake <n> a <n> b <n>". After B's wake-up, A and B must each
; get half the CPU: a - a_at_wake ~= b. Had B kept the pass it had when it fell
; asleep, it would run alone until it had caught up with A (about SLEEP_NS).
SLEEP_NS equ 4000000
RUN_NS equ 12000000

section .text
_start:
    lea rdi, [rip + counter_a]
    lea rsi, [rip + count_a]
    mov edx, 100
    call LIB_SCHED_THREAD_CREATE
    lea rdi, [rip + sleeper_b]
    lea rsi, [rip + count_b]
    mov edx, 100
    call LIB_SCHED_THREAD_CREATE
    mov rdi, RUN_NS
    call LIB_SCHED_THREAD_SLEEP
    lea rdi, [rip + fmt]
    lea rax, [rip + a_at_wake]
    mov rsi, qword ptr [rax]
    lea rax, [rip + count_a]
    mov rdx, qword ptr [rax]
    lea rax, [rip + count_b]
    mov rcx, qword ptr [rax]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT

counter_a:                      ; rdi = its counter
    inc qword ptr [rdi]
    jmp counter_a

sleeper_b:                      ; rdi = its counter
    push rdi
    mov rdi, SLEEP_NS
    call LIB_SCHED_THREAD_SLEEP
    pop rdi
    lea rax, [rip + count_a]
    mov rax, qword ptr [rax]
    lea rcx, [rip + a_at_wake]
    mov qword ptr [rcx], rax
count_b_loop:
    inc qword ptr [rdi]
    jmp count_b_loop

section .rodata
fmt: .asciz "wakeshare: a_at_wake %ld a %ld b %ld\n"

section .data
a_at_wake: dq 0
count_a: dq 0
count_b: dq 0
