; cat FILE...: print files from the ext2 disk (python -m exo boot guest_apps/cat --disk IMG -- /etc/motd)
BUFSIZE equ 4096

section .text
_start:
    mov r12, rdi                ; argc
    lea r13, [rsi + 8]          ; argv[1]
    cmp r12, 2
    jb usage
next_file:
    dec r12
    jz done
    mov rdi, [r13]
    xor esi, esi                ; O_RDONLY
    xor edx, edx
    call LIB_FS_OPEN
    test rax, rax
    js failed
    mov r14, rax                ; fd
more:
    mov rdi, r14
    lea rsi, [rip + buf]
    mov rdx, BUFSIZE
    call LIB_FS_READ
    test rax, rax
    js failed
    jz eof
    lea rdi, [rip + buf]
    mov rsi, rax
    call LIB_CONSOLE_WRITE
    jmp more
eof:
    mov rdi, r14
    call LIB_FS_CLOSE
    add r13, 8
    jmp next_file
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
errfmt: db "cat: %s: %s", 10, 0
usagemsg: db "usage: cat FILE...", 0

section .bss
buf: resb BUFSIZE
