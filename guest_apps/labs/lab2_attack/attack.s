; lab2_attack NAME: one attack on the exokernel's protection checks (docs/labs/lab2.md), booted
; with guest_apps/labs/witness. The exit status says how it went:
;   the errno (EPERM 1, EFAULT 0xe, EINVAL 0x16) of the refused hypercall: the exokernel held;
;   BROKEN (0x64): the hypercall did what it must not do;
;   a fault report: the guest tried the forbidden access itself after the refusal (protect_rodata).
; mmu_steal exits EPERM when no frame it could map held the witness's secret and it mapped at
; least one frame of its own (0x61: it could map none, the checks refuse too much).
VA1 equ 0x40000000
VA2 equ 0x40001000
BROKEN equ 0x64
TOO_STRICT equ 0x61
SETUP_FAILED equ 0x62
USAGE equ 0x63
FRAMES equ 0x1000               ; frames of a 16 MiB machine (the tests boot with ram_mib=16)
SECRET_A equ 0x5ec2e7005ec2e700 ; the witness's secret is SECRET_A ^ SECRET_B (witness.s)
SECRET_B equ 0x0123456789abcdef
KERNEL_VA equ 0xffff800000000000

section .text
_start:
    cmp rdi, 0x2
    jb usage
    mov r13, qword ptr [rsi + 0x8]  ; argv[1]: the attack's name
    mov edi, SCHED_YIELD            ; let the witness set its page up first
    xor esi, esi
    call HC_SCHED_OP
    mov edi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
    lea rbx, [rip + attacks]        ; {name offset, handler offset} pairs, from `attacks`
dispatch:
    mov eax, dword ptr [rbx]
    test eax, eax
    jz usage
    lea rsi, [rip + attacks]
    add rsi, rax
    mov rdi, r13
    call streq
    je found
    add rbx, 0x8
    jmp dispatch
found:
    mov eax, dword ptr [rbx + 0x4]
    lea rcx, [rip + _start]
    add rax, rcx
    jmp rax

; ------------------------------------------------------------ page addresses (check_user_va)
map_exo_region:
    mov esi, HYPERCALL_PAGE
    jmp alloc_rw
map_low:
    mov esi, 0x8000                 ; below USER_BOTTOM (64 KiB)
    jmp alloc_rw
map_kernel:
    mov rsi, KERNEL_VA
    jmp alloc_rw
map_uvpt:
    mov rsi, UVPT
    jmp alloc_rw
map_unaligned:
    mov esi, VA1 + 0x123
alloc_rw:
    xor edi, edi
    mov edx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    jmp verdict

; ------------------------------------------------------------ permission bits (perm_to_pte)
perm_wx:
    xor edi, edi
    mov esi, VA1
    mov edx, PERM_R | PERM_W | PERM_X
    call HC_PAGE_ALLOC
    jmp verdict
perm_bad_bits:
    xor edi, edi
    mov esi, VA1
    mov edx, PERM_W                 ; writable but not readable
    call HC_PAGE_ALLOC
    test rax, rax
    jns broken
    xor edi, edi
    mov esi, VA1
    mov edx, PERM_R | 0x10          ; a bit the ABI does not define
    call HC_PAGE_ALLOC
    jmp verdict

; ------------------------------------------------------------ sharing (page_map, _check_share)
share_add_write:
    mov edx, PERM_R
    call alloc_va1
    mov r8d, PERM_R | PERM_W
    jmp share
share_add_exec:
    mov edx, PERM_R
    call alloc_va1
    mov r8d, PERM_R | PERM_X
share:
    xor edi, edi
    mov esi, VA1
    xor edx, edx
    mov r10d, VA2
    call HC_PAGE_MAP
    jmp verdict

; ------------------------------------------------------------ W^X across mappings (_check_wx)
wx_alias:                           ; writable at VA1, then executable at VA2
    mov edx, PERM_R | PERM_W
    call alloc_va1
    mov r12d, PERM_R | PERM_X
    jmp map_va1_frame_at_va2
wx_alias_rev:                       ; executable at VA1, then writable at VA2
    mov edx, PERM_R | PERM_X
    call alloc_va1
    mov r12d, PERM_R | PERM_W
map_va1_frame_at_va2:
    mov edi, VA1
    call HC_FRAME_OF
    test rax, rax
    js setup_failed
    mov edi, MMU_MAP
    mov esi, VA2
    mov rdx, rax
    mov rcx, r12
    call mmu_one
    jmp verdict

; ------------------------------------------------------------ maximum rights (check_max_right)
protect_rodata:
    mov edi, MMU_PROTECT
    lea rsi, [rip + rodata_page]
    xor edx, edx
    mov ecx, PERM_R | PERM_W
    call mmu_one                    ; refused (EPERM) or not, try the write
    mov byte ptr [rip + rodata_page], 0x21
    jmp broken

; ------------------------------------------------------------ frame ownership (mmu_update)
mmu_steal:                          ; map every frame number read-only at VA2, look for the secret
    xor r12d, r12d                  ; frame number
    xor r14d, r14d                  ; frames it could map
    mov rax, SECRET_A
    mov r15, SECRET_B
    xor r15, rax
steal_next:
    mov edi, MMU_MAP
    mov esi, VA2
    mov rdx, r12
    mov ecx, PERM_R
    call mmu_one
    test rax, rax
    jnz steal_skip
    inc r14
    mov eax, VA2
    cmp qword ptr [rax], r15
    je broken
steal_skip:
    inc r12
    cmp r12, FRAMES
    jb steal_next
    test r14, r14
    jz too_strict
    mov esi, EPERM
    jmp exit
mmu_protect_shared:                 ; take the witness's read-only page, then make it writable
    mov edi, VA2
    lea rsi, [rip + ipc_info]
    xor edx, edx
    call HC_IPC_RECV
    test rax, rax
    jnz setup_failed
    cmp qword ptr [rip + ipc_info + 0x10], PERM_R
    jne setup_failed
    mov edi, MMU_PROTECT
    mov esi, VA2
    xor edx, edx
    mov ecx, PERM_R | PERM_W
    call mmu_one
    test rax, rax
    js verdict
    mov eax, VA2
    mov qword ptr [rax], 0x0        ; the witness finds its secret gone
    jmp broken

; ------------------------------------------------------------ user pointers (user_chunks)
console_read_code:
    lea rdi, [rip + _start]
    mov esi, 0x1
    call HC_CONSOLE_READ
    jmp verdict
console_read_pagetable:
    mov rdi, UVPT + (IMAGE_BASE >> 0x9)  ; the PTE of the image's first page: UVPT + (va >> 12) * 8
    mov esi, 0x8
    call HC_CONSOLE_READ
    jmp verdict
mmu_done_readonly:
    mov edi, MMU_UNMAP              ; a harmless request (nothing is mapped at VA2)
    mov esi, VA2
    xor edx, edx
    xor ecx, ecx
    call mmu_fill
    lea rdi, [rip + req]
    mov esi, 0x1
    lea rdx, [rip + rodata_page]    ; "done" goes to a read-only page
    call HC_MMU_UPDATE
    jmp verdict

; ------------------------------------------------------------ helpers
; verdict(rax = a hypercall's result): refused -> exit with the errno; done -> BROKEN.
verdict:
    test rax, rax
    jns broken
    neg rax
    mov rsi, rax
    jmp exit
broken:
    mov esi, BROKEN
    jmp exit
too_strict:
    mov esi, TOO_STRICT
    jmp exit
setup_failed:
    mov esi, SETUP_FAILED
    jmp exit
usage:
    mov esi, USAGE
exit:
    mov edi, SCHED_EXIT
    call HC_SCHED_OP

; alloc_va1(edx = perm): a fresh page at VA1, or exit SETUP_FAILED.
alloc_va1:
    xor edi, edi
    mov esi, VA1
    call HC_PAGE_ALLOC
    test rax, rax
    jnz setup_failed
    ret

; mmu_fill(edi = op, rsi = va, rdx = frame, rcx = perm): the one request at req, for the caller.
mmu_fill:
    mov dword ptr [rip + req], edi
    mov dword ptr [rip + req + 0x4], 0x0
    mov qword ptr [rip + req + 0x8], rsi
    mov qword ptr [rip + req + 0x10], rdx
    mov qword ptr [rip + req + 0x18], rcx
    ret

; mmu_one(same arguments): mmu_update with that one request -> rax.
mmu_one:
    call mmu_fill
    lea rdi, [rip + req]
    mov esi, 0x1
    xor edx, edx
    call HC_MMU_UPDATE
    ret

; streq(rdi, rsi = NUL-terminated strings) -> ZF set if they are equal. Clobbers al, rdi, rsi.
streq:
    mov al, byte ptr [rdi]
    cmp al, byte ptr [rsi]
    jne streq_done
    test al, al
    jz streq_done
    inc rdi
    inc rsi
    jmp streq
streq_done:
    ret

section .rodata
rodata_page:                        ; the first byte of .rodata: page-aligned (docs/abi.md layout)
; The attack table: {u32 name - attacks, u32 handler - _start} pairs, then 0.
attacks:
    dd n_map_exo_region - attacks, map_exo_region - _start
    dd n_map_low - attacks, map_low - _start
    dd n_map_kernel - attacks, map_kernel - _start
    dd n_map_uvpt - attacks, map_uvpt - _start
    dd n_map_unaligned - attacks, map_unaligned - _start
    dd n_perm_wx - attacks, perm_wx - _start
    dd n_perm_bad_bits - attacks, perm_bad_bits - _start
    dd n_share_add_write - attacks, share_add_write - _start
    dd n_share_add_exec - attacks, share_add_exec - _start
    dd n_wx_alias - attacks, wx_alias - _start
    dd n_wx_alias_rev - attacks, wx_alias_rev - _start
    dd n_protect_rodata - attacks, protect_rodata - _start
    dd n_mmu_steal - attacks, mmu_steal - _start
    dd n_mmu_protect_shared - attacks, mmu_protect_shared - _start
    dd n_console_read_code - attacks, console_read_code - _start
    dd n_console_read_pagetable - attacks, console_read_pagetable - _start
    dd n_mmu_done_readonly - attacks, mmu_done_readonly - _start
    dd 0x0, 0x0
n_map_exo_region: db "map_exo_region", 0x0
n_map_low: db "map_low", 0x0
n_map_kernel: db "map_kernel", 0x0
n_map_uvpt: db "map_uvpt", 0x0
n_map_unaligned: db "map_unaligned", 0x0
n_perm_wx: db "perm_wx", 0x0
n_perm_bad_bits: db "perm_bad_bits", 0x0
n_share_add_write: db "share_add_write", 0x0
n_share_add_exec: db "share_add_exec", 0x0
n_wx_alias: db "wx_alias", 0x0
n_wx_alias_rev: db "wx_alias_rev", 0x0
n_protect_rodata: db "protect_rodata", 0x0
n_mmu_steal: db "mmu_steal", 0x0
n_mmu_protect_shared: db "mmu_protect_shared", 0x0
n_console_read_code: db "console_read_code", 0x0
n_console_read_pagetable: db "console_read_pagetable", 0x0
n_mmu_done_readonly: db "mmu_done_readonly", 0x0

section .bss
req: resb MMU_REQ_SIZE
ipc_info: resb IPC_INFO_SIZE
