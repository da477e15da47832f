"""Fixtures for the ``hw`` tests; the helpers live in hw_testkit.py."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from hw_testkit import RAM, FrameAllocator, Guest, Recorder

from hw import Machine


def pytest_configure(config: pytest.Config) -> None:
    """Give the module name ``conftest`` back to tests/conftest.py.

    Test files elsewhere under tests/ do ``from conftest import ...``. Pytest
    imports every conftest.py under the plain name ``conftest``, so the last one
    imported (this one, while tests/hw is collected) would own that name and
    their imports would fail. Pytest calls this hook when it registers this
    conftest, after importing it.
    """
    parent = Path(__file__).resolve().parent.parent / "conftest.py"
    for plugin in config.pluginmanager.get_plugins():
        f = getattr(plugin, "__file__", None)
        if f and Path(f).resolve() == parent:
            sys.modules["conftest"] = plugin
            return


@pytest.fixture
def machine():
    m = Machine(ram_size=RAM, stdin=b"", stdout=io.BytesIO())
    yield m
    m.close()


@pytest.fixture
def alloc(machine: Machine) -> FrameAllocator:
    return FrameAllocator(machine.memory)


@pytest.fixture
def guest(machine: Machine, alloc: FrameAllocator) -> Guest:
    return Guest(machine, alloc)


@pytest.fixture
def rec(machine: Machine) -> Recorder:
    r = Recorder()
    machine.cpu.handler = r
    return r
