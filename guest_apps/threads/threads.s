; threads: four user-level threads share the CPU inside one environment.
;
; worker(arg): arg points to {u64 letter, u64 spin}. Five times: spin (a busy
; loop of `spin` iterations, 2 instructions each), print "<letter><i> ", yield.
; Returns the number of steps (5): thread_join hands it to main.
;
;   A, B, C: short work (400 iterations) between yields, tickets 100, 200, 300
;   D:       long work (125,000 iterations, about 2.5 default slices) per step,
;            tickets 100: the CPU hog that the timer preempts
;
; main (thread 0) creates them, joins each (checking the status), prints
; "done" and exits as the last thread: the environment ends with status 0.
; How the output differs by policy: README.md in this directory.
STEPS equ 5

section .text
_start:
    lea r12, [rip + workers]
    xor ebx, ebx                    ; i = 0
create_next:
    lea rdi, [rip + worker]
    mov rsi, r12                    ; arg = &workers[i]
    mov rdx, qword ptr [r12 + 16]   ; tickets
    call LIB_SCHED_THREAD_CREATE
    test rax, rax
    js failed
    lea rcx, [rip + tids]
    mov qword ptr [rcx + rbx*8], rax
    add r12, 24
    inc rbx
    cmp rbx, 4
    jne create_next

    xor ebx, ebx
join_next:
    lea rcx, [rip + tids]
    mov rdi, qword ptr [rcx + rbx*8]
    call LIB_SCHED_THREAD_JOIN
    cmp rax, STEPS
    jne failed
    inc rbx
    cmp rbx, 4
    jne join_next

    lea rdi, [rip + done_msg]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_SCHED_THREAD_EXIT      ; the last thread: the environment exits

failed:
    mov rdi, 1
    call LIB_CORE_EXIT

; worker(arg): rdi = &{letter, spin, tickets}
worker:
    push rbx
    push r12
    push r13
    mov r12, rdi
    xor r13d, r13d                  ; step
step:
    mov rcx, qword ptr [r12 + 8]
spin:
    dec rcx
    jnz spin
    lea rdi, [rip + step_fmt]
    mov rsi, qword ptr [r12]
    mov rdx, r13
    call LIB_CONSOLE_PRINTF
    call LIB_SCHED_THREAD_YIELD
    inc r13
    cmp r13, STEPS
    jne step
    mov rax, r13                    ; the status main's thread_join returns
    pop r13
    pop r12
    pop rbx
    ret                             ; to thread_exit(rax)

section .rodata
step_fmt: db "%c%d ", 0
done_msg: db 10, "done", 10, 0
; {letter, spin iterations, tickets}
workers:
    dq 'A', 400, 100
    dq 'B', 400, 200
    dq 'C', 400, 300
    dq 'D', 125000, 100

section .bss
tids: resq 4
