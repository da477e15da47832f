; hog: take every frame the exokernel will give. Before tenants the frame quota
; was per environment and its default all of RAM, so this took all 65,360 free
; frames and an app booted beside it died on its next copy-on-write fault. Now
; its app (tenant) has its own quota (exo/tenants.py): page_alloc answers -ENOMEM
; at the quota and the other apps keep theirs.

REGION equ 0x200000000          ; far from the image, the stack and the libOS heap
HOLD equ 100                    ; slices it holds its pages before it touches the heap

section .text
_start:
    lea rdi, [rip + hello]      ; (the console module maps its buffer page now, while it can)
    call LIB_CONSOLE_PRINTF
    mov rbx, REGION
    xor r12d, r12d              ; pages obtained
more:
    xor edi, edi                ; envid 0: myself
    mov rsi, rbx
    mov edx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    js refused
    add rbx, 4096
    inc r12
    jmp more
refused:
    neg rax
    mov rdx, rax
    mov rsi, r12
    lea rdi, [rip + msg]
    call LIB_CONSOLE_PRINTF
    call LIB_CONSOLE_FLUSH      ; this environment is stopped below: print first
    mov r13, HOLD
hold:
    call LIB_CORE_YIELD_CPU     ; keep every page while the other apps run a while
    dec r13
    jnz hold
    mov edi, 4096
    call LIB_MEMORY_SBRK        ; heap pages are demand-zero: the frame comes at first touch
    mov byte ptr [rax], 1       ; no frame left for it: the fault report says which quota ran out
    xor edi, edi
    call LIB_CORE_EXIT

section .rodata
hello: db "hog: taking every frame I can get", 10, 0
msg: db "hog: got %d pages, then page_alloc failed with errno %d", 10, 0
