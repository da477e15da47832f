"""The console device: the host's stdin and stdout, byte for byte.

Input comes in two modes, chosen by what stdin is:

* a terminal: a reader thread fills a buffer and ``read`` never blocks: it
  returns what has arrived (``None`` when nothing has yet), so a guest echoes as
  you type and other guests keep running meanwhile;
* a pipe, a file or bytes given by a test: ``read(n)`` returns exactly ``n``
  bytes unless end of input comes first. Reads then do not depend on how the
  host happened to chunk the data, which keeps runs deterministic (same input,
  same number of reads, same counts).

End of input is ``b""``. Output is written unbuffered with ``os.write``; a
closed reader (``exo boot ... | head``) makes ``write`` return -1 instead of
raising.
"""

from __future__ import annotations

import io
import os
import threading
from typing import BinaryIO


class ConsoleDevice:
    name = "console"

    def __init__(self, stdin: int | bytes | None = 0, stdout: int | BinaryIO = 1) -> None:
        self._out = stdout
        self.output_closed = False
        self.output_error: str | None = None  # why output failed (not for a reader that left: `| head`)
        self.bytes_in = 0
        self.bytes_out = 0
        self._data = bytearray()
        self._eof = False
        self._fd: int | None = None
        self._interactive = False
        self._cv = threading.Condition()
        if stdin is None:
            self._eof = True
        elif isinstance(stdin, (bytes, bytearray)):
            self._data += stdin
            self._eof = True
        else:
            self._fd = stdin
            self._interactive = os.isatty(stdin)
            if self._interactive:
                threading.Thread(target=self._reader, name="exo-console", daemon=True).start()

    @property
    def interactive(self) -> bool:
        return self._interactive

    # ---------------------------------------------------------------- input
    def _reader(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except OSError:
                chunk = b""
            with self._cv:
                if chunk:
                    self._data += chunk
                else:
                    self._eof = True
                self._cv.notify_all()
            if not chunk:
                return

    def read(self, n: int) -> bytes | None:
        """Up to ``n`` bytes; ``b""`` at end of input; ``None`` if none yet (terminal)."""
        if n <= 0:
            return b""
        if self._fd is not None and not self._interactive:
            while len(self._data) < n and not self._eof:
                try:
                    chunk = os.read(self._fd, max(n - len(self._data), 65536))
                except OSError:
                    chunk = b""
                if chunk:
                    self._data += chunk
                else:
                    self._eof = True
        with self._cv:
            if not self._data:
                return b"" if self._eof else None
            out = bytes(self._data[:n])
            del self._data[:n]
        self.bytes_in += len(out)
        return out

    def poll(self) -> bool:
        with self._cv:
            return bool(self._data) or self._eof

    def wait_input(self, timeout: float) -> bool:
        """Sleep until input (or end of input) arrives; True if it did."""
        with self._cv:
            if self._data or self._eof:
                return True
            self._cv.wait(timeout)
            return bool(self._data) or self._eof

    # --------------------------------------------------------------- output
    def write(self, data: bytes) -> int:
        """Write all of ``data``; the count written, or -1 once the reader has gone."""
        if self.output_closed:
            return -1
        out = self._out
        try:
            if isinstance(out, int):
                view = memoryview(data)
                while view:
                    n = os.write(out, view)
                    view = view[n:]
            else:
                out.write(data)
                if not isinstance(out, io.BytesIO):
                    out.flush()
        except BrokenPipeError:
            self.output_closed = True  # the reader went away (`exo boot ... | head`): not an error
            return -1
        except (ValueError, OSError) as e:
            self.output_closed = True
            self.output_error = getattr(e, "strerror", None) or str(e)
            return -1
        self.bytes_out += len(data)
        return len(data)

    def close(self) -> None:
        pass
