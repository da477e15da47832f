"""Tenants (exo/tenants.py): per-app quotas and CPU shares, so that no app starves another."""

from __future__ import annotations

import json

import pytest
from conftest import ENV_BOMB, ROOT, WITNESS, boot, make_app
from test_echo import run_exo

from exo.abi import Errno

PRIMES = ROOT / "guest_apps" / "primes"
HOG = ROOT / "guest_apps" / "hog"
FIRST_100_PRIMES = b"".join(b"%d\n" % p for p in
                            [n for n in range(2, 542) if all(n % d for d in range(2, int(n**0.5) + 1))])


def with_quota(d, **quota: object):
    """Append a [quota] table to app ``d``'s app.toml."""
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in quota.items())
    (d / "app.toml").write_text((d / "app.toml").read_text() + "[quota]\n" + lines)
    return d


def test_a_memory_hog_beside_primes_gets_enomem_and_primes_completes():
    """Review finding: the hog took all 65,360 free frames and primes, booted beside it, died on a
    copy-on-write fault whose report did not say it ran out of memory."""
    b = boot(HOG, PRIMES, ram_mib=32)
    hog_lines = [ln for ln in b.stdout.splitlines(keepends=True) if ln.startswith(b"hog:")]
    assert b"".join(ln for ln in b.stdout.splitlines(keepends=True) if not ln.startswith(b"hog:")) \
        == FIRST_100_PRIMES
    assert hog_lines[-1].endswith(b"page_alloc failed with errno %d\n" % Errno.ENOMEM)
    primes = b.kernel.tenants["primes"]
    assert primes.frame_refusals == 0 and all(e.fault is None for e in b.kernel.envs.values()
                                              if e.tenant is primes)
    (report,) = b.reports
    hog = b.kernel.tenants["hog"]
    assert report.env_name == "hog" and report.kind == "page fault (#PF)"
    assert report.reason == f"frame quota of app 'hog' exhausted: {hog.frame_limit} of {hog.frame_limit} frames"
    # Fair default: the two apps split the free frames evenly; the hog held all of its part, no more.
    assert hog.frame_limit == primes.frame_limit and hog.frames_peak == hog.frame_limit


@pytest.mark.parametrize("stop_at", [60_000, 150_000])
def test_frames_charged_equal_frames_owned_mid_run(stop_at):
    """The count kept at alloc/free equals a census of the frame table, while the pipeline runs."""
    b = boot(HOG, PRIMES, ram_mib=32, max_instructions=stop_at)
    k = b.kernel
    census: dict[int, int] = {}
    for owner in k.frames.owner:
        t = k.tenants.by_owner.get(owner)
        if t is not None:
            census[t.id] = census.get(t.id, 0) + 1
    assert {t.id: t.frames_used for t in k.tenants if t.frames_used} == census
    assert k.tenants["primes"].envs_used == sum(1 for e in k.envs.values() if e.alive and e.tenant.name == "primes")


def test_frames_are_counted_exactly_and_given_back():
    """Every frame of an app (children and page tables included) is charged to it, and returned."""
    b = boot(PRIMES, ram_mib=32)
    t = b.kernel.tenants["primes"]
    assert t.frames_used == 0 and t.envs_used == 0  # all 100+ environments gone, every frame back
    assert t.frames_peak > 100 and t.envs_used == 0
    owned = sum(1 for o in b.kernel.frames.owner if o in {e.id for e in b.kernel.envs.values()})
    assert owned == 0


def test_a_stale_refusal_is_not_blamed_for_an_unrelated_fault(app):
    """Refused once, then a frame freed: a later bad pointer's report does not blame the quota."""
    src = """
section .text
_start:
    mov rbx, 0x200000000
more:
    xor edi, edi
    mov rsi, rbx
    mov edx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    add rbx, 4096
    test rax, rax
    jns more                     ; until refused: the quota is full
    xor edi, edi
    mov rsi, 0x200000000
    call HC_PAGE_UNMAP           ; one frame back
    mov rax, 0x300000000
    mov byte ptr [rax], 1        ; a plain bad pointer
"""
    b = boot(with_quota(app("stale", src), frames=64))
    (report,) = b.reports
    assert b.kernel.tenants["stale"].frame_refusals == 1
    assert "quota" not in report.reason


BOMB = """
CHILDREN equ 60
section .text
_start:
    mov r12, CHILDREN
again:
    call LIB_MEMORY_FORK
    test rax, rax
    jle spin                    ; the child (0), or out of quota (<0): spin
    dec r12
    jnz again
spin:
    jmp spin
"""
BUSY = "section .text\n_start:\n    jmp _start\n"


def _shares(b) -> dict[str, float]:
    ts = b.kernel.tenants.apps()
    total = sum(t.instructions for t in ts)
    return {t.name: t.instructions / total for t in ts}


def test_a_fork_bomb_does_not_take_the_cpu_from_a_busy_witness(app):
    """61 runnable environments of one app against one of another: the witness keeps half the CPU
    (within 10% of its fair share), counted in instructions retired under the virtual clock."""
    b = boot(app("bomb", BOMB, libos={"memory": "cow", "console": "buffered"}), app("busy", BUSY),
             max_instructions=30_000_000, ram_mib=64)
    assert len(b.env("bomb").children) == 60
    share = _shares(b)
    assert abs(share["busy"] - 0.5) <= 0.05, share


def test_cpu_weights_set_the_shares(app):
    a = with_quota(app("a", BUSY), cpu=3)
    b = boot(a, app("b", BUSY), max_instructions=8_000_000)
    share = _shares(b)
    assert abs(share["a"] - 0.75) <= 0.075 and abs(share["b"] - 0.25) <= 0.025, share


def test_the_env_quota_gives_eagain(app):
    b = boot(with_quota(app("bomb", ENV_BOMB), envs=8), app("w", WITNESS))
    assert b.stdout == b"ok\n"
    assert b.env("bomb").exit_status == Errno.EAGAIN
    assert len(b.env("bomb").children) == 7
    t = b.kernel.tenants["bomb"]
    assert (t.env_limit, t.env_refusals) == (8, 1)


QUOTA_INFO = """
section .bss
info: resb 48
section .text
_start:
    lea rdi, [rip + info]
    call HC_QUOTA_INFO
    test rax, rax
    jnz bad
    lea rax, [rip + info]
    cmp qword ptr [rax + 24], 5     ; env limit
    jne bad
    cmp qword ptr [rax + 16], 1     ; environments live: this one
    jne bad
    cmp qword ptr [rax + 40], 3     ; cpu weight
    jne bad
    mov rcx, [rax]                  ; frames used <= frame limit
    cmp rcx, [rax + 8]
    ja bad
    mov rdi, SCHED_EXIT
    mov rsi, [rax + 32]             ; exit with the descriptor limit
    call HC_SCHED_OP
bad:
    mov rdi, SCHED_EXIT
    mov rsi, 1
    call HC_SCHED_OP
"""


def test_quota_info_reports_the_apps_quotas(app):
    b = boot(with_quota(app("qi", QUOTA_INFO), envs=5, fds=77, cpu=3))
    assert b.env("qi").exit_status == 77
    assert boot(app("qd", QUOTA_INFO.replace("], 5 ", "], 1024 ").replace("], 3 ", "], 1 "))).env("qd").exit_status == 1024


def test_one_app_alone_gets_all_the_free_frames():
    from exo.api import spawn_apps  # noqa: F401  (the path every boot takes)

    b = boot(PRIMES, ram_mib=32)
    t = b.kernel.tenants["primes"]
    assert t.frame_limit >= b.kernel.frames.free_count - 16  # all but what the exokernel itself keeps


# ---------------------------------------------------------------- options and manifests
@pytest.mark.parametrize("spec, message", [
    ("primes", "expected APP:KEY=VALUE"),
    ("primes:frames", "is not KEY=VALUE"),
    ("primes:frames=0", "quota frames must be positive"),
    ("primes:frames=-3", "is not a whole number"),
    ("primes:cpu=5000", "above 1000"),
    ("primes:fds=0", "quota fds must be positive"),
    ("primes:fds=2M", "above 1048576 (Linux's fs.nr_open)"),
    ("primes:bogus=1", "unknown quota 'bogus'"),
    ("primes:net=fast", "is not a whole number"),
    ("primes:disk=1M/s:0", "burst must be positive"),
    ("nosuch:frames=10", "no booted app is named 'nosuch'"),
    ("primes:envs=2,envs=3", "envs given twice"),
])
def test_bad_quota_options_are_one_line_errors(tmp_path, spec, message):
    r = run_exo("boot", str(PRIMES), "--quota", spec, cache=str(tmp_path / "c"))
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b""
    assert len(err.splitlines()) == 1 and err.startswith("exo: error: --quota: ") and message in err, err


@pytest.mark.parametrize("table, message", [
    ('frames = "lots"', "is not a whole number"),
    ("frames = true", "must be a number or a string"),
    ("cpu = 0", "quota cpu must be positive"),
    ("speed = 1", "unknown quota 'speed'"),
])
def test_bad_quota_tables_are_one_line_errors_naming_the_file(tmp_path, table, message):
    d = make_app(tmp_path, "q", "_start:\n    jmp _start\n")
    (d / "app.toml").write_text((d / "app.toml").read_text() + f"[quota]\n{table}\n")
    r = run_exo("boot", str(d), cache=str(tmp_path / "c"))
    err = r.stderr.decode()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"{d / 'app.toml'}: [quota] " in err and message in err, err


def test_quotas_that_leave_no_frames_for_the_other_apps_are_refused(tmp_path):
    r = run_exo("boot", str(HOG), str(PRIMES), "--ram", "16", "--quota", "hog:frames=100000", cache=str(tmp_path / "c"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert b"leave nothing of the" in r.stderr and b"for the 1 app(s) with no frame quota" in r.stderr


def test_memory_pages_and_quota_frames_conflict(tmp_path):
    d = make_app(tmp_path, "q", "_start:\n    jmp _start\n", memory_pages=100)
    (d / "app.toml").write_text((d / "app.toml").read_text() + "[quota]\nframes = 10\n")
    r = run_exo("boot", str(d), cache=str(tmp_path / "c"))
    assert r.returncode == 2 and b"memory_pages and [quota] frames both set" in r.stderr


def test_quota_option_overrides_the_manifest_and_stats_show_use_against_quota(tmp_path):
    out = tmp_path / "s.json"
    r = run_exo("boot", str(HOG), str(PRIMES), "--ram", "32", "--quota", "hog:frames=300,envs=4,cpu=2",
                "--quota", "primes:net=1M/s", "--stats", "--stats-json", str(out), cache=str(tmp_path / "c"))
    assert r.returncode == 1, r.stderr.decode()  # the hog's fault
    assert b"frame quota of app 'hog' exhausted: 300 of 300 frames" in r.stderr
    assert b"tenants: use against quota" in r.stderr
    tenants = {t["name"]: t for t in json.loads(out.read_text())["tenants"]}
    assert tenants["hog"]["frames"] == {"used": 0, "peak": 300, "limit": 300, "refused": 2}
    assert tenants["hog"]["envs"]["limit"] == 4 and tenants["hog"]["cpu"]["weight"] == 2
    assert tenants["primes"]["net"]["limit"] == "1048576 bytes/s"
    assert tenants["primes"]["frames"]["refused"] == 0 and tenants["primes"]["envs"]["used"] == 0
    assert r.stdout.endswith(FIRST_100_PRIMES[-8:])


# ---------------------------------------------------------------- rate limits (token buckets)
def test_a_token_bucket_delays_by_exactly_the_missing_tokens():
    from exo.tenants import NS, RateLimit, TokenBucket

    lim = RateLimit(bytes=TokenBucket(1000), ops=TokenBucket(10, burst=2))
    assert lim.wait_ns(1000, 1, 0) == 0  # the burst: a full bucket
    assert lim.wait_ns(500, 1, 0) == NS // 2  # 500 bytes at 1000/s
    assert lim.wait_ns(500, 1, NS // 2) == 0
    assert lim.wait_ns(1, 1, NS // 2) == NS // 1000  # bytes: 1 ms; ops: 1 left of the burst of 2
    assert lim.wait_ns(5000, 1, 10 * NS) == 0  # larger than the burst: goes once full (into debt)
    assert lim.wait_ns(1, 1, 10 * NS) == 4 * NS + NS // 1000  # pays the debt back first
    assert (lim.delays, lim.delayed_ns) == (3, NS // 2 + NS // 1000 + 4 * NS + NS // 1000)


def test_a_disk_rate_quota_delays_in_guest_time_and_fails_nothing(app, tmp_path):
    from test_disk import BUF, CHECK, SECTORS, boot_disk, disk_io, disk_of, program, req, sector_bytes

    from exo.abi import DiskOp

    image = tmp_path / "disk.img"
    image.write_bytes(b"".join(sector_bytes(i) for i in range(SECTORS)))

    body = (req(0, DiskOp.READ, 5, 8, BUF) + disk_io(1) + CHECK) * 10  # 10 x 4 KiB
    b = boot_disk(with_quota(app("reader", program(body)), disk="4K/s"), disk=disk_of(image))
    env = b.envs[0]
    assert env.fault is None and env.exit_status == 0
    lim = b.kernel.tenants["reader"].disk
    assert lim.delays == 9  # the first read took the burst, each next one waited for a second's tokens
    assert b.kernel.machine.clock.now_ns() >= 9 * 10**9
    assert b.kernel.acct.hypercalls["disk_io"] == 10  # a delayed call is retried, counted once


def test_a_rate_sleeper_woken_early_by_its_parent_is_kept_once():
    """A parent that makes its rate-limited child runnable over and over (each time the child reruns
    its call and sleeps again) must not grow the exokernel's sleeper set: each entry was walked on
    every scheduling decision, so the parent could slow every app down without bound."""
    from exo.abi import EnvStatus
    from exo.kernel import Exokernel
    from hw import Machine

    k = Exokernel(Machine(16 << 20), on_fault=lambda r: None)
    parent = k.create_env("parent")
    child = k.create_env("child", parent)
    for _ in range(100):
        k.sleep_until(child, 10**12, "net rate")
        k.set_status(child, EnvStatus.RUNNABLE)  # env_set_status by the parent: the child reruns its call
    k.sleep_until(child, 10**12, "net rate")
    assert list(k.sleepers) == [child]
    k.machine.clock.advance(10**12)
    k._wake_sleepers(idle=False)
    assert not k.sleepers and child.status == EnvStatus.RUNNABLE


def test_a_net_flood_beside_a_udp_echo_is_held_to_its_rate(tmp_path):
    """Without a net quota the flood fills the echo server's ring, a client datagram is dropped and
    the client waits forever; with one, the echo's round trips continue (switch: guest to guest)."""
    from benchmarks.guest import app_with_args

    def run(quota: str | None):
        server = app_with_args(tmp_path, "udp_echo", [])
        client = app_with_args(tmp_path, "nettest", ["udp", "10.0.2.15", "7", "50"])
        flood = app_with_args(tmp_path, "flood", ["8000"])
        if quota:
            with_quota(flood, net=quota)
        return boot(server, client, flood, net="switch", max_instructions=None)

    b = run("1M/s")
    assert b.stdout == b"udp: 50 datagrams echoed intact\n"
    assert b.env("nettest").exit_status == 0 and b.env("flood").exit_status == 0
    lim = b.kernel.tenants["flood"].net
    assert lim.delays > 1000 and b.kernel.net.stats["tx_delayed"] == lim.delays
    flood_bytes = 8001 * (1472 + 42)  # every datagram went (delayed, never dropped at the sender)
    assert b.kernel.machine.clock.now_ns() >= (flood_bytes - (1 << 20)) * 10**9 // (1 << 20)
    unlimited = run(None)
    assert unlimited.stdout == b"" and unlimited.env("nettest").fault.startswith("blocked forever")


COW_SHORT = """
section .text
_start:
    mov edi, 4096
    call LIB_MEMORY_SBRK
    mov r14, rax
    mov byte ptr [r14], 7        ; a heap page of its own
    call LIB_MEMORY_FORK         ; now copy-on-write in parent and child
    test rax, rax
    jz child
    mov rbx, 0x200000000
more:
    xor edi, edi
    mov rsi, rbx
    mov edx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    add rbx, 4096
    test rax, rax
    jns more                     ; until the app's frame quota refuses
    mov byte ptr [r14], 8        ; copy-on-write fault: no frame for the copy
child:
    xor edi, edi
    call LIB_CORE_EXIT
"""


def test_a_copy_on_write_fault_short_of_frames_names_the_quota(app):
    b = boot(with_quota(app("cow", COW_SHORT, libos={"memory": "cow", "console": "buffered"}), frames=300),
             app("w", WITNESS))
    assert b.stdout == b"ok\n"
    (report,) = b.reports
    assert report.env_name == "cow" and report.error_code & 0x3 == 0x3  # a write to a present page
    assert report.reason == "frame quota of app 'cow' exhausted: 300 of 300 frames"
    assert b.kernel.tenants["cow"].frames_used == 0


def test_a_microkernel_ipc_ping_pong_does_not_starve_another_app(app):
    """Before tenants, wake_first put the server and then its client at the head of the run queue:
    an app calling a server in a loop kept the CPU and a busy app beside it retired nothing. The
    hand-off now runs inside the caller's turn, so the server's time counts against the caller."""
    caller = app("caller", "section .text\n_start:\n    call LIB_CONSOLE_FLUSH\n    jmp _start\n",
                 libos={"console": "buffered"})
    b = boot(caller, app("busy", BUSY), max_instructions=3_000_000, structure="microkernel")
    ins = {e.name: e.instructions for e in b.kernel.envs.values()}
    assert ins["busy"] == 1_500_000 and ins["caller"] + ins["console-server"] == 1_500_000, ins
