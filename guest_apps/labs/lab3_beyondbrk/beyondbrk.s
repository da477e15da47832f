; beyondbrk (lab 3): demand-zero covers the heap below the break, nothing more.
; A read of the first page above the break (sbrk(0) rounded up to a page) must
; not be served: the handler declines, and the exokernel's report names the
; address and the instruction labelled `beyond`.
section .text
_start:
    mov edi, 0x1800                 ; a page and a half: the break ends inside a page
    call LIB_MEMORY_MALLOC
    test rax, rax
    jz failed
    mov qword ptr [rax + 0x1000], 0x7   ; below the break: demand-zero
    xor edi, edi
    call LIB_MEMORY_SBRK            ; the break
    add rax, PAGE_SIZE - 0x1
    and rax, -PAGE_SIZE             ; the first page wholly above it
    lea rcx, [rip + above]
    mov qword ptr [rcx], rax
    lea rdi, [rip + msg]
    call LIB_CONSOLE_PRINTF
    lea rax, [rip + above]
    mov rax, qword ptr [rax]
beyond:
    mov rbx, qword ptr [rax]        ; not present and above the break: a fault
    lea rdi, [rip + survived]
    call LIB_CONSOLE_PRINTF
failed:
    mov edi, 0x1
    call LIB_CORE_EXIT

section .rodata
msg: .asciz "beyondbrk: reading above the break\n"
survived: .asciz "beyondbrk: the read above the break went through!\n"

section .data
above: dq 0
