"""exo: a small exokernel over an emulated x86-64 machine (see README.md)."""

__version__ = "0.1.0"

# The embedding API (exo/api.py, docs/embedding.md), as exo.run, exo.System, ...: loaded on first
# use, so that `import exo` stays cheap for every command that does not boot anything.
_API = frozenset({"App", "Result", "System", "build", "run"})


def __getattr__(name: str) -> object:
    if name in _API:
        from exo import api

        return getattr(api, name)
    raise AttributeError(f"module 'exo' has no attribute {name!r}")
