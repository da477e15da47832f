; spinners (lab 4): CPU shares under the virtual clock (1 ns per instruction).
; Three threads count in a two-instruction loop and never yield, so only
; preemption (the timer upcall) moves the CPU between them. Main sleeps RUN_NS,
; then prints the counts and exits (which ends the spinners): a count times 2 is
; the CPU time that thread got, in ns.
RUN_NS equ 12000000

section .text
_start:
    xor ebx, ebx
make:
    lea rdi, [rip + spinner]
    lea rsi, [rip + counts]
    lea rsi, [rsi + rbx*8]
    lea rdx, [rip + tickets]
    mov rdx, qword ptr [rdx + rbx*8]
    call LIB_SCHED_THREAD_CREATE
    test rax, rax
    js failed
    inc rbx
    cmp rbx, 0x3
    jne make
    mov rdi, RUN_NS
    call LIB_SCHED_THREAD_SLEEP
    lea rdi, [rip + fmt]
    lea rax, [rip + counts]
    mov rsi, qword ptr [rax]
    mov rdx, qword ptr [rax + 8]
    mov rcx, qword ptr [rax + 16]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT
failed:
    mov edi, 0x1
    call LIB_CORE_EXIT

spinner:                        ; rdi = its counter: count forever
    inc qword ptr [rdi]
    jmp spinner

section .rodata
tickets: dq 100, 200, 300
fmt: .asciz "counts %ld %ld %ld\n"

section .bss
counts: resq 3
