; lab1_wc: wc(1) in assembly on raw hypercalls (docs/labs/lab1.md, exercises wc.count and wc.print).
; Reads console input to its end, counts lines (newlines), words (runs of non-space bytes; the
; spaces are ' ', \t, \n, \v, \f, \r as in C's isspace) and bytes, prints "LINES WORDS BYTES\n"
; and exits 0 (1 if a hypercall fails).
; Hypercalls (docs/abi.md): console_read(buf, len) -> bytes read, 0 at end of input;
; console_write(buf, len) -> bytes written; sched_op(SCHED_EXIT, status). A hypercall
; clobbers RAX (its result), RCX and R11 (the `syscall` instruction); every other register is kept.
BUFSIZE equ 0x1000

section .text
_start:
    xor r12d, r12d              ; lines
    xor r13d, r13d              ; words
    xor r14d, r14d              ; bytes
    xor r15d, r15d              ; 1 while inside a word (a word may span two reads)
; LAB 1 BEGIN wc.count: read console input to its end (console_read) and count lines (r12), words (r13) and bytes (r14)
read_more:
    lea rdi, [rip + buf]
    mov esi, BUFSIZE
    call HC_CONSOLE_READ
    test rax, rax
    jz counted                  ; end of input
    js failed
    add r14, rax
    lea rbx, [rip + buf]
    lea rbp, [rbx + rax]        ; end of what was read
next_byte:
    cmp rbx, rbp
    je read_more
    movzx eax, byte ptr [rbx]
    inc rbx
    cmp al, 0xa
    jne not_newline
    inc r12
not_newline:
    cmp al, 0x20                ; ' '
    je in_space
    cmp al, 0x9                 ; '\t' .. '\r' are 9..13
    jb in_word
    cmp al, 0xd
    jbe in_space
in_word:
    test r15d, r15d
    jnz next_byte
    mov r15d, 0x1               ; a word starts here
    inc r13
    jmp next_byte
in_space:
    xor r15d, r15d
    jmp next_byte
; LAB 1 END

counted:
    mov rdi, r12
    mov esi, 0x20               ; ' '
    call print_u64
    mov rdi, r13
    mov esi, 0x20
    call print_u64
    mov rdi, r14
    mov esi, 0xa                ; '\n'
    call print_u64
    mov edi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
failed:
    mov edi, SCHED_EXIT
    mov esi, 0x1
    call HC_SCHED_OP

; print_u64(rdi = value, sil = a character written after it): one console_write.
print_u64:
; LAB 1 BEGIN wc.print: write rdi in decimal followed by the character in sil, with one console_write
    lea r8, [rip + numbuf + 0x18]   ; fill the digits backwards from the end of numbuf
    mov byte ptr [r8], sil
    mov rax, rdi
    mov ecx, 0xa
digit:
    xor edx, edx
    div rcx                     ; rax = value / 10, rdx = the last digit
    add dl, 0x30                ; '0'
    dec r8
    mov byte ptr [r8], dl
    test rax, rax
    jnz digit
    mov rdi, r8
    lea rsi, [rip + numbuf + 0x19]
    sub rsi, r8                 ; the digits and the character
    call HC_CONSOLE_WRITE
    ret
; LAB 1 END

section .bss
buf: resb BUFSIZE
numbuf: resb 0x20               ; 20 digits at most (2**64 - 1) and the character
