"""The tap backend against the host kernel: ARP and ICMP echo through a real TAP interface."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import need_tool
from test_net_kit import ACK, BCAST, arp, eth, icmp_echo, ip, ipv4, mac, parse  # noqa: F401

from hw.net.tap import TapBackend
from hw.nic import open_nic

GUEST_MAC = mac("52:54:00:12:34:99")
GUEST_IP = ip("10.0.9.2")
HOST_IP = ip("10.0.9.1")


def need_root_and_tun() -> None:
    """conftest.need_tool for what only root has: skip with the reason (a failure under EXO_REQUIRE_TOOLS=1)."""
    need_tool(os.geteuid() == 0, "needs root (CAP_NET_ADMIN) to create a tap interface")
    need_tool(os.path.exists("/dev/net/tun"), "/dev/net/tun does not exist (no TUN/TAP support)")
    need_tool(shutil.which("ip") is not None, "iproute2 (ip) is not installed")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def tap():
    need_root_and_tun()
    name = f"exot{os.getpid() % 100000}"
    nic = open_nic(f"tap:{name}")
    try:
        assert nic.external
        sh("ip", "addr", "add", "10.0.9.1/24", "dev", name)
        sh("ip", "link", "set", name, "up")
        yield nic
    finally:
        nic.close()
    # a tap we created goes away with our fd
    assert subprocess.run(["ip", "link", "show", name], capture_output=True).returncode != 0


def exchange(nic, want, deadline: float = 5.0):
    """Receive until ``want(pkt)``; answer the host's ARP requests for the guest meanwhile."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        nic.wait(0.2)
        for f in nic.receive():
            p = parse(f)
            if p.etype == 0x0806 and p.arp_op == 1 and p.tpa == GUEST_IP:
                nic.transmit(eth(p.src, GUEST_MAC, 0x0806, arp(2, GUEST_MAC, GUEST_IP, p.sha, p.spa)))
            elif want(p):
                return p
    pytest.fail("no answer from the host kernel")


def test_arp_and_ping_through_a_tap(tap) -> None:
    tap.transmit(eth(BCAST, GUEST_MAC, 0x0806, arp(1, GUEST_MAC, GUEST_IP, bytes(6), HOST_IP)))
    rep = exchange(tap, lambda p: p.etype == 0x0806 and p.arp_op == 2 and p.spa == HOST_IP)
    assert rep.dst == GUEST_MAC and rep.tha == GUEST_MAC and rep.tpa == GUEST_IP
    host_mac = rep.sha
    payload = b"exo ping through a tap " * 3
    tap.transmit(eth(host_mac, GUEST_MAC, 0x0800, ipv4(GUEST_IP, HOST_IP, 1, icmp_echo(0x1234, 1, payload))))
    echo = exchange(tap, lambda p: p.etype == 0x0800 and p.proto == 1 and p.icmp_type == 0)
    assert echo.ok and echo.ip_src == HOST_IP and echo.ip_dst == GUEST_IP and echo.data == payload
    assert tap.stats["tx"] >= 2 and tap.stats["rx"] >= 2


def test_bad_names_are_one_line() -> None:
    for bad in ("", "a/b", "x" * 16, "a b", "eth0:1"):
        with pytest.raises(ValueError, match="tap: .* is not an interface name"):
            TapBackend(bad)


def test_without_privilege_the_error_says_what_is_needed() -> None:
    need_root_and_tun()  # to drop privileges we must have them
    code = ("import os\nimport hw.net.tap\nfrom hw.nic import open_nic\n"  # imports first: nobody cannot read them
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n open_nic('tap:exonopriv')\nexcept ValueError as e:\n print(e)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "needs root or CAP_NET_ADMIN" in r.stdout and r.stdout.count("\n") == 1
