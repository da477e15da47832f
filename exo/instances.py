"""Snapshots of an environment, and instances started from them (a zygote: issue 17).

An app that has initialised (read its configuration, built its tables, linked its libOS) and
now waits for input is frozen as a ``Snapshot``: the environment becomes its template and never
runs again. Each instance started from it gets a fresh identity (a new environment of the same
app, so the app's quotas bound them all), the template's registers, the template's pages, and
its own copy of each libOS module's state (the module's ``fork``, as for an exofork child). The
template's read-only pages are shared for good; its writable pages are copy-on-write: the
instance maps the template's frame read-only until it first writes the page, by the CPU (a #PF
the exokernel serves: Exokernel._cow_fault) or by the exokernel for one of its hypercalls
(exo/vm.py ``break_cow``), and then gets its own copy. So an instance is where the template was,
pays only for the pages it writes, and no instance can see another's writes.

An instance's blocking call (the one the template waited in) runs again in the instance: a
template snapshotted in ``ipc_recv`` gives instances that each wait for their own message.

What the exokernel does here is what a libOS could do with its hypercalls (env_create, page_map,
its own copy-on-write fault handler, the module's fork); it is in the exokernel for speed and
density: one walk of the template's page tables, and no handler or exception stack per instance.
The rights are the same: a shared page keeps the template's flags and the frame's maximum right;
a copy-on-write page is read-only until it is the instance's own; an instance owns only its
copies. Before an instance forks, or shares or sends a copy-on-write page, the page becomes its
own (a libOS fork copies or shares what it sees, and would see it read-only).
"""

from __future__ import annotations

import copy
import io
import pickle
from typing import TYPE_CHECKING

from exo.abi import HYPERCALL_PAGE, LIBOS_END, EnvStatus, Errno
from exo.errors import HypercallError
from exo.frames import OutOfFrames
from exo.vm import SnapshotMap
from hw.memory import PAGE_SHIFT
from hw.paging import PTE_NX, PTE_P, PTE_U, PTE_W, walk_tables

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel
    from exo.tenants import Tenant

_FLAGS = PTE_P | PTE_W | PTE_U | PTE_NX  # what a mapping says (not the CPU's accessed and dirty bits)


class _Freeze(pickle.Pickler):
    """Pickles a libOS's state with its environment's port left out (a placeholder)."""

    def __init__(self, file: io.BytesIO, port: object) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.port = port

    def persistent_id(self, obj: object) -> int | None:
        return 0 if obj is self.port else None


class _Thaw(pickle.Unpickler):
    """Reads it back with the instance's port in the placeholder's place."""

    def __init__(self, data: bytes, port: object) -> None:
        super().__init__(io.BytesIO(data))
        self.port = port

    def persistent_load(self, pid: object) -> object:
        return self.port


class Snapshot:
    """``env`` frozen where it is (it must not be running): start instances with ``start``."""

    def __init__(self, k: Exokernel, env: Env) -> None:
        if env is k.current or not env.alive:
            raise HypercallError(Errno.EINVAL, f"environment {env.id} cannot be snapshotted now (running or ended)")
        if env.parent is not None:
            # Its parent could make it runnable again (env_set_status), and its writes would then
            # show through in every instance's pages that are still copy-on-write.
            raise HypercallError(Errno.EPERM, f"environment {env.id} is a child of environment {env.parent}: "
                                 "only an app's own environment can be snapshotted")
        self.k = k
        self.template = env
        if env is k._live:  # its registers are still in the vCPU (a context is saved when another is loaded)
            k.cpu.save(env.ctx)
        # Where it waits: a hypercall or library call that runs again when the instance is woken.
        self.retry = (env.retrying, env.retry_hypercall, env.libcall_rsp)
        # The template waits no more and is never scheduled again: its state is the snapshot.
        env.status = EnvStatus.NOT_RUNNABLE
        env.blocked_on, env.ipc_waiting, env.wait_mask = None, False, 0
        k.sleepers.pop(env, None)
        # (va, frame, pte flags, private): its pages but the hypercall and trampoline pages, which
        # come with a new environment and its linked modules.
        self.pages: list[tuple[int, int, int, bool]] = []
        for va, pa, flags, _ in walk_tables(k.machine.memory, env.space.root):
            if HYPERCALL_PAGE <= va < LIBOS_END:
                continue
            frame = pa >> PAGE_SHIFT
            self.pages.append((va, frame, flags, bool(flags & PTE_W)))
        # The same, as an instance maps them (a private page read-only: exo/vm.py SnapshotMap), and
        # the rights each copy-on-write page gets back when it is copied.
        self.map = SnapshotMap([(va, frame, flags & _FLAGS & ~PTE_W if private else flags & _FLAGS)
                                for va, frame, flags, private in self.pages])
        self.cow = {va: flags & _FLAGS for va, _, flags, private in self.pages if private}
        for module in env.modules.values():
            module.freeze()  # e.g. buffered output: printed once, by the template, not by every instance
        self.libos = self._serialise_libos(env)
        self.started = 0

    @staticmethod
    def _serialise_libos(t: Env) -> bytes | None:
        """The template's libOS state (its modules and its port's pager), pickled once: an instance's
        own copy is then one unpickling, in C, instead of a deep copy each (3-5x slower). None if
        some state cannot be pickled (a closure, an open file): instances then get deep copies."""
        if t.port is None:
            return None
        buf = io.BytesIO()
        try:
            _Freeze(buf, t.port).dump((t.modules, t.port.pager))
        except Exception:  # noqa: BLE001 - whatever pickle meets (a ctypes pointer, deep recursion): deep copies then
            return None
        return buf.getvalue()

    @property
    def private_pages(self) -> int:
        return sum(p[3] for p in self.pages)

    @property
    def shared_pages(self) -> int:
        return len(self.pages) - self.private_pages

    def start(self, name: str | None = None, tenant: Tenant | None = None) -> Env:
        """A new instance, runnable, exactly where the template was (in ``tenant``, whose quotas
        bound it: by default the template's app)."""
        k, t = self.k, self.template
        if not t.alive:
            raise HypercallError(Errno.EINVAL, f"the snapshot of {t.name} was released: no instance starts from it")
        env = k.create_env(name or f"{t.name}#{self.started + 1}", t, tenant=tenant)
        t.children.pop()  # an instance is no child of the template: nobody reaps it
        env.parent = None
        env.ephemeral = True  # and once it has ended, the kernel keeps no record of it
        env.template = t.id  # (its transition counts go to the template's)
        try:
            self._copy_pages(env)
        except (HypercallError, OutOfFrames) as e:
            k.destroy(env, exit_status=None)
            why = e.detail if isinstance(e, HypercallError) else str(e)
            raise HypercallError(getattr(e, "errno", Errno.ENOMEM), f"cannot start an instance: {why}") from None
        try:
            self._set_up(env)
        except BaseException:
            k.destroy(env, exit_status=None)  # nothing half-made is left behind
            raise
        self.started += 1
        k.make_runnable(env)
        return env

    def _set_up(self, env: Env) -> None:
        """The instance's registers, libOS and devices, the template's."""
        k, t = self.k, self.template
        k.cpu.copy_context(env.ctx, t.ctx)
        env.ctx.cr3 = env.space.root
        env.retrying, env.retry_hypercall, env.libcall_rsp = self.retry  # the call it waited in runs again
        env.argv, env.symbolize, env.source_line = list(t.argv), t.symbolize, t.source_line
        env.upcall_entry, env.upcall_stack, env.timer_entry = t.upcall_entry, t.upcall_stack, t.timer_entry
        self._copy_libos(env)
        if t.net is not None:
            # Its ring where the template's was (the pages are copy-on-write: the exokernel's first
            # write of a frame copies the page), none of its filters: the template's serve it, and
            # a front end (exo/serve.py) says which frames are this instance's.
            n = t.net
            env.net = type(n)(ring=n.ring, nslots=n.nslots, prod=n.prod, upcall_entry=n.upcall_entry,
                              template=t.id)
        if t.reflect is not None:
            env.reflect, env.reflect_va = env.libcalls.get(t.reflect_va), t.reflect_va
        env.disk_grants = list(t.disk_grants)
        for hook in k.env_create_hooks:
            hook(t, env)

    def _copy_libos(self, env: Env) -> None:
        """Its libOS: a copy of every module's state (sockets, threads, heap, buffers), sharing
        nothing with the template or another instance: the snapshot's serialised state read back
        (or a deep copy of the template's), the modules' references to one another (siblings,
        bound methods such as the pager) to the instance's copies, the template's port its own."""
        k, old = self.k, self.template.port
        if old is None:
            return  # no libOS linked (modules link through the port): nothing to copy
        port = k.libs.port(env)
        if self.libos is not None:
            modules, port.pager = _Thaw(self.libos, port).load()
        else:
            modules, port.pager = copy.deepcopy((self.template.modules, old.pager), {id(old): port, id(k): k})
        for index, clone in modules.items():
            k.libs.link(env, index, clone, clone.entries(), clone.hypercalls)
        port.kernel_mode, port.capture = old.kernel_mode, old.capture

    def _copy_pages(self, env: Env) -> None:
        # Copy-on-write pages: the template's frame, read-only, until the instance first writes the
        # page (a #PF, or the exokernel writing it for a hypercall: exo/vm.py break_cow).
        env.space.map_snapshot(self.map)
        env.space.cow.update(self.cow)

    def release(self) -> None:
        """Destroy the template (instances keep running: a shared page lives while one maps it)."""
        if self.template.alive:
            self.k.destroy(self.template, exit_status=0)
