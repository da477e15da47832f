"""The interface devices plug into (console here; block and network devices later).

A device is polled by the OS between slices; it never calls into the OS. What
it owes the machine: a name, ``poll()`` saying whether it has work pending for
the OS (input arrived, a request completed), and ``close()``.
"""

from __future__ import annotations

from typing import Protocol


class Device(Protocol):
    name: str

    def poll(self) -> bool:
        """True when the device has something for the OS (input, a completion)."""

    def close(self) -> None:
        """Release host resources (threads, files)."""


class DeviceBus:
    """The machine's devices by name."""

    def __init__(self) -> None:
        self._devices: dict[str, Device] = {}

    def attach(self, device: Device) -> None:
        if device.name in self._devices:
            raise ValueError(f"a device named {device.name!r} is already attached")
        self._devices[device.name] = device

    def __getitem__(self, name: str) -> Device:
        return self._devices[name]

    def __contains__(self, name: str) -> bool:
        return name in self._devices

    def __iter__(self):
        return iter(self._devices.values())

    def close(self) -> None:
        for d in self._devices.values():
            d.close()
