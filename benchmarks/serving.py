"""Per-request serving (issue 17, part 4c): ``exo serve`` against a host-native Python server.

Each server runs in a process of its own; this process is the client. Workloads:

* **http**: ``guest_apps/httpd``'s built-in page (an HTTP/1.0 GET, one connection per request, the
  server closes it), and Python's ``http.server`` serving the same bytes;
* **udp**: ``guest_apps/udp_echo`` (an RFC 862 echo of a 64-byte datagram, from a new client socket
  per request: a new flow), and a Python UDP echo server. Per request, ``udp_echo 1`` answers
  one datagram and exits (the instance ends with it); long-lived, ``udp_echo`` answers them all.

Modes: ``per-request`` (``exo serve --per-request``: a fresh instance from the snapshot per flow),
``long-lived`` (``exo serve --instances 1``), ``host`` (the Python server). The client keeps
``CONCURRENCY`` requests in flight (closed loop, a thread each) for ``seconds``; a request's latency
is from its connect (or send) to the end of its answer. Figures: requests per second, p50 and p99
latency. The guest clock is virtual (exo serve's default); the host's loopback carries the traffic.
"""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 4
UDP_PAYLOAD = bytes(range(64))
MODES = ("per-request", "long-lived", "host")
WORKLOADS = ("http", "udp")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_page(port: int) -> bytes:
    """httpd's built-in page (its body), for the host server to serve the same bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return _read_all(c).split(b"\r\n\r\n", 1)[1]


def _read_all(c: socket.socket) -> bytes:
    out = bytearray()
    while chunk := c.recv(65536):
        out += chunk
    return bytes(out)


def _host_server(workload: str, port: int, page: bytes) -> None:
    """The host-native server (run in a process of its own: ``--host-server``)."""
    if workload == "http":
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the library's name
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    else:
        class Echo(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                sock.sendto(data, self.client_address)

        server = socketserver.UDPServer(("127.0.0.1", port), Echo)
    print("ready", flush=True)
    server.serve_forever()


def start_server(workload: str, mode: str, page: bytes = b"") -> tuple[subprocess.Popen, int]:
    """A server process, once it is ready; (process, host port)."""
    kind = socket.SOCK_STREAM if workload == "http" else socket.SOCK_DGRAM
    port = _free_port(kind)
    if mode == "host":
        cmd = [sys.executable, "-m", "benchmarks.serving", "--host-server", workload, str(port)]
        p = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        p.stdin.write(page.decode("latin-1"))
        p.stdin.close()
        line = p.stdout.readline()
    else:
        app = "httpd" if workload == "http" else "udp_echo"
        proto, gport = ("tcp", 80) if workload == "http" else ("udp", 7)
        cmd = [sys.executable, "-m", "exo", "serve", str(ROOT / "guest_apps" / app),
               "--net", f"user,hostfwd={proto}:127.0.0.1:{port}-:{gport}", "--max-instances", "64"]
        cmd += ["--per-request"] if mode == "per-request" else ["--instances", "1"]
        if workload == "udp" and mode == "per-request":
            cmd += ["--", "1"]  # answer one datagram and exit: the instance ends with its request
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = ""
        while "ready after" not in line:
            line = p.stderr.readline()
            if not line:
                raise RuntimeError(f"{' '.join(cmd)}: exited before it was ready")
        threading.Thread(target=p.stderr.read, daemon=True).start()  # drain
    if "ready" not in line:
        raise RuntimeError(f"{' '.join(cmd)}: not ready")
    return p, port


def _http_request(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return _read_all(c).startswith(b"HTTP/1.0 200")


def _udp_request(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:  # a new source port: a new flow
        c.settimeout(5)
        c.sendto(UDP_PAYLOAD, ("127.0.0.1", port))
        return c.recv(2048) == UDP_PAYLOAD


def load(request: Callable[[], bool], seconds: float, concurrency: int = CONCURRENCY) -> dict:
    """Closed-loop load: ``concurrency`` threads, each a request after the other, for ``seconds``."""
    latencies: list[float] = []
    failures = [0]
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        bad = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                ok = request()
            except OSError:
                ok = False
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                bad += 1
        with lock:
            latencies.extend(mine)
            failures[0] += bad

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else float("nan")

    return {"requests": len(latencies), "failures": failures[0], "seconds": round(elapsed, 3),
            "rps": round(len(latencies) / elapsed, 1), "p50_ms": round(pct(0.50), 3), "p99_ms": round(pct(0.99), 3)}


def measure(workload: str, mode: str, seconds: float, page: bytes = b"") -> dict:
    p, port = start_server(workload, mode, page)
    try:
        request = (lambda: _http_request(port)) if workload == "http" else (lambda: _udp_request(port))
        load(request, min(1.0, seconds / 4))  # warm-up (imports, caches, the first instances)
        row = load(request, seconds)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    row.update(workload=workload, mode=mode, concurrency=CONCURRENCY)
    return row


def run_all(seconds: float, log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Every workload in every mode, in this order (the host server serves httpd's own page)."""
    rows = []
    p, port = start_server("http", "long-lived")
    try:
        page = _http_page(port)
    finally:
        p.terminate()
        p.wait(10)
    for workload in WORKLOADS:
        for mode in MODES:
            log(f"serving {workload}, {mode}: {seconds:g} s at concurrency {CONCURRENCY}")
            rows.append(measure(workload, mode, seconds, page))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--host-server"]:
        _host_server(argv[1], int(argv[2]), sys.stdin.read().encode("latin-1"))
        return 0
    seconds = float(argv[0]) if argv else 3.0
    for row in run_all(seconds, lambda s: print(s, file=sys.stderr)):
        print(row)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
