; badwrite (lab 3): a write to a read-only page that is not copy-on-write is a
; bug of the program, not something for the libOS to fix. The page-fault handler
; must decline it (unregister itself and resume), so that the fault happens again
; and the exokernel stops the environment with its standard report: a #PF at
; `constant`, a write to a present page, at the instruction labelled ro_write.
section .text
_start:
    mov edi, 0x20
    call LIB_MEMORY_MALLOC          ; the handler has real work first: a demand-zero page
    test rax, rax
    jz failed
    mov qword ptr [rax], 0x1
    lea rdi, [rip + msg]
    call LIB_CONSOLE_PRINTF
    lea rax, [rip + constant]
    mov rbx, 0xbad
ro_write:
    mov qword ptr [rax], rbx        ; .rodata: present, read-only, not PERM_COW
    lea rdi, [rip + survived]
    call LIB_CONSOLE_PRINTF
failed:
    mov edi, 0x1
    call LIB_CORE_EXIT

section .rodata
constant: dq 0x1
msg: .asciz "badwrite: heap ok, writing .rodata\n"
survived: .asciz "badwrite: the write to .rodata went through!\n"
