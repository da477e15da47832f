"""The whole machine: RAM, one vCPU, a clock, a console, an optional disk and NIC, and a device bus."""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

from hw.blockdev import BlockDevice
from hw.clock import Clock
from hw.console import ConsoleDevice
from hw.cpu import RESERVED_BYTES, VCpu
from hw.device import DeviceBus
from hw.memory import PhysicalMemory

if TYPE_CHECKING:
    from hw.nic import Nic

DEFAULT_RAM = 256 << 20


class Machine:
    def __init__(
        self,
        ram_size: int = DEFAULT_RAM,
        clock: str = "virtual",
        stdin: int | bytes | None = 0,
        stdout: int | BinaryIO = 1,
        stderr: int | BinaryIO = 2,
        slice_seconds: float = 0.01,
        disk: BlockDevice | None = None,
        nic: Nic | None = None,
    ) -> None:
        self.memory = PhysicalMemory(ram_size)
        self.cpu = VCpu(self.memory, clock=clock, slice_seconds=slice_seconds)
        self.clock = Clock(clock, self.cpu.instructions)
        self.console = ConsoleDevice(stdin, stdout, stderr)
        self.devices = DeviceBus()
        self.devices.attach(self.console)
        self.disk = disk  # hw/blockdev.py; closing the machine does not flush it
        if disk is not None:
            self.devices.attach(disk)
        self.nic = nic  # hw/nic.py: the one network interface (promiscuous), or None
        if nic is not None:
            self.devices.attach(nic)
            if clock == "virtual":
                nic.clock_ns = self.clock.now_ns  # captures in guest time: the same run, the same pcap
        self.reserved_bytes = RESERVED_BYTES

    def close(self) -> None:
        self.devices.close()
