"""``tap:IFNAME``: frames to and from the host kernel through a Linux TAP interface.

We open /dev/net/tun and attach with TUNSETIFF, flags IFF_TAP | IFF_NO_PI
(Ethernet frames with no packet-information prefix; see the kernel's
Documentation/networking/tuntap.rst). That creates the interface when it does
not exist (needs CAP_NET_ADMIN; it disappears again when we close it), or
attaches to a persistent one made beforehand, which an ordinary user may do
if it belongs to them: ``ip tuntap add dev tap0 mode tap user $USER``.

The fd is non-blocking: ``recv`` reads every frame queued in the kernel,
``wait`` sleeps in ``select`` until one is. No thread is needed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct

from hw.errors import MachineConfigError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
READ_SIZE = 65536


def check_ifname(name: str) -> None:
    """Linux's rules for an interface name (net/core/dev.c dev_valid_name)."""
    if not name or len(name.encode()) >= IFNAMSIZ or name in (".", "..") or any(
        c in name for c in "/:" ) or any(c.isspace() for c in name) or not name.isprintable():  # fmt: skip
        raise MachineConfigError(
            f"tap: {name!r} is not an interface name (1-15 characters, no '/', ':' or spaces)")


class TapBackend:
    external = True

    def __init__(self, ifname: str) -> None:
        check_ifname(ifname)
        self.ifname = ifname
        self.send_errors = 0  # frames the kernel refused (interface down)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MachineConfigError(f"tap: {TUN_PATH} does not exist (no TUN/TAP in this kernel: modprobe tun)") from None
        except PermissionError:
            raise MachineConfigError(
                f"tap: cannot open {TUN_PATH}: permission denied (needs root or CAP_NET_ADMIN)") from None
        except OSError as e:
            raise MachineConfigError(f"tap: cannot open {TUN_PATH}: {e.strerror}") from None
        ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EPERM:
                msg = (f"tap: cannot attach to {ifname}: needs root or CAP_NET_ADMIN "
                       f"(or a persistent tap of yours: ip tuntap add dev {ifname} mode tap user $USER)")
            elif e.errno == errno.EBUSY:
                msg = f"tap: {ifname} is in use by another process"
            elif e.errno == errno.EINVAL:
                msg = f"tap: {ifname} exists and is not a tap interface"
            else:
                msg = f"tap: cannot attach to {ifname}: {e.strerror}"
            raise MachineConfigError(msg) from None
        self._fd: int | None = fd
        self._queued: list[bytes] = []  # read by pending(), not yet returned by recv()

    def send(self, frame: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, frame)
        except OSError:  # EIO: interface down; EAGAIN: queue full. The wire drops it.
            self.send_errors += 1

    def _read_all(self) -> None:
        while self._fd is not None:
            try:
                f = os.read(self._fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the interface went away under us
                return
            if not f:
                return
            self._queued.append(f)

    def recv(self) -> list[bytes]:
        self._read_all()
        out, self._queued = self._queued, []
        return out

    def pending(self) -> bool:
        if self._queued:
            return True
        self._read_all()
        return bool(self._queued)

    def wait(self, timeout: float) -> None:
        if self._fd is None or self._queued:
            return
        try:
            select.select([self._fd], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # a non-persistent interface disappears with its last fd
            self._fd = None

    def __repr__(self) -> str:
        return f"<TapBackend {self.ifname}>"
