; lab1_fault: prints "HELLO FROM LAB 1, ENV n!" (the greeting upper-cased) and "bye", exits 0.
; The student's version of this file has two bugs, one in each LAB 1 region (docs/labs/lab1.md,
; exercises fault.shout and fault.say): boot it, read the fault report exo prints, fix the code.
MSG_LEN equ 0x18                ; "hello from lab 1, env n!" without the newline

section .text
_start:
    call HC_ENV_ID
    add al, 0x30                ; the environment id as one digit (this guest is booted alone: 1)
; LAB 1 BEGIN fault.shout: upper-case the greeting in a writable copy and leave its address in rbx
    lea rsi, [rip + msg]        ; .rodata is mapped read-only: copy the text to .bss first
    lea rdi, [rip + shout]
    mov ecx, MSG_LEN
    rep movsb
    lea rbx, [rip + shout]
    mov byte ptr [rbx + MSG_LEN - 0x2], al  ; the id, in the copy
    mov rdi, rbx
    call upcase
; LAB 1 STUB
;     lea rbx, [rip + msg]        ; upper-case the greeting where it is
;     mov byte ptr [rbx + MSG_LEN - 0x2], al
;     mov rdi, rbx
;     call upcase
; LAB 1 END
    mov rdi, rbx
    mov esi, MSG_LEN
    call say
    lea rdi, [rip + bye]
    mov esi, 0x3
    call say
    mov edi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP

; upcase(rdi = text of MSG_LEN bytes): a..z become A..Z, in place.
upcase:
    mov ecx, MSG_LEN
upcase_next:
    mov al, byte ptr [rdi]
    cmp al, 0x61                ; 'a'
    jb upcase_keep
    cmp al, 0x7a                ; 'z'
    ja upcase_keep
    sub al, 0x20
    mov byte ptr [rdi], al
upcase_keep:
    inc rdi
    dec ecx
    jnz upcase_next
    ret

; say(rdi = text, esi = length): write the text and a newline; rax = the bytes written.
; Keeps rbx, which the SysV ABI makes callee-saved (its callers may keep a value there).
say:
; LAB 1 BEGIN fault.say: write the text and then a newline, return the bytes written, keep rbx as the SysV ABI requires
    push rbx
    call HC_CONSOLE_WRITE
    mov rbx, rax                ; the text's count: the next hypercall clobbers rax
    lea rdi, [rip + newline]
    mov esi, 0x1
    call HC_CONSOLE_WRITE
    add rax, rbx
    pop rbx
    ret
; LAB 1 STUB
;     push rbx
;     call HC_CONSOLE_WRITE
;     mov rbx, rax                ; the text's count: the next hypercall clobbers rax
;     lea rdi, [rip + newline]
;     mov esi, 0x1
;     call HC_CONSOLE_WRITE
;     add rax, rbx
;     ret
; LAB 1 END

section .rodata
msg: db "hello from lab 1, env ?!"
bye: db "bye"
newline: db 0xa

section .bss
shout: resb MSG_LEN
