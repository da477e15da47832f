; forktree: JOS user/forktree.c. Each environment prints "<id>: I am '<branch>'"
; and forks two children whose branch names are its own with '0' and '1'
; appended, down to DEPTH: a binary tree of 1 + 2 + 4 + 8 = 15 environments.
;
; The branch name lives in .data: after fork each child has its own copy
; (copy-on-write), so appending to it changes nothing in the parent.
; Output order is deterministic: an environment prints, forks both children
; (they queue behind it) and exits, so the tree is printed breadth first.

DEPTH equ 3

section .text
_start:
    call forktree
    xor edi, edi
    call LIB_CORE_EXIT

; forktree(): print who we are, then forkchild('0') and forkchild('1')
forktree:
    call LIB_CORE_ENV_ID
    mov rsi, rax
    lea rdi, [rip + fmt]
    lea rdx, [rip + branch]
    call LIB_CONSOLE_PRINTF
    mov edi, 0x30           ; '0'
    call forkchild
    mov edi, 0x31           ; '1'
    call forkchild
    ret

; forkchild(c): unless the branch is DEPTH long, fork a child that appends c and recurses
forkchild:
    lea rax, [rip + depth]
    cmp qword ptr [rax], DEPTH
    jae no_child
    push rbx
    mov ebx, edi
    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jz child
    pop rbx
no_child:
    ret
child:
    lea rax, [rip + depth]
    mov rcx, qword ptr [rax]
    lea rdx, [rip + branch]
    mov byte ptr [rdx + rcx], bl
    mov byte ptr [rdx + rcx + 1], 0
    inc rcx
    mov qword ptr [rax], rcx
    call forktree
    xor edi, edi
    call LIB_CORE_EXIT

failed:
    mov rdi, rax
    neg rdi
    call LIB_CORE_EXIT

section .rodata
fmt: .asciz "%d: I am '%s'\n"

section .data
depth: dq 0
branch: times 8 db 0
