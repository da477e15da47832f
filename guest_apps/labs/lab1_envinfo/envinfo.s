; lab1_envinfo: exercises the env_info hypercall (docs/labs/lab1.md, exercise env_info) and writes
; what it got, in binary, with one console_write at the end (exo/labs/tests/lab1 decodes it):
;   u64 rax, record[ENV_INFO_SIZE]   env_info(0, rec): yourself
;   u64 rax, record                  env_info(env_id(), rec): yourself by number
;   u64 rax                          env_info(0x63, rec): nobody has that id
;   u64 rax                          env_info(2, rec): a sibling when booted second to another app
;   u64 rax                          env_info(0, 0x10): an unmapped buffer
;   u64 rax, u64 canary              env_info(0, STACK_TOP - 0x20): the buffer runs off the stack's top;
;                                    the canary at STACK_TOP - 0x20 must be left as it was
;   u64 child, u64 rax, record       env_info(child, rec) for a child made by env_create (never run)
; Booted alone, "a sibling" is nobody (-ESRCH); booted with guest_apps/labs/witness, -EPERM.
section .text
_start:
    lea r15, [rip + out]            ; output cursor

    xor edi, edi
    call info_to_out
    call HC_ENV_ID
    mov rdi, rax
    call info_to_out
    mov edi, 0x63
    call rax_only
    mov edi, 0x2
    call rax_only

    xor edi, edi
    mov esi, 0x10
    call HC_ENV_INFO
    mov qword ptr [r15], rax
    add r15, 0x8

    mov rbx, STACK_TOP - 0x20       ; inside the stack (mapped), 0x20 bytes below its top
    mov rax, 0x5a5a5a5a5a5a5a5a
    mov qword ptr [rbx], rax
    xor edi, edi
    mov rsi, rbx
    call HC_ENV_INFO
    mov qword ptr [r15], rax
    mov rax, qword ptr [rbx]
    mov qword ptr [r15 + 0x8], rax
    add r15, 0x10

    call HC_ENV_CREATE
    test rax, rax
    jz never                        ; the child: it is never made runnable
    mov qword ptr [r15], rax
    add r15, 0x8
    mov rdi, rax
    call info_to_out

    lea rdi, [rip + out]
    mov rsi, r15
    sub rsi, rdi
    call HC_CONSOLE_WRITE
    mov edi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
never:
    mov edi, SCHED_EXIT
    mov esi, 0x1
    call HC_SCHED_OP

; info_to_out(rdi = envid): env_info into the output, as u64 rax then the record.
info_to_out:
    lea rsi, [r15 + 0x8]
    call HC_ENV_INFO
    mov qword ptr [r15], rax
    add r15, ENV_INFO_SIZE + 0x8
    ret

; rax_only(rdi = envid): env_info into a scratch record; only u64 rax goes to the output.
rax_only:
    lea rsi, [rip + scratch]
    call HC_ENV_INFO
    mov qword ptr [r15], rax
    add r15, 0x8
    ret

section .bss
scratch: resb ENV_INFO_SIZE
out: resb 0x200
