"""Read-only image pages shared by every environment loaded from the same image.

An image's code and read-only data are the same bytes in every instance, so they are
loaded once into frames that each instance maps (exo/loader.py): an instance's own cost
is its page tables, its stack, its writable data and the pages it writes (issue 17, the
"dust clouds" of instances). The frames belong to no environment (owner ``SHARED``,
exo/frames.py) and are charged to no app, like the hypercall page; their maximum right is
their segment's (code R+X, read-only data R), so no instance can ever write them, and the
exokernel's page-table checks (mmu_update adds rights only to a frame its caller owns)
keep it so. A frame goes back to the free list when its last mapping goes (the frame
table's reference count), and is forgotten here then; the next instance loads it again.

Instances share pages when they are loaded from the same ``Image`` object (one build,
many spawns: ``exo boot`` of one app with several instances, a server's instances); two
separate builds of the same sources are not recognised as one image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo.frames import SHARED, FrameKind, FrameTable, FrameType
from hw.memory import PAGE_SHIFT

if TYPE_CHECKING:
    from exo.build.image import Image


class SharedImages:
    def __init__(self, frames: FrameTable) -> None:
        self.frames = frames
        self._pages: dict[tuple[int, int], int] = {}  # (image key, page va) -> frame
        self._where: dict[int, tuple[int, int]] = {}  # frame -> (image key, page va)
        self._images: dict[int, tuple[Image, int]] = {}  # key -> (the image, its live shared pages)
        frames.on_shared_free = self._freed

    def page(self, image: Image, va: int, kind: FrameKind, data: bytes) -> int:
        """The shared frame holding ``image``'s page at ``va`` (``data``: its bytes, at most a page,
        the rest zero), loaded by the first instance that asks."""
        key = id(image)  # the Image object is kept alive below while it has pages: the id stays its own
        f = self._pages.get((key, va))
        if f is not None:
            return f
        f = self.frames.alloc(SHARED, FrameType.NORMAL, kind=kind)
        if data:
            self.frames.memory.write(f << PAGE_SHIFT, data)
        self._pages[(key, va)] = f
        self._where[f] = (key, va)
        img, n = self._images.get(key, (image, 0))
        self._images[key] = (img, n + 1)
        return f

    def _freed(self, f: int) -> None:
        where = self._where.pop(f, None)
        if where is None:
            return
        del self._pages[where]
        img, n = self._images[where[0]]
        if n == 1:
            del self._images[where[0]]
        else:
            self._images[where[0]] = (img, n - 1)

    @property
    def frames_held(self) -> int:
        """Shared frames in use now (each counted once, however many instances map it)."""
        return len(self._where)

    def pages_of(self, image: Image) -> int:
        return self._images.get(id(image), (None, 0))[1]
