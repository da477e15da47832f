; witness: a well-behaved guest booted next to the lab guests (docs/labs/lab2.md). It allocates a
; page of its own, stores a secret in it (computed at run time: no image holds its bytes), offers
; the page read-only to environment 1 (the guest booted first) with ipc_try_send, yields the CPU
; 8 times so that the other guest runs in between, then checks its page: "witness ok" and exit 0
; if the secret is intact, "witness corrupted" and exit 1 if someone wrote into its page.
WPAGE equ 0x50000000
SECRET_A equ 0x5ec2e7005ec2e700
SECRET_B equ 0x0123456789abcdef

section .text
_start:
    xor edi, edi
    mov esi, WPAGE
    mov edx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz corrupted
    mov rax, SECRET_A
    mov rbx, SECRET_B
    xor rax, rbx
    mov rbx, WPAGE
    mov qword ptr [rbx], rax
    mov edi, 0x1                    ; envid 1: the guest booted first (the result does not matter)
    xor esi, esi
    mov edx, WPAGE
    mov r10d, PERM_R
    call HC_IPC_TRY_SEND
    mov r12d, 0x8
again:
    mov edi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
    dec r12d
    jnz again
    mov rax, SECRET_A
    mov rbx, SECRET_B
    xor rax, rbx
    mov rbx, WPAGE
    cmp qword ptr [rbx], rax
    jne corrupted
    lea rdi, [rip + ok]
    mov esi, 0xb
    call HC_CONSOLE_WRITE
    mov edi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
corrupted:
    lea rdi, [rip + bad]
    mov esi, 0x12
    call HC_CONSOLE_WRITE
    mov edi, SCHED_EXIT
    mov esi, 0x1
    call HC_SCHED_OP

section .rodata
ok: db "witness ok", 0xa
bad: db "witness corrupted", 0xa
