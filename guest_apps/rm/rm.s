; rm PATH...: rm on the ext2 disk (data reaches the disk at exit)
section .text
_start:
    mov r12, rdi
    lea r13, [rsi + 8]
    cmp r12, 2
    jb usage
next:
    dec r12
    jz done
    mov rdi, [r13]
    mov rsi, 0x1ed              ; 0755 (mkdir)
    call LIB_FS_UNLINK
    test rax, rax
    js failed
    add r13, 8
    jmp next
done:
    xor edi, edi
    call LIB_CORE_EXIT
failed:
    mov rdi, rax
    call LIB_CORE_STRERROR
    mov rdx, rax
    lea rdi, [rip + errfmt]
    mov rsi, [r13]
    call LIB_CONSOLE_PRINTF
    mov edi, 1
    call LIB_CORE_EXIT
usage:
    lea rdi, [rip + usagemsg]
    call LIB_CONSOLE_PUTS
    mov edi, 2
    call LIB_CORE_EXIT

section .rodata
errfmt: db "rm: %s: %s", 10, 0
usagemsg: db "usage: rm PATH...", 0
