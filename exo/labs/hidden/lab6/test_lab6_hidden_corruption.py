"""Lab 6, hidden: a wire that corrupts and duplicates frames.

The NIC corrupts one byte after the Ethernet header of some frames (docs/net.md): only the IPv4
header checksum and the UDP checksum can tell. A stack that skips either check delivers a damaged
datagram (or echoes one), and the client, which compares every byte, fails.
"""

from __future__ import annotations

import pytest

from exo.labs.plugin import expect
from exo.labs.tests.lab6.test_lab6_net import echo


@pytest.mark.lab(6, points=10)
def test_checksums_stop_corrupted_frames(boot, tmp_path):
    r, _frames = echo(boot, tmp_path, 40, faults="corrupt=0.15,dup=0.1,seed=4")
    expect(r.stdout, r"^stopwait: 40 datagrams echoed intact, [1-9]\d* resent")
    assert r.exit_status == 0 and not r.stuck
    nic = r.stats["net"]["nic"]
    assert nic["corrupted"] >= 5 and nic["duplicated"], nic  # (the seed's doing: the test tests something)
