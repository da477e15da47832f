"""A host-side peer for the network tests: real sockets of the host kernel against a guest.

Run as a program (so that a test can run it inside a network namespace with
``ip netns exec``) or imported. Prints one JSON line with what happened.

    python tests/netpeer.py udp HOST PORT COUNT
    python tests/netpeer.py tcp HOST PORT NBYTES
    python tests/netpeer.py http URL
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
import urllib.request

READY_TIMEOUT = 60.0  # seconds to wait for the guest to start serving


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` reproducible bytes that are not a short period (a shifted block would not match)."""
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{block}".encode()).digest()
        block += 1
    return bytes(out[:n])


def udp_echo(host: str, port: int, count: int, timeout: float = 2.0, sizes: list[int] | None = None) -> dict:
    """``count`` datagrams, one at a time, each waiting for its echo; the first also waits for the
    guest. Sizes 1..1400 bytes, or taken in turn from ``sizes``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    start = time.monotonic()
    first = b"ready?"
    while True:  # the guest may still be starting: ask until it answers (that is datagram 1)
        s.sendto(first, (host, port))
        try:
            data, _ = s.recvfrom(65536)
            if data == first:
                break
        except (TimeoutError, ConnectionRefusedError):
            pass
        if time.monotonic() - start > READY_TIMEOUT:
            return {"ok": False, "error": "the guest never answered"}
    s.settimeout(timeout)
    t0 = time.monotonic()
    intact = 1
    for i in range(1, count):
        payload = pattern(sizes[i % len(sizes)] if sizes else 1 + (i * 37) % 1400, i)
        s.sendto(payload, (host, port))
        try:
            data, _ = s.recvfrom(65536)
            while data == first:  # a late echo of a readiness probe
                data, _ = s.recvfrom(65536)
        except TimeoutError:
            return {"ok": False, "error": f"no echo for datagram {i + 1}", "intact": intact}
        if data != payload:
            return {"ok": False, "error": f"datagram {i + 1} ({len(payload)} bytes) came back changed: "
                    f"{len(data)} bytes {data[:16].hex()}", "intact": intact}
        intact += 1
    elapsed = time.monotonic() - t0
    return {"ok": True, "intact": intact, "seconds": elapsed, "rtt_per_s": (count - 1) / elapsed if elapsed else 0}


def _connect(host: str, port: int) -> socket.socket:
    start = time.monotonic()
    while True:
        try:
            c = socket.create_connection((host, port), timeout=5)
            # Longer than Linux's longest pause between zero-window probes (TCP_RTO_MAX, 120 s):
            # when the guest's window update is lost on a lossy wire, the host learns the window
            # opened only at its next probe, and a probe backed off to 120 s is normal TCP, not a
            # stall (docs/net-stack.md).
            c.settimeout(300)
            return c
        except OSError:
            if time.monotonic() - start > READY_TIMEOUT:
                raise
            time.sleep(0.2)


def tcp_echo(host: str, port: int, nbytes: int) -> dict:
    """Send ``nbytes`` on one connection while reading the echo back; compare SHA-256."""
    data = pattern(nbytes, 7)
    start = time.monotonic()
    while True:
        c = _connect(host, port)
        # The user backend accepts before the guest listens: a reset or EOF at once means "not yet".
        try:
            c.sendall(data[:1])
            first = c.recv(1)
        except OSError:
            first = b""
        if first == data[:1]:
            break
        c.close()
        if time.monotonic() - start > READY_TIMEOUT:
            return {"ok": False, "error": "the guest never echoed"}
        time.sleep(0.2)
    t0 = time.monotonic()
    errors = []

    def send() -> None:
        try:
            c.sendall(data[1:])
            c.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(str(e))

    th = threading.Thread(target=send)
    th.start()
    got = bytearray(first)
    try:
        while len(got) < nbytes:
            chunk = c.recv(1 << 16)
            if not chunk:
                break
            got += chunk
    except OSError as e:
        errors.append(str(e))
    th.join()
    elapsed = time.monotonic() - t0
    c.close()
    ok = bytes(got) == data and not errors
    return {"ok": ok, "sent": nbytes, "received": len(got), "errors": errors,
            "sha256_sent": hashlib.sha256(data).hexdigest(), "sha256_received": hashlib.sha256(got).hexdigest(),
            "seconds": elapsed, "mb_per_s": 2 * nbytes / elapsed / 1e6 if elapsed else 0}


def http_get(url: str) -> dict:
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = r.read()
                return {"ok": True, "status": r.status, "type": r.headers.get("Content-Type"),
                        "length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "body": body[:200].decode("latin-1")}
        except urllib.error.HTTPError as e:
            return {"ok": False, "status": e.code}
        except OSError:
            if time.monotonic() - start > READY_TIMEOUT:
                raise
            time.sleep(0.2)


def main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "udp":
        sizes = [int(x) for x in argv[4].split(",")] if len(argv) > 4 else None  # e.g. 3000,65507
        r = udp_echo(argv[1], int(argv[2]), int(argv[3]), sizes=sizes)
    elif kind == "tcp":
        r = tcp_echo(argv[1], int(argv[2]), int(argv[3]))
    elif kind == "http":
        r = http_get(argv[1])
    else:
        raise SystemExit(f"netpeer: unknown test {kind!r}")
    print(json.dumps(r))
    return 0 if r.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
