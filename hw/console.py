"""The console device: the host's stdin and stdout, byte for byte.

Input comes in two modes, chosen by what stdin is:

* a terminal: a reader thread fills a buffer and ``read`` never blocks: it
  returns what has arrived (``None`` when nothing has yet), so a guest echoes as
  you type and other guests keep running meanwhile. ``release_terminal()``
  parks the reader so that someone else in this process (pdb, at a
  ``breakpoint()`` in a libOS module) can read the terminal; ``reclaim_terminal()``
  lets it read again (exo/cli/breakpoint.py);
* a pipe, a file or bytes given by a test: ``read(n)`` returns exactly ``n``
  bytes unless end of input comes first. Reads then do not depend on how the
  host happened to chunk the data, which keeps runs deterministic (same input,
  same number of reads, same counts).

End of input is ``b""``. Output is written unbuffered with ``os.write``; a
closed reader (``exo boot ... | head``) makes ``write`` return -1 instead of
raising. The error stream (``write_error``, hypercall console_error) is a second
output of the same kind: the host's stderr, or a file a test captures.
"""

from __future__ import annotations

import io
import os
import select
import threading
from typing import BinaryIO


class ConsoleDevice:
    name = "console"

    def __init__(self, stdin: int | bytes | None = 0, stdout: int | BinaryIO = 1,
                 stderr: int | BinaryIO = 2) -> None:
        self._out = stdout
        self._err = stderr
        self.error_closed = False  # the error stream's reader went away
        self.bytes_err = 0
        self.output_closed = False
        self.output_error: str | None = None  # why output failed (not for a reader that left: `| head`)
        self.bytes_in = 0
        self.bytes_out = 0
        self._data = bytearray()
        self._eof = False
        self._fd: int | None = None
        self._interactive = False
        self._cv = threading.Condition()
        # Terminal hand-over (release_terminal): the reader is asked to park and says when it has.
        self._released = 0  # nested releases outstanding
        self._asked = 0  # releases asked of the reader; it sets _acked to this once parked
        self._acked = 0
        self._ended = False
        self._stopping = False
        self._reader_thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe that gets the reader out of poll()
        self.raw = False  # enter_raw(): the guest's libOS does the line discipline
        self._saved_mode: list | None = None  # the terminal's mode before enter_raw
        if stdin is None:
            self._eof = True
        elif isinstance(stdin, (bytes, bytearray)):
            self._data += stdin
            self._eof = True
        else:
            self._fd = stdin
            self._interactive = os.isatty(stdin)
            if self._interactive:
                self._wake = os.pipe()
                self._reader_thread = threading.Thread(target=self._reader, name="exo-console", daemon=True)
                self._reader_thread.start()

    @property
    def interactive(self) -> bool:
        return self._interactive

    # ---------------------------------------------------------------- input
    def _reader(self) -> None:
        # Why poll() and not a blocking os.read(): a thread blocked in read() on a terminal takes
        # the next line typed, whoever else in the process waits for it, and cannot be called
        # back: pdb at a breakpoint() in a libOS module never saw its commands (exo issue 14).
        # The reader reads only what poll() says is there, and parks between two reads when asked.
        fd = self._fd
        wake_r = self._wake[0]
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        try:
            while True:
                with self._cv:
                    while self._released and not self._stopping and not self._eof:
                        if self._acked != self._asked:
                            # Before parking: what was typed before the hand-over (whole lines, in
                            # a terminal's canonical mode) is the guest's: read it now, not the debugger.
                            while not self._eof and _readable(fd):
                                self._take(_read(fd))
                            self._acked = self._asked
                            self._cv.notify_all()
                        else:
                            self._cv.wait()
                    if self._stopping or self._eof:
                        return
                ready = {f for f, _ in poller.poll()}
                if wake_r in ready:
                    os.read(wake_r, 512)  # only a nudge: the state is in the fields under _cv
                if fd in ready:  # input, or a hang-up (POLLHUP): the read says which
                    chunk = _read(fd)
                    with self._cv:
                        self._take(chunk)
        finally:
            with self._cv:  # under the lock: _nudge never writes to a closed (reused) descriptor
                self._ended = True  # an ended reader holds the terminal no more than a parked one
                os.close(self._wake[0])
                os.close(self._wake[1])
                self._wake = None
                self._cv.notify_all()

    def _take(self, chunk: bytes) -> None:
        """Buffer a chunk read from the terminal (``b""``: end of input); holding ``_cv``."""
        if chunk:
            self._data += chunk
        else:
            self._eof = True
        self._cv.notify_all()

    def release_terminal(self) -> None:
        """Stop reading the terminal until ``reclaim_terminal()``; returns once the reader is parked.

        Input already typed (complete lines, on a terminal in canonical mode) is read into the
        guest's buffer first, so nothing meant for the guest is lost; what is typed afterwards
        stays in the terminal for whoever reads it next. Calls nest. Nothing to do for input
        that is not a terminal (no reader thread).
        """
        if self._reader_thread is None:
            return
        with self._cv:
            self._released += 1
            if self._released > 1:
                return  # nested (pdb's `debug`): parked already, the outer release waited for it
            self._asked += 1  # a new order even if the reader has not left its last park yet
            self._nudge()  # out of poll() ...
            self._cv.notify_all()  # ... or out of its last park
            while self._acked != self._asked and not self._ended:
                self._cv.wait()

    def reclaim_terminal(self) -> None:
        """Let the reader read the terminal again (undoes one ``release_terminal()``)."""
        if self._reader_thread is None:
            return
        with self._cv:
            if self._released:
                self._released -= 1
            if not self._released:
                self._cv.notify_all()

    def _nudge(self) -> None:
        """Get the reader out of poll() to look at its orders; holding ``_cv``."""
        if self._wake is not None:  # None: the reader has ended (and closed the pipe)
            os.write(self._wake[1], b"!")

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

    def ready(self) -> bool:
        """Would ``read`` return without waiting for the guest's sake? Always for a pipe or a file:
        their reads wait for the host (see the module doc), not for an event."""
        return self.poll() if self._interactive or self._fd is None else True

    def is_terminal(self) -> bool:
        """Input is a terminal (and output too): what a guest's isatty() should say."""
        return self._interactive and isinstance(self._out, int) and os.isatty(self._out)

    def window_size(self) -> tuple[int, int]:
        """(rows, columns) of the terminal; (0, 0) when the console is not one."""
        if not self.is_terminal():
            return 0, 0
        try:
            size = os.get_terminal_size(self._out)
        except OSError:
            return 0, 0
        return size.lines, size.columns

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
        err = _write_all(self._out, data)
        if err is not None:
            self.output_closed = True
            self.output_error = err or None  # "": the reader went away (`exo boot ... | head`), not an error
            return -1
        self.bytes_out += len(data)
        return len(data)

    def write_error(self, data: bytes) -> int:
        """The same for the error stream (a guest's stderr)."""
        if self.error_closed:
            return -1
        if _write_all(self._err, data) is not None:
            self.error_closed = True
            return -1
        self.bytes_err += len(data)
        return len(data)

    # ---------------------------------------------------------------- raw mode
    def enter_raw(self) -> bool:
        """Put the host terminal in raw input mode, so that a guest's libOS does the line discipline
        (echo, line editing, Ctrl-C as a byte it turns into SIGINT: libos/posix/tty.py) as a kernel's
        tty driver does. Output processing (OPOST, newline to CR LF) stays the host's. ``close``
        restores the terminal. True if the console is a terminal and is now raw."""
        if not self.is_terminal() or self.raw:
            return self.raw
        import termios

        try:
            saved = termios.tcgetattr(self._fd)
            mode = termios.tcgetattr(self._fd)
            mode[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.ISTRIP)
            mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
            mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self._fd, termios.TCSANOW, mode)
        except (termios.error, OSError):
            return False
        self._saved_mode = saved
        self.raw = True
        return True

    def _restore_mode(self) -> None:
        if self._saved_mode is None:
            return
        import termios

        try:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_mode)
        except (termios.error, OSError):
            pass
        self._saved_mode = None
        self.raw = False

    def close(self) -> None:
        """Stop the terminal reader (an embedding's REPL keeps its stdin after the run) and give the
        terminal back as it was."""
        self._restore_mode()
        if self._reader_thread is None:
            return
        with self._cv:
            self._stopping = True
            self._nudge()
            self._cv.notify_all()
        self._reader_thread.join(timeout=5)


def _write_all(out: int | BinaryIO, data: bytes) -> str | None:
    """Write ``data`` to a descriptor or a binary file: None, or why not ("" for a reader that left)."""
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
        return ""
    except (ValueError, OSError) as e:
        return getattr(e, "strerror", None) or str(e)
    return None


def _readable(fd: int) -> bool:
    """Something to read (or a hang-up) on ``fd`` right now."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def _read(fd: int) -> bytes:
    """One read of a terminal that poll() found ready; ``b""`` at hang-up or end of input."""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""  # EIO: the terminal hung up
