; witness: yields the CPU 8 times (so that the guest booted with it runs in between), then
; prints "witness ok" and exits 0. The lab 2 tests require it to finish whatever the attack
; guest next to it does (docs/labs/lab2.md); lab 1 uses it as a sibling environment.
section .text
_start:
    mov r12d, 0x8
again:
    mov edi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
    dec r12d
    jnz again
    lea rdi, [rip + msg]
    mov esi, 0xb
    call HC_CONSOLE_WRITE
    mov edi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP

section .rodata
msg: db "witness ok", 0xa
