"""Linking: the modules an app names in its manifest, instantiated for one environment.

Called by the command line (the composition root): ``resolve`` checks the
manifest's ``[libos]`` table; ``link`` binds one instance of each chosen
implementation to an environment through the exokernel's library table (a
duck-typed binder: libos never imports exo's internals).
"""

from __future__ import annotations

from typing import Any

from exo.abi import LIBOS_END, LIBOS_PAGE, PAGE_SIZE
from libos.module import LibModule
from libos.registry import CORE, MODULES, PROBLEMS, LoadError, load


class LinkError(ValueError):
    pass


def resolve(choices: dict[str, str]) -> list[type[LibModule]]:
    """The classes for ``{module: implementation}``; core comes first whenever anything is linked."""
    out: list[type[LibModule]] = []
    for module, impl in choices.items():
        if module not in MODULES:
            extra = f"; ignored: {'; '.join(PROBLEMS)}" if PROBLEMS else ""
            raise LinkError(f"unknown libOS module '{module}' (known: {', '.join(sorted(MODULES))}{extra})")
        impls = MODULES[module]
        if impl not in impls:
            raise LinkError(f"module '{module}' has no implementation '{impl}' (choose: {', '.join(impls)})")
        clash = [p for p in PROBLEMS if f" both register {module}.{impl} " in p]
        if clash:
            raise LinkError(clash[0])
        try:
            out.append(load(module, impl))  # the module's code is imported here, when an app links it
        except LoadError as e:
            raise LinkError(str(e)) from None
    classes = [CORE, *out] if out else []
    check_indexes(classes)
    return classes


# Trampoline pages between LIBOS_PAGE and LIBOS_END (exo/abi.py): one per module index.
MAX_INDEX = (LIBOS_END - LIBOS_PAGE) // PAGE_SIZE - 1


def check_indexes(classes: list[type[LibModule]]) -> None:
    """Each linked module needs a trampoline page of its own: two with the same INDEX would share
    one page (the second's entries replacing the first's, so the guest's calls reach the wrong
    module and its threads end with nothing printed). A LinkError naming both, at build time."""
    owner: dict[int, type[LibModule]] = {}
    for cls in classes:
        if not 0 <= cls.INDEX <= MAX_INDEX:
            raise LinkError(f"libOS module {_named(cls)} has trampoline INDEX {cls.INDEX}, outside 0..{MAX_INDEX}")
        other = owner.setdefault(cls.INDEX, cls)
        if other is not cls:
            raise LinkError(f"libOS modules {_named(other)} and {_named(cls)} both have trampoline INDEX "
                            f"{cls.INDEX}: give one of them a free index")


def _named(cls: type[LibModule]) -> str:
    return f"{cls.NAME} = \"{getattr(cls, 'IMPL', '?')}\" ({cls.__module__}.{cls.__qualname__})"


def link(binder: Any, env: Any, classes: list[type[LibModule]]) -> dict[str, LibModule]:
    """Instantiate ``classes`` for ``env`` and map their trampolines; returns them by name."""
    check_indexes(classes)
    for cls in classes:  # one machine: a trampoline page belongs to one module for every app on it
        other = binder.names.setdefault(cls.INDEX, cls.NAME)
        if other != cls.NAME:
            raise LinkError(f"libOS module {_named(cls)} needs trampoline INDEX {cls.INDEX}, which the "
                            f"{other} module of another app on this machine has: give one of them a free index")
    port = binder.port(env)
    instances = {cls.NAME: cls(port) for cls in classes}
    for inst in instances.values():
        inst.siblings = instances
        binder.link(env, inst.INDEX, inst, inst.entries(), inst.hypercalls)
    for inst in instances.values():
        inst.start()
    return instances


def relink_siblings(instances: dict[int, LibModule]) -> None:
    """After an exofork clone: each module's siblings are the child's instances."""
    by_name = {m.NAME: m for m in instances.values()}
    for m in by_name.values():
        m.siblings = by_name
