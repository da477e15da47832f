; cowiso (lab 3): after fork, parent and child each see their own copy of every
; writable page, whoever writes first.
;
; Before fork the parent writes 0x100+i into .bss page i (i < 4) and 0x200+i into
; heap page i (i < 64). After fork:
;   parent: writes 0xd0 into .bss page 1 at once (before the child has run),
;           yields so that the child runs, then checks it still has
;           0x100, 0xd0, 0x102, 0x103 and every 0x200+i: "parent: private"
;   child:  checks it has the values of fork time (0x100, 0x101, 0x102, 0x103: not
;           the parent's later 0xd0; every 0x200+i): "child: sees the values of fork time",
;           then writes 0xc0 into .bss pages 0 and 2 and heap page 0, reads them
;           back: "child: own writes kept"
; A wrong value prints "<who>: page <n> holds <x>, expected <y>" and exits 1.
; Numbers are hex (keystone reads bare immediates as hex).
SLOTS equ 0x4
HEAP_PAGES equ 0x40

section .text
_start:
    mov edi, HEAP_PAGES * PAGE_SIZE
    call LIB_MEMORY_MALLOC
    test rax, rax
    jz failed
    lea rcx, [rip + heap]
    mov qword ptr [rcx], rax

    lea rdi, [rip + pages]          ; .bss page i = 0x100 + i
    mov esi, SLOTS
    mov edx, 0x100
    call fill
    lea rax, [rip + heap]           ; heap page i = 0x200 + i
    mov rdi, qword ptr [rax]
    mov esi, HEAP_PAGES
    mov edx, 0x200
    call fill

    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jz child

parent:
    lea rax, [rip + pages]
    mov qword ptr [rax + PAGE_SIZE], 0xd0   ; a write after fork: copy-on-write
    mov ebx, 0x3
wait_child:
    call LIB_CORE_YIELD_CPU
    dec ebx
    jnz wait_child
    lea r15, [rip + parent_name]
    lea rdi, [rip + pages]
    lea rsi, [rip + parent_expect]
    mov edx, SLOTS
    call check_list
    lea rax, [rip + heap]
    mov rdi, qword ptr [rax]
    mov esi, HEAP_PAGES
    mov edx, 0x200
    call check_seq
    lea rdi, [rip + parent_ok]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT

child:
    lea r15, [rip + child_name]
    lea rdi, [rip + pages]
    mov esi, SLOTS
    mov edx, 0x100
    call check_seq
    lea rax, [rip + heap]
    mov rdi, qword ptr [rax]
    mov esi, HEAP_PAGES
    mov edx, 0x200
    call check_seq
    lea rdi, [rip + child_sees]
    call LIB_CONSOLE_PRINTF
    lea rax, [rip + pages]
    mov qword ptr [rax], 0xc0
    mov qword ptr [rax + 0x2 * PAGE_SIZE], 0xc0
    lea rcx, [rip + heap]
    mov rcx, qword ptr [rcx]
    mov qword ptr [rcx], 0xc0
    lea rdi, [rip + pages]
    lea rsi, [rip + child_expect]
    mov edx, SLOTS
    call check_list
    lea rax, [rip + heap]
    mov rax, qword ptr [rax]
    cmp qword ptr [rax], 0xc0
    jne child_heap_lost
    lea rdi, [rip + child_kept]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT
child_heap_lost:
    mov rsi, 0x40                   ; heap page 0 is "page 0x40" in messages
    mov rdx, qword ptr [rax]
    mov ecx, 0xc0
    jmp mismatch

; fill(rdi = first page, esi = pages, edx = first value): page i's first qword = edx + i
fill:
    mov qword ptr [rdi], rdx
    add rdi, PAGE_SIZE
    inc rdx
    dec esi
    jnz fill
    ret

; check_seq(rdi = first page, esi = pages, edx = first value): page i must hold edx + i
check_seq:
    xor r8d, r8d
check_seq_next:
    mov rax, qword ptr [rdi]
    cmp rax, rdx
    jne seq_mismatch
    add rdi, PAGE_SIZE
    inc rdx
    inc r8
    cmp r8d, esi
    jne check_seq_next
    ret
seq_mismatch:
    mov rsi, r8
    mov rcx, rdx
    mov rdx, rax
    jmp mismatch

; check_list(rdi = first page, rsi = expected qwords, edx = pages)
check_list:
    xor r8d, r8d
check_list_next:
    mov rax, qword ptr [rdi]
    mov rcx, qword ptr [rsi + r8*8]
    cmp rax, rcx
    jne list_mismatch
    add rdi, PAGE_SIZE
    inc r8
    cmp r8d, edx
    jne check_list_next
    ret
list_mismatch:
    mov rsi, r8
    mov rdx, rax
    jmp mismatch

; mismatch(rsi = page, rdx = found, rcx = expected), r15 = who: print and exit 1
mismatch:
    mov r8, rcx
    mov rcx, rdx
    mov rdx, rsi
    mov rsi, r15
    lea rdi, [rip + mismatch_fmt]
    call LIB_CONSOLE_PRINTF
    mov edi, 0x1
    call LIB_CORE_EXIT

failed:
    lea rdi, [rip + failed_fmt]
    mov rsi, rax
    call LIB_CONSOLE_PRINTF
    mov edi, 0x2
    call LIB_CORE_EXIT

section .rodata
parent_name: .asciz "parent"
child_name: .asciz "child"
parent_expect: dq 0x100, 0xd0, 0x102, 0x103
child_expect: dq 0xc0, 0x101, 0xc0, 0x103
child_sees: .asciz "child: sees the values of fork time\n"
child_kept: .asciz "child: own writes kept\n"
parent_ok: .asciz "parent: private\n"
mismatch_fmt: .asciz "%s: page %d holds %x, expected %x\n"
failed_fmt: .asciz "cowiso: malloc or fork failed (%ld)\n"

section .data
heap: dq 0

section .bss
pages: resb SLOTS * PAGE_SIZE
