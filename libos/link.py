"""Linking: the modules an app names in its manifest, instantiated for one environment.

Called by the command line (the composition root): ``resolve`` checks the
manifest's ``[libos]`` table; ``link`` binds one instance of each chosen
implementation to an environment through the exokernel's library table (a
duck-typed binder: libos never imports exo's internals).
"""

from __future__ import annotations

from typing import Any

from libos.module import LibModule
from libos.registry import CORE, MODULES, module_classes


class LinkError(ValueError):
    pass


def resolve(choices: dict[str, str]) -> list[type[LibModule]]:
    """The classes for ``{module: implementation}``; core comes first whenever anything is linked."""
    out: list[type[LibModule]] = []
    for module, impl in choices.items():
        if module not in MODULES:
            raise LinkError(f"unknown libOS module '{module}' (known: {', '.join(sorted(MODULES))})")
        impls = MODULES[module]
        if impl not in impls:
            raise LinkError(f"module '{module}' has no implementation '{impl}' (choose: {', '.join(impls)})")
        out.append(impls[impl])
    return [CORE, *out] if out else []


def link(binder: Any, env: Any, classes: list[type[LibModule]]) -> dict[str, LibModule]:
    """Instantiate ``classes`` for ``env`` and map their trampolines; returns them by name."""
    port = binder.port(env)
    for cls in module_classes():
        binder.names[cls.INDEX] = cls.NAME
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
