"""Guest app manifests (``app.toml``): what an app is made of and what it links.

    name = "echo"
    sources = ["echo.s"]          # assembly (.s/.asm) or one static ELF64 executable
    entry = "_start"              # assembly only; an ELF names its own entry
    [libos]                       # the library OS modules to link, and which implementation
    console = "buffered"
    [quota]                       # optional: the app's tenant quotas (exo/tenants.py)
    frames = 4096                 # frames of all its environments, page tables included
    envs = 64                     # live environments
    cpu = 2                       # CPU weight (default 1: equal shares)
    disk = "1M/s"                 # disk bytes/s (":BURST" after it sets the bucket size); disk_ops ops/s
    net = "100K/s"                # network send bytes/s; net_ops frames/s
"""

from __future__ import annotations

import marshal
import os
from pathlib import Path
from typing import Any

from exo.errors import ExoUserError
from exo.record import Record
from exo.tenants import QuotaError, parse_quota

KNOWN_KEYS = {"name", "sources", "entry", "libos", "description", "memory_pages", "args", "quota", "personality",
              "env"}
PERSONALITIES = ("exo", "linux")  # exo: exo's own ABI (hypercalls, libOS calls); linux: a static Linux binary
ASM_SUFFIXES = (".s", ".asm", ".S")


class Manifest(Record):
    _FIELDS = ('path', 'name', 'sources', 'entry', 'libos', 'description', 'args', 'quota', 'personality', 'env')

    def __init__(self, path: Path, name: str, sources: list[Path], entry: str = "_start",
                 libos: dict[str, str] | None = None, description: str = "", args: list[str] | None = None,
                 quota: dict[str, Any] | None = None, personality: str = "exo", env: list[str] | None = None) -> None:
        self.path = path
        self.name = name
        self.sources = sources
        self.entry = entry
        self.libos = {} if libos is None else libos
        self.description = description
        self.args = [] if args is None else args
        # Parsed [quota] (exo/tenants.py parse_quota); the older key memory_pages = N lands here as frames.
        self.quota = {} if quota is None else quota
        # "linux": sources is one static x86-64 Linux executable, run on the posix libOS (docs/posix.md)
        # with env (K=V strings) after exo's default environment.
        self.personality = personality
        self.env = [] if env is None else env

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def is_elf(self) -> bool:
        return not self.sources[0].name.endswith(ASM_SUFFIXES)


def _toml_cache() -> Path:
    return Path(os.environ.get("EXO_CACHE_DIR") or Path.home() / ".cache" / "exo") / "toml"


def parse_toml(text: str, path: Path) -> dict:
    """``tomllib.loads(text)``, remembered by the text's SHA-256 under ``$EXO_CACHE_DIR/toml``:
    importing tomllib takes 3-5 ms, a tenth of `boot echo`'s start-up above ``import unicorn``
    (docs/performance.md), and an app's manifest rarely changes. Only valid TOML whose values
    marshal (no dates) is remembered; invalid TOML is an ExoUserError naming ``path``."""
    from exo.build import sha256

    cached = _toml_cache() / f"{sha256(text.encode()).hexdigest()}.marshal"
    try:
        data = marshal.loads(cached.read_bytes())
        if isinstance(data, dict):
            return data
    except (OSError, EOFError, ValueError, TypeError):
        pass
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ExoUserError(str(path), f"not valid TOML: {e}") from None
    try:
        blob = marshal.dumps(data)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, cached)  # atomic: a concurrent reader sees all of it or nothing
    except (OSError, ValueError):
        pass  # no cache (read-only home, a date in the TOML): parse every time
    return data


def load_manifest(app: str | Path) -> Manifest:
    """Read ``APP/app.toml`` (or the file named); every problem is an ExoUserError."""
    p = Path(app)
    path = p / "app.toml" if p.is_dir() else p
    if not p.exists():
        raise ExoUserError(str(app), "no such guest app (expected a directory with app.toml)")
    if not path.is_file():
        raise ExoUserError(str(path), "missing manifest (every guest app needs an app.toml)")
    try:
        data = parse_toml(path.read_text(), path)
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
    pages = data.get("memory_pages")
    if pages is not None and (not isinstance(pages, int) or isinstance(pages, bool) or pages <= 0):
        raise ExoUserError(str(path), f"memory_pages must be a positive integer, got {pages!r}")
    try:
        quota = parse_quota(need("quota", dict, {}))
    except QuotaError as e:
        raise ExoUserError(str(path), f"[quota] {e}") from None
    if pages is not None:
        if "frames" in quota:
            raise ExoUserError(str(path), "memory_pages and [quota] frames both set: keep [quota] frames")
        quota["frames"] = pages
    personality = need("personality", str, "exo")
    if personality not in PERSONALITIES:
        raise ExoUserError(str(path), f"personality {personality!r} is not one of {', '.join(PERSONALITIES)}")
    env = need("env", list, [])
    if not all(isinstance(e, str) and "=" in e for e in env):
        raise ExoUserError(str(path), "'env' must be a list of \"NAME=value\" strings")
    if env and personality != "linux":
        raise ExoUserError(str(path), "'env' is for personality = \"linux\" (exo's own guests have no environment)")
    if personality == "linux" and (len(files) != 1 or files[0].name.endswith(ASM_SUFFIXES)):
        raise ExoUserError(str(path), "personality = \"linux\" takes one source: a static Linux executable")
    return Manifest(path, name, files, need("entry", str, "_start"), dict(libos),
                    need("description", str, ""), list(args), quota, personality, list(env))
