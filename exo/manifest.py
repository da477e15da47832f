"""Guest app manifests (``app.toml``): what an app is made of and what it links.

    name = "echo"
    sources = ["echo.s"]          # assembly (.s/.asm) or one static ELF64 executable
    entry = "_start"              # assembly only; an ELF names its own entry
    [libos]                       # the library OS modules to link, and which implementation
    console = "buffered"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from exo.errors import ExoUserError

KNOWN_KEYS = {"name", "sources", "entry", "libos", "description", "memory_pages", "args"}
ASM_SUFFIXES = (".s", ".asm", ".S")


@dataclass
class Manifest:
    path: Path
    name: str
    sources: list[Path]
    entry: str = "_start"
    libos: dict[str, str] = field(default_factory=dict)
    description: str = ""
    memory_pages: int = 1 << 16
    args: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def is_elf(self) -> bool:
        return not self.sources[0].name.endswith(ASM_SUFFIXES)


def load_manifest(app: str | Path) -> Manifest:
    """Read ``APP/app.toml`` (or the file named); every problem is an ExoUserError."""
    p = Path(app)
    path = p / "app.toml" if p.is_dir() else p
    if not p.exists():
        raise ExoUserError(str(app), "no such guest app (expected a directory with app.toml)")
    if not path.is_file():
        raise ExoUserError(str(path), "missing manifest (every guest app needs an app.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ExoUserError(str(path), f"not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExoUserError(str(path), f"cannot read: {e}") from None
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ExoUserError(str(path), f"unknown key '{unknown[0]}' (known: {', '.join(sorted(KNOWN_KEYS))})")

    def need(key: str, kind: type, default=None):
        if key not in data:
            if default is None:
                raise ExoUserError(str(path), f"missing required key '{key}'")
            return default
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ExoUserError(str(path), f"'{key}' must be a {kind.__name__}, not {type(value).__name__}")
        return value

    name = need("name", str)
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ExoUserError(str(path), f"name {name!r} must be letters, digits, '-' or '_'")
    sources = need("sources", list)
    if not sources or not all(isinstance(s, str) for s in sources):
        raise ExoUserError(str(path), "'sources' must be a non-empty list of file names")
    files = []
    for s in sources:
        f = (path.parent / s).resolve()
        if not f.is_file():
            raise ExoUserError(str(path), f"source '{s}' not found")
        files.append(f)
    if len(files) > 1 and any(not f.name.endswith(ASM_SUFFIXES) for f in files):
        raise ExoUserError(str(path), "an ELF executable must be the only source")
    libos = need("libos", dict, {})
    for k, v in libos.items():
        if not isinstance(v, str):
            raise ExoUserError(str(path), f"[libos] {k} must name an implementation (a string)")
    args = need("args", list, [])
    if not all(isinstance(a, str) for a in args):
        raise ExoUserError(str(path), "'args' must be a list of strings")
    pages = need("memory_pages", int, 1 << 16)
    if pages <= 0:
        raise ExoUserError(str(path), f"memory_pages must be positive, got {pages}")
    return Manifest(path, name, files, need("entry", str, "_start"), dict(libos),
                    need("description", str, ""), pages, list(args))
