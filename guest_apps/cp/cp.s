; cp SRC DST: copy a file on the ext2 disk, then fsync it
BUFSIZE equ 4096
O_WRONLY_CREAT_TRUNC equ 0x241

section .text
_start:
    cmp rdi, 3
    jne usage
    mov r15, rsi
    mov rdi, [r15 + 8]
    xor esi, esi
    xor edx, edx
    call LIB_FS_OPEN
    test rax, rax
    js failed
    mov r12, rax                ; source fd
    mov rdi, [r15 + 16]
    mov rsi, O_WRONLY_CREAT_TRUNC
    mov rdx, 0x1a4              ; 0644
    call LIB_FS_OPEN
    test rax, rax
    js failed
    mov r13, rax                ; destination fd
copy:
    mov rdi, r12
    lea rsi, [rip + buf]
    mov rdx, BUFSIZE
    call LIB_FS_READ
    test rax, rax
    js failed
    jz copied
    mov rdi, r13
    lea rsi, [rip + buf]
    mov rdx, rax
    call LIB_FS_WRITE
    test rax, rax
    js failed
    jmp copy
copied:
    mov rdi, r13
    call LIB_FS_FSYNC
    test rax, rax
    js failed
    xor edi, edi
    call LIB_CORE_EXIT
failed:
    mov rdi, rax
    call LIB_CORE_STRERROR
    mov rsi, rax
    lea rdi, [rip + errfmt]
    call LIB_CONSOLE_PRINTF
    mov edi, 1
    call LIB_CORE_EXIT
usage:
    lea rdi, [rip + usagemsg]
    call LIB_CONSOLE_PUTS
    mov edi, 2
    call LIB_CORE_EXIT

section .rodata
errfmt: db "cp: %s", 10, 0
usagemsg: db "usage: cp SRC DST", 0

section .bss
buf: resb BUFSIZE
