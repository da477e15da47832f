; hello-module: calls the hello module of the exo-hello-module package.
; LIB_HELLO_GREET is defined because app.toml links hello: 0x101000 + INDEX 7 * 0x1000 + slot 0.
section .text
_start:
    lea rdi, [rip + who]
    call LIB_HELLO_GREET        ; "hello, exo"; rax = 1
    lea rdi, [rip + again]
    call LIB_HELLO_GREET        ; "hello, again"; rax = 2
    xor edi, edi                ; exit 0 if the module counted two greetings, else 1
    cmp rax, 2
    je done
    mov edi, 1
done:
    call LIB_CORE_EXIT

section .data
who: db "exo", 0
again: db "again", 0
