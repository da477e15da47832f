; ls [DIR]: list a directory of the ext2 disk with sizes (default /)
section .text
_start:
    lea r13, [rip + root]
    cmp rdi, 2
    jb have_dir
    mov r13, [rsi + 8]
have_dir:
    xor r12, r12                ; entry index
next:
    mov rdi, r13
    mov rsi, r12
    lea rdx, [rip + ent]
    call LIB_FS_READDIR
    test rax, rax
    js failed
    jz done
    lea rax, [rip + ent]
    mov rsi, [rax + 16]         ; size
    lea rdx, [rax + 24]         ; name
    mov rcx, [rax + 8]          ; type: 2 = directory
    lea rdi, [rip + filefmt]
    cmp rcx, 2
    jne print
    lea rdi, [rip + dirfmt]
print:
    call LIB_CONSOLE_PRINTF
    inc r12
    jmp next
done:
    xor edi, edi
    call LIB_CORE_EXIT
failed:
    mov rdi, rax
    call LIB_CORE_STRERROR
    mov rdx, rax
    lea rdi, [rip + errfmt]
    mov rsi, r13
    call LIB_CONSOLE_PRINTF
    mov edi, 1
    call LIB_CORE_EXIT

section .rodata
root: db "/", 0
filefmt: db "%8d %s", 10, 0
dirfmt: db "%8d %s/", 10, 0
errfmt: db "ls: %s: %s", 10, 0

section .bss
ent: resb 24 + 256
