"""`Record`: equality and repr from a class's field names, for the plain data classes `exo boot`
loads (results, reports, images, manifests, rate limits).

Not dataclasses: defining one costs 0.3-0.6 ms of start-up (it compiles generated code), about a
quarter of what `exo boot guest_apps/echo` spent defining classes before it was measured against
`import unicorn` (docs/performance.md). A subclass lists its fields in ``_FIELDS`` and writes its
own ``__init__``.
"""

from __future__ import annotations


class Record:
    _FIELDS: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]  (mutable, compared by value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self._FIELDS) + ")"
