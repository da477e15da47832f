"""exo: a small exokernel over an emulated x86-64 machine (see README.md)."""

__version__ = "0.1.0"
