"""ext2 errors: ``Ext2Error`` carries an errno code; corruption is EIO naming the structure.

Everything read from disk is bounds-checked by the module that reads it, which
raises ``_corrupt(...)`` (EIO) rather than let an IndexError or an endless
loop escape to the caller.
"""

from __future__ import annotations

import errno


class Ext2Error(Exception):
    """A file system error; ``errno`` is an ``errno`` code (EIO for corruption)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(f"{errno.errorcode.get(err, err)}: {message}")
        self.errno = err
        self.message = message


def _corrupt(message: str) -> Ext2Error:
    return Ext2Error(errno.EIO, f"corrupt file system: {message}")
