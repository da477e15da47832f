; witness (lab 3): boot it beside a guest that must be stopped: it gives the CPU
; away a few times (the other guest runs and faults meanwhile), does some work
; and must still get to say so.
section .text
_start:
    mov ebx, 0x8
again:
    call LIB_CORE_YIELD_CPU
    dec ebx
    jnz again
    mov ecx, 0x10000
work:
    dec ecx
    jnz work
    lea rdi, [rip + msg]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT

section .rodata
msg: .asciz "witness: still running\n"
