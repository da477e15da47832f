; heapzero (lab 3): the heap is demand-zero. malloc only moves the break; the
; first access to each page faults, and the libOS handler maps a zeroed frame.
;
; 1. p = malloc(PAGES pages); q = malloc(PAGES pages), never touched (no faults)
; 2. read every qword of p's pages: all must be 0 ("heap: 64 pages read as zero")
; 3. write page i's index into its first qword, add them up: 0+1+...+63 = 2016
; Numbers are hex (keystone reads bare immediates as hex): 0x40 pages = 64.
PAGES equ 0x40

section .text
_start:
    mov edi, PAGES * PAGE_SIZE
    call LIB_MEMORY_MALLOC
    test rax, rax
    jz failed
    mov r12, rax                    ; p
    mov edi, PAGES * PAGE_SIZE
    call LIB_MEMORY_MALLOC          ; q: reserved, never touched
    test rax, rax
    jz failed

    xor eax, eax                    ; OR of every qword read
    mov rcx, r12
    mov rdx, PAGES * PAGE_SIZE / 8
read_all:
    or rax, qword ptr [rcx]         ; the first read of a page faults (not present)
    add rcx, 8
    dec rdx
    jnz read_all
    test rax, rax
    jnz not_zero
    lea rdi, [rip + zero_fmt]
    mov esi, PAGES
    call LIB_CONSOLE_PRINTF

    xor ecx, ecx                    ; page index
    mov rdx, r12
write_all:
    mov qword ptr [rdx], rcx        ; mapped writable already: no second fault
    add rdx, PAGE_SIZE
    inc rcx
    cmp rcx, PAGES
    jne write_all
    xor eax, eax
    xor ecx, ecx
    mov rdx, r12
sum_all:
    add rax, qword ptr [rdx]
    add rdx, PAGE_SIZE
    inc rcx
    cmp rcx, PAGES
    jne sum_all
    lea rdi, [rip + sum_fmt]
    mov rsi, rax
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT

not_zero:
    lea rdi, [rip + dirty_fmt]
    mov rsi, rax
    call LIB_CONSOLE_PRINTF
    mov edi, 0x1
    call LIB_CORE_EXIT
failed:
    lea rdi, [rip + nomem_msg]
    call LIB_CONSOLE_PRINTF
    mov edi, 0x2
    call LIB_CORE_EXIT

section .rodata
zero_fmt: .asciz "heap: %d pages read as zero\n"
sum_fmt: .asciz "heap: sum of page indexes %d\n"
dirty_fmt: .asciz "heap: not zero (%lx)\n"
nomem_msg: .asciz "heap: malloc failed\n"
