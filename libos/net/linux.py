"""Linux's numbers for the socket ABI (errno values, socket types, flags), spelled out.

Python's ``errno`` module gives the host's values; the guest ABI is Linux's
whatever the host (the spec in docs/net-stack.md), so they are written here.
"""

from __future__ import annotations

EPERM, EBADF, EAGAIN, ENOMEM, EFAULT, EINVAL, EMFILE, EPIPE = 1, 9, 11, 12, 14, 22, 24, 32
ENOTSOCK, EDESTADDRREQ, EMSGSIZE, EPROTOTYPE, EOPNOTSUPP, EAFNOSUPPORT = 88, 89, 90, 91, 95, 97
EADDRINUSE, EADDRNOTAVAIL, ENETDOWN, ENETUNREACH, ECONNRESET, ENOBUFS = 98, 99, 100, 101, 104, 105
EISCONN, ENOTCONN, ETIMEDOUT, ECONNREFUSED, EHOSTUNREACH, EALREADY, EINPROGRESS = (
    106, 107, 110, 111, 113, 114, 115)

AF_INET = 2
SOCK_STREAM, SOCK_DGRAM = 1, 2
SOCK_NONBLOCK, SOCK_CLOEXEC = 0x800, 0x80000
MSG_PEEK, MSG_DONTWAIT, MSG_NOSIGNAL = 0x2, 0x40, 0x4000
SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2


class NetError(OSError):
    """A socket operation failed with a Linux errno value (``.errno``)."""

    def __init__(self, errno: int, detail: str = "") -> None:
        super().__init__(errno, detail or f"errno {errno}")
