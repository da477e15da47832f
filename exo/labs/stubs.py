"""What a student sees when their code reaches a stub: one line naming the lab, the exercise, the
file and the handout, instead of a traceback.

A Python stub raises ``NotImplementedError("LAB 4 (pick): pick the next runnable thread --
libos/sched.py")`` (`regions.Region.message`); an assembly or C stub prints the same message on the
console and exits with status `regions.STUB_EXIT`; a stub in the libOS is caught by the exokernel
and shows in the fault report of the environment. `explain` turns the exception the CLI caught into
the line (exit status `EXIT_STUB`); `explain_text` finds the message in a fault report or console
output.
"""

from __future__ import annotations

import re

from exo.labs import catalog

EXIT_STUB = 3  # the CLI's exit status when the run stopped at a stub

_MESSAGE = re.compile(r"LAB (?P<lab>\d+) \((?P<id>[^)\n]*)\): (?P<what>[^\n]*?) -- (?P<path>[^\s'\",]+)")


def _line(m: re.Match[str]) -> str:
    lab = catalog.BY_N.get(int(m["lab"]))
    handout = f" ({lab.handout})" if lab else ""
    return f"exo: LAB {m['lab']} ({m['id']}): {m['what']} -- {m['path']}: not implemented yet{handout}"


def explain_text(text: str) -> str | None:
    """The one-line explanation of the first stub message in ``text``, or None."""
    m = _MESSAGE.search(text)
    return _line(m) if m else None


def explain(exc: BaseException) -> str | None:
    """``exo: LAB 4 (pick): ... -- libos/sched.py: not implemented yet (docs/labs/lab4.md)`` if
    ``exc``, or an exception it was raised from or during (``__cause__``, ``__context__``, the
    members of an ExceptionGroup), is a stub's NotImplementedError; None otherwise."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, NotImplementedError) and e.args and isinstance(e.args[0], str):
            m = _MESSAGE.fullmatch(e.args[0].strip())
            if m:
                return _line(m)
        if isinstance(e, BaseExceptionGroup):
            todo += list(e.exceptions)
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return None
