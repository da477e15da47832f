"""Counting every ring transition, per environment and in total.

Kinds (docs/stats.md): ``hypercall`` (guest -> exokernel through `syscall`),
``trap`` (an exception or refused instruction), ``upcall`` (exokernel -> libOS
handler), ``interrupt`` (a slice ended by the timer), ``context_switch`` (the
vCPU changed environment), ``libcall`` (a library call: no ring transition, but
counted so that OS structures can be compared), ``syscall`` (a trap into an OS
service: the monolithic and Xen-PV structures, exo/structures.py) and
``kcall`` (a service's own access to a resource from inside the kernel under
the monolithic structure: checked, but no ring transition).

The hot path (one hypercall) does a single dict update; totals by kind, by
name and by environment are summed when asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

FOLD_BATCH = 1024  # ended instances folded into their templates' counts at a time

KINDS = ("hypercall", "syscall", "reflect", "trap", "upcall", "interrupt", "context_switch", "libcall", "kcall")


class Accounting:
    def __init__(self) -> None:
        self._hc: dict[tuple[int, str], int] = {}  # (env id, hypercall name) -> count
        self._ev: dict[tuple[str, int], int] = {}  # (kind, env id) -> count, other kinds
        self._envs: dict[int, None] = {}  # in creation order
        self.reflected: dict[tuple[int, str], int] = {}  # (env id, Linux syscall name) -> count
        self._pending: dict[int, int] = {}  # ended instance -> its template, to fold (fold)
        # Optional exo/trace.py Tracer: called as tracer(kind, env_id, name) for each
        # transition that is not traced as a call's span (the kernel opens and closes
        # those with its other methods). None costs one attribute test per event.
        self.tracer: Callable[[str, int, str], None] | None = None

    def add_env(self, env_id: int) -> None:
        self._envs[env_id] = None

    def fold(self, env_id: int, into: int) -> None:
        """Count ``env_id``'s transitions as ``into``'s and forget it (an ended instance: its
        template's record carries the counts of all its instances; the totals do not change).
        Done for FOLD_BATCH environments at a time, in one pass over the counts, and before any
        per-environment figure is read."""
        self._pending[env_id] = into
        if len(self._pending) >= FOLD_BATCH:
            self._fold_pending()

    def _fold_pending(self) -> None:
        p = self._pending
        if not p:
            return
        for table in (self._hc, self.reflected):
            for key in [key for key in table if key[0] in p]:
                new = (p[key[0]], key[1])
                table[new] = table.get(new, 0) + table.pop(key)
        ev = self._ev
        for key in [key for key in ev if key[1] in p]:
            new = (key[0], p[key[1]])
            ev[new] = ev.get(new, 0) + ev.pop(key)
        for env_id in p:
            self._envs.pop(env_id, None)
        p.clear()

    def hypercall(self, env_id: int, name: str, trace: bool = True) -> None:
        """One hypercall. ``trace=False``: the caller records it in the trace itself (as a span)."""
        key = (env_id, name)
        hc = self._hc
        hc[key] = hc.get(key, 0) + 1
        if self.tracer is not None and trace:
            self.tracer("hypercall", env_id, name)

    def count(self, kind: str, env_id: int, name: str = "", trace: bool = True) -> None:
        key = (kind, env_id)
        self._ev[key] = self._ev.get(key, 0) + 1
        if self.tracer is not None and trace:
            self.tracer(kind, env_id, name)

    # ------------------------------------------------------------- totals
    @property
    def transitions(self) -> Counter[str]:
        c = Counter({k: 0 for k in KINDS})
        c["hypercall"] = sum(self._hc.values())
        for (kind, _), n in self._ev.items():
            c[kind] += n
        return c

    @property
    def hypercalls(self) -> Counter[str]:
        return _by_name(self._hc)

    @property
    def by_env(self) -> dict[int, Counter[str]]:
        self._fold_pending()
        out = {e: Counter({k: 0 for k in KINDS}) for e in self._envs}
        for (env, _), n in self._hc.items():
            out.setdefault(env, Counter({k: 0 for k in KINDS}))["hypercall"] += n
        for (kind, env), n in self._ev.items():
            out.setdefault(env, Counter({k: 0 for k in KINDS}))[kind] += n
        return out

    @property
    def syscalls(self) -> Counter[str]:
        """Reflected Linux system calls by name (the `reflect` transitions, split by call)."""
        return _by_name(self.reflected)

    def reflect(self, env_id: int, name: str, kinds: tuple[str, ...] = ("reflect",)) -> None:
        """One Linux system call: its count by name, and the transitions its path takes under the
        structure (exo/structures.py REFLECT_PATH: a `reflect` under the exokernel)."""
        key = (env_id, name)
        self.reflected[key] = self.reflected.get(key, 0) + 1
        for kind in kinds:
            self.count(kind, env_id, name)

    def hypercalls_of(self, env_id: int) -> Counter[str]:
        self._fold_pending()
        return Counter({name: n for (e, name), n in self._hc.items() if e == env_id})


def _by_name(counts: dict[tuple[int, str], int]) -> Counter[str]:
    """(env id, name) -> count, summed over environments."""
    c: Counter[str] = Counter()
    for (_, name), n in counts.items():
        c[name] += n
    return c
