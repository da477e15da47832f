"""The emulated x86-64 machine: RAM, a vCPU with real paging and rings, devices.

This package knows nothing of the operating system above it: it never imports
``exo`` or ``libos`` (checked by ``tests/test_layers.py``).
"""

from hw.errors import MachineConfigError, MachineProbeError
from hw.machine import Machine

__all__ = ["Machine", "MachineConfigError", "MachineProbeError"]
