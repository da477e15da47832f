"""Library OS modules that guest apps link (console, memory, scheduler, IPC, ...).

Each module instance runs on behalf of one environment and reaches the
exokernel only through the hypercall interface (exo/hypercalls.py's ABI).
"""
