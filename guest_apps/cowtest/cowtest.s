; cowtest: after fork, parent and child have private copies of every writable page.
;
; The parent stores 1 in a .data word and 2 in a malloc'd heap word, then forks.
; The child stores 10 and 20 in its copies and prints them. The parent yields
; (the child runs and exits meanwhile), then prints its own values, which must
; still be 1 and 2, and says so.

section .text
_start:
    lea rax, [rip + value]
    mov qword ptr [rax], 0x1
    mov edi, 0x40
    call LIB_MEMORY_MALLOC      ; a demand-zero heap block
    test rax, rax
    jz failed
    lea rcx, [rip + heapptr]
    mov qword ptr [rcx], rax
    mov qword ptr [rax], 0x2    ; first touch: the page is mapped by the fault handler

    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jz child

parent:
    mov rbx, 0x3                ; let the child run: yield a few times
wait_child:
    call LIB_CORE_YIELD_CPU
    dec rbx
    jnz wait_child
    call show_parent
    lea rax, [rip + value]
    cmp qword ptr [rax], 0x1
    jne shared
    lea rax, [rip + heapptr]
    mov rax, qword ptr [rax]
    cmp qword ptr [rax], 0x2
    jne shared
    lea rdi, [rip + private_msg]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT
shared:
    lea rdi, [rip + shared_msg]
    call LIB_CONSOLE_PRINTF
    mov edi, 0x1
    call LIB_CORE_EXIT

child:
    lea rax, [rip + value]
    mov qword ptr [rax], 0xa    ; copy-on-write faults: the child gets its own pages
    lea rax, [rip + heapptr]
    mov rax, qword ptr [rax]
    mov qword ptr [rax], 0x14
    lea rdi, [rip + child_fmt]
    call show
    xor edi, edi
    call LIB_CORE_EXIT

show_parent:
    lea rdi, [rip + parent_fmt]
; show(fmt): printf(fmt, value, *heapptr)
show:
    lea rax, [rip + value]
    mov rsi, qword ptr [rax]
    lea rax, [rip + heapptr]
    mov rax, qword ptr [rax]
    mov rdx, qword ptr [rax]
    call LIB_CONSOLE_PRINTF
    ret

failed:
    mov rdi, rax
    neg rdi
    call LIB_CORE_EXIT

section .rodata
child_fmt: .asciz "child: data=%d heap=%d\n"
parent_fmt: .asciz "parent: data=%d heap=%d\n"
private_msg: .asciz "parent and child see private copies after fork\n"
shared_msg: .asciz "parent sees the child's writes: pages were shared!\n"

section .data
value: dq 0
heapptr: dq 0
