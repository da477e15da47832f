"""A GDB Remote Serial Protocol stub: stock gdb debugs guest environments (``exo boot --gdb``).

rsp.py is the packet layer (framing, checksums, acks, escapes), target.py the glue to the
exokernel (registers, memory through an environment's page tables, breakpoints, threads),
server.py the session and the run loop, history.py reverse execution (forked checkpoints,
deterministic re-execution). docs/debugging.md, "Attaching gdb", is the user's view.
"""
