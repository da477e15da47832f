"""Errors of the exokernel and of the tools around it."""

from __future__ import annotations

from exo.abi import Errno


class HypercallError(Exception):
    """Raised by a hypercall implementation; the guest sees ``-errno`` in RAX."""

    def __init__(self, errno: Errno, detail: str = "") -> None:
        super().__init__(f"{errno.name}: {detail}" if detail else errno.name)
        self.errno = errno
        self.detail = detail


class ExoUserError(Exception):
    """Bad input from the user (a manifest, a source file, an ELF, an option).

    The CLI prints it as one line (``path: problem``) and exits with status 2.
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem
