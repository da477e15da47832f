# The one build recipe for C guests: a static, non-PIE x86-64 ELF with no C library, which exo
# loads as is. An app's Makefile includes this file and names its program:
#
#     include ../include/guest.mk
#     httpd: httpd.c $(GUEST_DEPS)
#
# (the pattern rule below builds `prog` from `prog.c`). Tests build through it too:
#     make -f guest_apps/include/guest.mk -C DIR prog EXTRA_CFLAGS="-O3 -ftree-vectorize"
#
# Code generation is gcc's default for x86-64 at -O2: SSE2 for floating point and string copies
# (exo enables SSE, docs/guests.md), the red zone (exo.h's hypercalls do not touch it), no
# -mgeneral-regs-only. The flags below only say there is no C library, no dynamic loader and
# no unwinder, plus -g: DWARF line tables, so fault reports and gdb give file:line (debug sections
# are not loaded and -g changes no generated code). -ffile-prefix-map names the guest_apps folder
# `guest_apps` in them, so a binary rebuilt from the same sources elsewhere is byte-identical and
# its lines read guest_apps/httpd/httpd.c:42 from the project root.
GUEST_INCLUDE := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
GUEST_CC ?= gcc
GUEST_CFLAGS = -O2 -g -ffile-prefix-map=$(abspath $(GUEST_INCLUDE)/..)=guest_apps -ffreestanding -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables \
               -I$(GUEST_INCLUDE)
GUEST_LDFLAGS = -static -nostdlib -no-pie -Wl,-z,separate-code -Wl,--build-id=none
GUEST_DEPS = $(GUEST_INCLUDE)/exo.h $(GUEST_INCLUDE)/libos.h $(GUEST_INCLUDE)/guest.mk
EXTRA_CFLAGS ?=

MAKEFLAGS += --no-builtin-rules  # only the rule below builds a guest (no cc, no .o chain)
.SUFFIXES:

%: %.c $(GUEST_DEPS)
	$(GUEST_CC) $(GUEST_CFLAGS) $(EXTRA_CFLAGS) $(GUEST_LDFLAGS) -o $@ $<
