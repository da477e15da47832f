; spin: JOS user/spin.c. A busy environment cannot starve another: the child
; spins forever, yet the timer takes the CPU back at the end of each of its
; slices and the parent runs again, and finally destroys it.

YIELDS equ 8

section .text
_start:
    lea rdi, [rip + forking]
    call LIB_CONSOLE_PRINTF
    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jz child
    mov rbx, rax                ; the child's id (callee-saved: library calls keep it)
    lea rdi, [rip + running]
    call LIB_CONSOLE_PRINTF
    mov r12, YIELDS
again:
    call LIB_CORE_YIELD_CPU     ; the child spins for a whole slice meanwhile
    dec r12
    jnz again
    lea rdi, [rip + killing]
    call LIB_CONSOLE_PRINTF
    mov rdi, rbx
    call HC_ENV_DESTROY
    test rax, rax
    jnz failed
    xor edi, edi
    call LIB_CORE_EXIT

child:
    lea rdi, [rip + spinning]
    call LIB_CONSOLE_PRINTF
forever:
    jmp forever

failed:
    mov rdi, rax
    neg rdi
    call LIB_CORE_EXIT

section .rodata
forking: .asciz "I am the parent.  Forking the child...\n"
spinning: .asciz "I am the child.  Spinning...\n"
running: .asciz "I am the parent.  Running the child...\n"
killing: .asciz "I am the parent.  Killing the child...\n"
