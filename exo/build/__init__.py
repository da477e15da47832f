"""The toolchain: from an app's sources to a linked image the kernel loads.

``manifest`` reads app.toml; ``asm`` assembles guest assembly (keystone, with a small front end);
``elf`` reads ELF executables (C guests built with gcc); ``image`` links them with the libOS symbols
into a cached `Image`; ``guest_iface`` generates the guest-side interface (exo.inc, exo.h,
docs/abi.md) from the hypercall table. The toolchain reads the kernel's ABI (exo.abi, exo.errors,
the hypercall table) and never its internals; the kernel takes an `Image` as data and never imports
the toolchain (pyproject's import-linter contracts).
"""

# SHA-256 for the caches (images, parsed manifests) from the interpreter's own module, which
# hashlib falls back to without OpenSSL: importing hashlib (and OpenSSL) costs ~2 ms of start-up.
try:  # CPython 3.11
    from _sha256 import sha256
except ImportError:
    try:
        from _sha2 import sha256  # CPython 3.12+
    except ImportError:  # an interpreter built without them
        from hashlib import sha256

__all__ = ["sha256"]
