"""``python -m exo bench net``: UDP echo round trips and TCP echo throughput, per backend.

For each path a client measures, on the host, the rate it sees:

* UDP: round trips per second, one 1..1400-byte datagram at a time
  (tests/netpeer.py ``udp_echo``, after the server has answered once);
* TCP: MB/s of payload moved both ways while one connection echoes
  ``--tcp-mib`` MiB (sent and received at once; counted as 2x the size);
* HTTP: MB/s of one GET of a 16 MiB file (random bytes) from ``httpd`` serving an
  ext2 image made by ``exo mkfs --from`` (user path), against Python's
  ``http.server`` serving the same file from the host's disk.

Paths: the guest apps ``udp_echo`` and ``tcp_echo`` under ``exo boot --clock
wall`` behind ``--net user`` (host sockets on loopback, forwarded by the user
backend), behind ``--net tap`` (root only: a TAP device in a network namespace
of its own, the host kernel's sockets as the client), and guest to guest over
``--net switch`` (the ``nettest`` client app; rate = the difference of two
runs of different sizes divided by the difference of the work, so that the
boot is not counted). The baseline is a host-native Python echo server (one
thread per protocol, on loopback) measured by the same client in the same run:
each guest figure's ratio is guest / native (below 1: slower).
"""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Result, Stats, result, suite_main

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import netpeer  # noqa: E402  (the tests' host-side client: one client for tests and benchmarks)

GUEST = "10.0.2.15"


# --------------------------------------------------------------- host-native baseline
class NativeEcho:
    """UDP and TCP echo servers on 127.0.0.1 in threads of this process."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.ports = {"udp": self.udp.getsockname()[1], "tcp": self.tcp.getsockname()[1]}
        for target in (self._udp_loop, self._tcp_loop):
            threading.Thread(target=target, daemon=True).start()

    def _udp_loop(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(65536)
                self.udp.sendto(data, peer)
            except OSError:
                return

    def _tcp_loop(self) -> None:
        while True:
            try:
                c, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c: socket.socket) -> None:
        with c:
            while data := c.recv(65536):
                c.sendall(data)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


# ------------------------------------------------------------------------ exo servers
def _exo(args: list[str], netns: str | None = None) -> tuple[subprocess.Popen, dict[str, int]]:
    cmd = [sys.executable, "-m", "exo", "boot", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ports: dict[str, int] = {}
    if netns is None:
        while not ports:
            line = proc.stderr.readline().decode()
            if not line:
                raise SystemExit(f"exo: error: bench net: the guest did not start: {proc.stderr.read().decode()}")
            m = re.match(r"exo: net: (\w+) [\d.]+:(\d+)", line)
            if m:
                ports[m.group(1)] = int(m.group(2))
    return proc, ports


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _checked(r: dict, what: str) -> dict:
    if not r.get("ok"):
        raise SystemExit(f"exo: error: bench net: {what} failed: {r}")
    return r


def _user(app: str, proto: str, port: int, run: Callable[[int], dict]) -> dict:
    proc, ports = _exo([f"guest_apps/{app}", "--net", f"user,hostfwd={proto}:127.0.0.1:0-:{port}", "--clock", "wall"])
    try:
        return run(ports[proto])
    finally:
        _stop(proc)


class TapNamespace:
    """A network namespace with a TAP device exo0 (10.0.2.2/24 on the host side)."""

    def __init__(self) -> None:
        self.name = f"exob-{uuid.uuid4().hex[:8]}"
        self._ip("netns", "add", self.name)
        self._ip("-n", self.name, "link", "set", "lo", "up")
        self._ip("netns", "exec", self.name, "ip", "tuntap", "add", "dev", "exo0", "mode", "tap")
        self._ip("-n", self.name, "addr", "add", "10.0.2.2/24", "dev", "exo0")
        self._ip("-n", self.name, "link", "set", "exo0", "up")

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def peer(self, *args: str) -> dict:
        r = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, str(ROOT / "tests" / "netpeer.py"),
                            *args], capture_output=True, text=True, timeout=600)
        return json.loads(r.stdout) if r.stdout else {"ok": False, "error": r.stderr}

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


HTTP_FILE_MIB = 16


def _http_files(tmp: Path) -> tuple[Path, Path]:
    """The file for the HTTP figure, as a host directory and as an ext2 image for httpd."""
    from libos.fs.mkfs import mkfs

    src = tmp / "www"
    src.mkdir(exist_ok=True)
    (src / "big.bin").write_bytes(random.Random(1).randbytes(HTTP_FILE_MIB << 20))
    img = tmp / "www.img"
    if not img.exists():
        mkfs(img, (HTTP_FILE_MIB + 16) << 20, from_dir=src)
    return src, img


def _get_rate(url: str) -> float:
    """MB/s of one GET of the big file (the server answered a first request already)."""
    t0 = time.monotonic()
    r = netpeer.http_get(url)
    dt = time.monotonic() - t0
    if not r.get("ok") or r.get("length") != HTTP_FILE_MIB << 20:
        raise SystemExit(f"exo: error: bench net: GET {url} failed: {r}")
    return r["length"] / dt / 1e6


def _native_http(src: Path) -> float:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(src)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        return _get_rate(f"http://127.0.0.1:{srv.server_address[1]}/big.bin")
    finally:
        srv.shutdown()
        srv.server_close()


def _user_http(img: Path) -> float:
    proc, ports = _exo(["guest_apps/httpd", "--disk", str(img), "--net", "user,hostfwd=tcp:127.0.0.1:0-:80",
                        "--clock", "wall"])
    try:
        netpeer.http_get(f"http://127.0.0.1:{ports['tcp']}/")  # waits for the guest to serve
        return _get_rate(f"http://127.0.0.1:{ports['tcp']}/big.bin")
    finally:
        _stop(proc)


def tap_available() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip") is not None


def _switch_run(tmp: Path, mode: str, n: int) -> float:
    """Seconds to boot the echo server and nettest over the switch and move ``n`` (datagrams or bytes)."""
    from benchmarks.guest import app_with_args, boot_apps

    served = str(n) if mode == "udp" else "1"  # the server exits after n datagrams, or one connection
    apps = [app_with_args(tmp, f"{mode}_echo", [served]), app_with_args(tmp, "nettest", [mode, GUEST, "7", str(n)])]
    seconds, stdout = boot_apps(apps, net="switch", clock="wall")
    if b"intact" not in stdout:
        raise SystemExit(f"exo: error: bench net: switch {mode} run failed: {stdout!r}")
    return seconds


# --------------------------------------------------------------------------- the suite
def run(repeat: int = 3, quick: bool = False, log: Callable[[str], None] | None = None) -> list[Result]:
    log = log or (lambda s: None)
    count = 200 if quick else 1000
    tcp_bytes = (1 if quick else 4) << 20
    repeat = min(repeat, 2) if quick else repeat
    native = NativeEcho()
    samples: dict[str, tuple[list[float], list[float]]] = {}
    http_rates: dict[str, list[float]] = {}

    def sample(path: str, udp: Callable[[], dict], tcp: Callable[[], dict]) -> None:
        u, t = samples.setdefault(path, ([], []))
        log(f"{path}: {count} UDP round trips")
        u.append(_checked(udp(), f"{path} UDP")["rtt_per_s"])
        log(f"{path}: TCP echo of {tcp_bytes >> 20} MiB")
        t.append(_checked(tcp(), f"{path} TCP")["mb_per_s"])

    tap = TapNamespace() if tap_available() else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeat):
                sample("host-native Python server",
                       lambda: netpeer.udp_echo("127.0.0.1", native.ports["udp"], count),
                       lambda: netpeer.tcp_echo("127.0.0.1", native.ports["tcp"], tcp_bytes))
                sample("exo, --net user",
                       lambda: _user("udp_echo", "udp", 7, lambda p: netpeer.udp_echo("127.0.0.1", p, count)),
                       lambda: _user("tcp_echo", "tcp", 7, lambda p: netpeer.tcp_echo("127.0.0.1", p, tcp_bytes)))
                log(f"HTTP GET of {HTTP_FILE_MIB} MiB: host-native and httpd behind --net user")
                src, img = _http_files(Path(tmp))
                http_rates.setdefault("native", []).append(_native_http(src))
                http_rates.setdefault("user", []).append(_user_http(img))
                if tap is not None:
                    def tap_run(app: str, *args: str) -> dict:
                        proc, _ = _exo([f"guest_apps/{app}", "--net", "tap:exo0", "--clock", "wall"], netns=tap.name)
                        try:
                            return tap.peer(*args)
                        finally:
                            _stop(proc)

                    sample("exo, --net tap",
                           lambda: tap_run("udp_echo", "udp", GUEST, "7", str(count)),
                           lambda: tap_run("tcp_echo", "tcp", GUEST, "7", str(tcp_bytes)))
                # Guest to guest: the slope between a small and a large run (boot not counted).
                log("switch: guest-to-guest UDP and TCP")
                small, large = count // 10, count
                du = _switch_run(Path(tmp), "udp", large) - _switch_run(Path(tmp), "udp", small)
                small_b, large_b = tcp_bytes // 8, tcp_bytes
                dt = _switch_run(Path(tmp), "tcp", large_b) - _switch_run(Path(tmp), "tcp", small_b)
                u, t = samples.setdefault("exo, --net switch (guest to guest)", ([], []))
                u.append((large - small) / du if du > 0 else float("nan"))
                t.append(2 * (large_b - small_b) / dt / 1e6 if dt > 0 else float("nan"))
    finally:
        native.close()
        if tap is not None:
            tap.close()

    base_u = result("UDP echo, host-native Python server", Stats.of(samples["host-native Python server"][0], 1),
                    unit="round trips/s")
    base_t = result("TCP echo, host-native Python server", Stats.of(samples["host-native Python server"][1], 1),
                    unit="MB/s")
    out = [base_u, base_t]
    for path, (u, t) in samples.items():
        if path.startswith("host-native"):
            continue
        out.append(result(f"UDP echo, {path}", Stats.of(u, 1), unit="round trips/s", baseline=base_u))
        out.append(result(f"TCP echo, {path}", Stats.of(t, 1), unit="MB/s", baseline=base_t))
    base_h = result(f"HTTP GET of a {HTTP_FILE_MIB} MiB file, host-native Python http.server",
                    Stats.of(http_rates["native"], 1), unit="MB/s")
    out += [base_h, result(f"HTTP GET of a {HTTP_FILE_MIB} MiB file, exo httpd, --net user",
                           Stats.of(http_rates["user"], 1), unit="MB/s", baseline=base_h)]
    if tap is None:
        out[-1] = Result(out[-1].name, out[-1].stats, out[-1].unit, out[-1].baseline, out[-1].ratio,
                         note="(no TAP figures: they need root and /dev/net/tun)")
    return out


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, "python -m exo bench net", __doc__, run, "network (net = tcpip)", repeat=3)


if __name__ == "__main__":
    raise SystemExit(main())
