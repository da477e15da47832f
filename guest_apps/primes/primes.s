; primes: the JOS prime sieve (user/primes.c), a pipeline of environments.
;
; The first environment forks the first filter, then generates 2, 3, ..., LAST
; and sends each to it over IPC, then a 0 that ends the pipeline. A filter
; receives its prime p first and prints it, forks the next filter, then
; forwards every number that p does not divide. A 0 is forwarded, then the
; filter exits. The filter of the NPRIMES-th prime forks no one: it only waits
; for the 0. Output order is deterministic: a filter prints before it forks the
; next one, and it can only be forked after it printed.
;
; State lives in callee-saved registers, which fork copies to the child:
;   rbx  primes printed by this filter and those before it
;   r12  the first filter (generator)    r13  the next number (generator)
;   r14  the next filter                 r15  this filter's prime

NPRIMES equ 100
LAST equ 541              ; the 100th prime

section .text
_start:
    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jz filter               ; the child: the first filter
    mov r12, rax
    mov r13, 2
generate:
    mov rdi, r12
    mov rsi, r13
    call send
    inc r13
    cmp r13, LAST
    jbe generate
    mov rdi, r12
    xor esi, esi            ; the end of the stream
    call send
    xor edi, edi
    call LIB_CORE_EXIT

filter:                     ; a new filter: its first number is its prime
    call recv
    test rax, rax
    jz done                 ; (not reached: the last filter forks no one)
    mov r15, rax
    inc rbx
    lea rdi, [rip + fmt]
    mov rsi, r15
    call LIB_CONSOLE_PRINTF
    cmp rbx, NPRIMES
    je last
    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jz filter               ; the child: the next filter
    mov r14, rax
forward:
    call recv
    test rax, rax
    jz stop
    mov r13, rax
    xor edx, edx
    div r15                 ; rdx = n mod p
    test rdx, rdx
    jz forward
    mov rdi, r14
    mov rsi, r13
    call send
    jmp forward
stop:
    mov rdi, r14
    xor esi, esi
    call send
done:
    xor edi, edi
    call LIB_CORE_EXIT

last:                       ; the NPRIMES-th prime: wait for the end of the stream
    call recv
    test rax, rax
    jnz last
    jmp done

; send(envid, value): waits while the mailbox is full; fails the pipeline on an error.
send:
    xor edx, edx            ; no page
    xor ecx, ecx
    call LIB_IPC_SEND
    test rax, rax
    jnz failed
    ret

; recv() -> value: waits for a message (no page, sender not needed).
recv:
    xor edi, edi
    xor esi, esi
    xor edx, edx
    call LIB_IPC_RECV
    test rax, rax
    js failed
    ret

failed:
    mov rdi, rax
    neg rdi                 ; exit status: the errno
    call LIB_CORE_EXIT

section .rodata
fmt: db "%d", 10, 0
