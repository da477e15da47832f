"""guest_apps/labs/stopwait, lab 6's grading guest: built from its source, deterministic under loss,
and a clear usage error for bad arguments."""

from __future__ import annotations

import shutil
import subprocess

from conftest import ROOT, need_tool

from exo.api import run
from exo.labs.tests.lab6.test_lab6_net import LOSSY, STOPWAIT, with_args


def test_stopwait_is_rebuilt_identically_from_source(tmp_path):
    need_tool(shutil.which("gcc") is not None and shutil.which("make") is not None, "gcc/make not installed")
    shutil.copytree(ROOT / "guest_apps" / "include", tmp_path / "include")
    work = tmp_path / "labs" / "stopwait"
    shutil.copytree(STOPWAIT, work)
    (work / "stopwait").unlink()
    subprocess.run(["make", "-s", "-C", str(work)], check=True)
    assert (work / "stopwait").read_bytes() == (STOPWAIT / "stopwait").read_bytes()


def test_stopwait_over_a_lossy_wire_is_the_same_every_run(tmp_path):
    def once(d):
        r = run(with_args(STOPWAIT, d, "server", "server", "7", "3000"),
                with_args(STOPWAIT, d, "client", "client", "10.0.2.15", "7", "30"),
                net="switch", net_faults=LOSSY, max_instructions=400_000_000)
        assert r.ok and not r.reports, r
        return r.stdout, r.stats["net"], r.stats["guest_instructions"]

    first = once(tmp_path / "a")
    assert first == once(tmp_path / "b")
    assert b"30 datagrams echoed intact" in first[0] and first[1]["nic"]["lost"] > 0


def test_stopwait_bad_arguments_are_a_usage_error(tmp_path):
    for args in (["client", "10.0.2", "7", "3"], ["server", "7"], ["sideways"], ["client", "10.0.2.15", "0", "3"]):
        r = run(with_args(STOPWAIT, tmp_path / "_".join(args).replace(".", "-"), "app", *args), net="switch")
        assert r.exit_status == 2 and r.stdout.startswith(b"usage: stopwait client ADDR PORT N"), (args, r.stdout)
