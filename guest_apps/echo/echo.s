; echo: copy console input to console output until end of input, then exit 0.
; Hypercalls (docs/abi.md): console_read(buf, len) blocks until input arrives and
; returns 0 at end of input; console_write(buf, len) writes everything.
BUFSIZE equ 4096

section .text
_start:
read_more:
    lea rdi, [rip + buf]
    mov rsi, BUFSIZE
    call HC_CONSOLE_READ
    test rax, rax
    jz done                 ; end of input
    js failed
    mov rsi, rax            ; write exactly what was read
    lea rdi, [rip + buf]
    call HC_CONSOLE_WRITE
    test rax, rax
    js failed
    jmp read_more
done:
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
failed:
    mov rdi, SCHED_EXIT
    mov rsi, 1
    call HC_SCHED_OP

section .bss
buf: resb BUFSIZE
