"""Reverse execution in gdb (exo/gdb/history.py): stock gdb in batch mode runs reverse-stepi,
reverse-step and reverse-continue against real guests; the run must stay the run it was (same
output, once; same statistics) and leave no process behind.

Every process has a timeout (test_gdb.Stub): a stub that stops answering fails the test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_app
from test_gdb import ROOT, TIMEOUT, Stub, _symbols

# 3M instructions of spinning (the history has checkpoints at 0, 1M, 2M, 3M), then two
# labelled register changes and two writes; exits with rbx (8).
SPIN = """
section .text
_start:
    mov rbx, 5
    mov rcx, 1500000
spin:
    dec rcx
    jnz spin
mark:
    mov rbx, 7
    add rbx, 1
after:
    lea rdi, [rip + msg]
    mov rsi, 6
    call HC_CONSOLE_WRITE
    lea rdi, [rip + msg]
    mov rsi, 6
    call HC_CONSOLE_WRITE
done:
    mov rdi, SCHED_EXIT
    mov rsi, rbx
    call HC_SCHED_OP
section .data
msg: db "hello", 10
"""

# Reads 4 bytes, echoes them, spins 1M instructions, again: console input crosses checkpoints.
READER = """
section .text
_start:
    mov r12, 2
again:
    lea rdi, [rip + buf]
    mov rsi, 4
    call HC_CONSOLE_READ
got:
    mov rsi, rax
    lea rdi, [rip + buf]
    call HC_CONSOLE_WRITE
    mov rcx, 500000
spin:
    dec rcx
    jnz spin
    dec r12
    jnz again
done:
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .bss
buf: resb 16
"""


@pytest.fixture
def gdb_tool():
    import shutil

    from conftest import need_tool

    need_tool(shutil.which("gdb") is not None, "gdb is not installed")


def _regs(text: str, *names: str) -> list[tuple[int, ...]]:
    """Every `info registers NAMES` block in gdb's output, in order, as tuples of values."""
    rows = re.findall(r"^(\w+)\s+(0x[0-9a-f]+)\s", text, re.M)
    out, cur = [], []
    for name, value in rows:
        if name == names[0] and cur:
            out.append(tuple(cur))
            cur = []
        if name in names:
            cur.append(int(value, 16))
    if cur:
        out.append(tuple(cur))
    return out


def _leftovers(marker: str) -> list[str]:
    """Processes still alive (not zombies reaped later) whose command line names ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def test_reverse_stepi_restores_registers_and_forward_again(tmp_path, gdb_tool):
    app = make_app(tmp_path, "spin", SPIN)
    sym = _symbols(app)
    stub = Stub(str(app))
    text = stub.gdb(f"break *{sym['after']:#x}", "continue", "info registers rip rbx",
                    "reverse-stepi", "info registers rip rbx",
                    "reverse-stepi", "info registers rip rbx",
                    "stepi", "info registers rip rbx",
                    "stepi", "info registers rip rbx", "delete", "continue")
    regs = _regs(text, "rip", "rbx")
    add = sym["mark"] + 7  # mov rbx, 7 is 7 bytes (REX.W C7 /0 imm32)
    assert regs == [(sym["after"], 8), (add, 7), (sym["mark"], 5), (add, 7), (sym["after"], 8)], text
    assert "exited with code 010" in text, text
    code, out, err = stub.finish()
    assert (code, out) == (8, "hello\nhello\n"), err
    assert "Traceback" not in err, err
    assert not _leftovers(str(app)), _leftovers(str(app))


def test_reverse_continue_to_earlier_breakpoints_then_beginning(tmp_path, gdb_tool):
    app = make_app(tmp_path, "spin", SPIN)
    sym = _symbols(app)
    stub = Stub(str(app))
    text = stub.gdb(f"break *{sym['mark']:#x}", f"break *{sym['done']:#x}", "continue", "continue",
                    "info registers rip rbx", "reverse-continue", "info registers rip rbx",
                    "reverse-continue", "info registers rip rbx", "delete", "continue")
    assert _regs(text, "rip", "rbx") == [(sym["done"], 8), (sym["mark"], 5), (sym["_start"], 0)], text
    assert text.count(f"Breakpoint 1, {sym['mark']:#018x}") == 2, text  # forward, then backward
    assert "No more reverse-execution history." in text, text
    code, out, err = stub.finish()
    # Ran from the start a second time: the output it had already shown is not shown again.
    assert (code, out) == (8, "hello\nhello\n"), err
    assert not _leftovers(str(app)), _leftovers(str(app))


def test_console_input_replayed_and_output_not_duplicated(tmp_path, gdb_tool):
    app = make_app(tmp_path, "reader", READER)
    sym = _symbols(app)
    stub = Stub(str(app), stdin=b"abcdwxyz")
    text = stub.gdb(f"break *{sym['done']:#x}", f"break *{sym['got']:#x}", "continue", "continue", "continue",
                    "info registers rax", "reverse-continue", "info registers rax rip",
                    f"x/4c {sym['buf']:#x}",
                    "reverse-continue", f"x/4c {sym['buf']:#x}", "delete", "continue")
    assert "'w'" in text and "'x'" in text, text  # the second read, re-executed from the log
    code, out, err = stub.finish()
    assert (code, out) == (0, "abcdwxyz"), err
    assert not _leftovers(str(app)), _leftovers(str(app))


def test_reverse_step_over_assembly_lines(tmp_path, gdb_tool):
    app = make_app(tmp_path, "spin", SPIN)
    elf = tmp_path / "spin.elf"
    subprocess.run([sys.executable, "-m", "exo", "image", str(app), "--elf", str(elf)], cwd=ROOT, check=True,
                   capture_output=True, timeout=TIMEOUT)
    stub = Stub(str(app))
    cmd = ["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", f"target remote 127.0.0.1:{stub.port}",
           "-ex", "break after", "-ex", "continue", "-ex", "info line *$pc", "-ex", "reverse-step",
           "-ex", "info line *$pc", "-ex", "reverse-step", "-ex", "info line *$pc", "-ex", "info registers rbx",
           "-ex", "delete", "-ex", "continue", str(elf)]
    r = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    text = r.stdout.decode() + r.stderr.decode()
    lines = [int(n) for n in re.findall(r'^Line (\d+) of "[^"]*main\.s"', text, re.M)]
    src = (app / "main.s").read_text().splitlines()
    want = [i + 1 for i, line in enumerate(src) if line.strip() in ("lea rdi, [rip + msg]", "add rbx, 1",
                                                                   "mov rbx, 7")]
    assert lines == [want[2], want[1], want[0]], text  # after: the lea; back a line each time
    assert re.search(r"rbx\s+0x5\b", text), text
    code, out, err = stub.finish()
    assert (code, out) == (8, "hello\nhello\n"), err


def test_reverse_changes_no_output_or_statistics(tmp_path, gdb_tool):
    """Breakpoints, going back and forward again: the same output and --stats-json as a plain run."""
    from test_echo import run_exo

    app = make_app(tmp_path, "reader", READER)
    sym = _symbols(app)
    plain = run_exo("boot", str(app), "--stats-json", str(tmp_path / "plain.json"), stdin=b"abcdwxyz")
    stub = Stub(str(app), "--stats-json", str(tmp_path / "gdb.json"), stdin=b"abcdwxyz")
    text = stub.gdb(f"break *{sym['spin']:#x}", "continue", "continue", "reverse-stepi", "reverse-continue",
                    "stepi", "reverse-stepi", "delete", "continue")
    assert "exited normally" in text, text
    code, out, err = stub.finish()
    assert (code, out.encode()) == (plain.returncode, plain.stdout), err
    assert (tmp_path / "plain.json").read_text() == (tmp_path / "gdb.json").read_text()


@pytest.mark.parametrize("args, why", [
    (["--clock", "wall"], "the wall clock"),
    (["--net", "user"], "the network has an outside peer"),
    (["--net", "switch", "--pcap", "{tmp}/x.pcap"], "--pcap would capture"),
])
def test_refused_where_a_run_cannot_be_re_executed(tmp_path, gdb_tool, args, why):
    app = make_app(tmp_path, "spin", SPIN)
    sym = _symbols(app)
    stub = Stub(str(app), *(a.format(tmp=tmp_path) for a in args))
    text = stub.gdb(f"break *{sym['after']:#x}", "continue", "reverse-stepi", "info registers rip", "delete",
                    "continue")
    assert re.search(rf"rip\s+{sym['after']:#x}", text), text  # did not move
    assert "exited with code 010" in text, text
    code, out, err = stub.finish()
    assert code == 8 and f"reverse execution off: {why}" in err and "cannot go back" in err, err


def test_history_off(tmp_path, gdb_tool):
    app = make_app(tmp_path, "spin", SPIN)
    stub = Stub(str(app), "--gdb-history", "0")
    text = stub.gdb("stepi", "reverse-stepi", "continue")
    assert "does not support this command" in text, text
    code, _, err = stub.finish()
    assert code == 8, err


@pytest.mark.parametrize("args, what", [
    (["--gdb-history", "8"], "needs --gdb"),
    (["--gdb", "127.0.0.1:0", "--gdb-history", "-1"], "must be >= 0"),
])
def test_bad_history_options(tmp_path, args, what):
    app = make_app(tmp_path, "spin", SPIN)
    r = subprocess.run([sys.executable, "-m", "exo", "boot", str(app), *args], cwd=ROOT, capture_output=True,
                       timeout=TIMEOUT)
    err = r.stderr.decode()
    assert r.returncode == 2 and what in err and len(err.splitlines()) == 1, err


def test_kill_ends_every_process(tmp_path, gdb_tool):
    app = make_app(tmp_path, "spin", SPIN)
    sym = _symbols(app)
    stub = Stub(str(app))
    stub.gdb(f"break *{sym['done']:#x}", "continue", "reverse-stepi", "kill")
    code, out, err = stub.finish()
    assert code == 137 and "killed by gdb" in err, err
    assert not _leftovers(str(app)), _leftovers(str(app))


def test_breakpoint_hits_change_no_instruction_count(tmp_path, gdb_tool):
    """A debugger's int3 is not a guest instruction (Unicorn counts it: the stub takes it back), so
    stopping at breakpoints gives the counts of a plain run, which re-execution relies on."""
    from test_echo import run_exo

    app = make_app(tmp_path, "spin", SPIN)
    sym = _symbols(app)
    plain = run_exo("boot", str(app), "--stats-json", str(tmp_path / "plain.json"))
    stub = Stub(str(app), "--stats-json", str(tmp_path / "gdb.json"), "--gdb-history", "0")
    text = stub.gdb(f"break *{sym['spin']:#x}", "continue", "continue", "continue", f"break *{sym['done']:#x}",
                    "delete 1", "continue", "continue")
    assert "Breakpoint 2," in text and "exited with code 010" in text, text
    code, out, err = stub.finish()
    assert (code, out.encode()) == (plain.returncode, plain.stdout), err
    assert (tmp_path / "plain.json").read_text() == (tmp_path / "gdb.json").read_text()


def test_environments_go_back_each_in_its_own_history(gdb_tool):
    """forktree: the stop after going back is the same thread, one of its own instructions back,
    though other environments ran in between; reverse-continue finds that thread's latest hit."""
    child = _symbols(ROOT / "guest_apps/forktree")["child"]
    stub = Stub(str(ROOT / "guest_apps/forktree"))
    text = stub.gdb(f"break *{child:#x}", "continue", "continue", "stepi", "stepi", "info registers rip",
                    "reverse-stepi", "info registers rip", "thread", "reverse-continue", "thread", "delete", "continue")
    hits = re.findall(rf'Thread 3 (?:"forktree\.2" )?hit Breakpoint 1, {child:#018x}', text)  # (a name: newer stubs)
    assert len(hits) == 2, text  # forward, then backward
    assert _regs(text, "rip") == [(child + 0xA,), (child + 7,)], text
    assert text.count("[Current thread is 3 (Thread 3)]") == 2, text
    code, out, err = stub.finish()
    assert code == 0 and out.count("I am") == 15, err


def test_sigterm_to_the_supervisor_ends_every_process(tmp_path):
    app = make_app(tmp_path, "forever", "section .text\n_start:\n    inc rax\n    jmp _start\n")
    stub = Stub(str(app), wait=False)
    deadline = time.monotonic() + TIMEOUT
    while len(_leftovers(str(app))) < 3 and time.monotonic() < deadline:  # supervisor, runner, a checkpoint
        time.sleep(0.1)
    assert len(_leftovers(str(app))) >= 3, _leftovers(str(app))
    stub.proc.send_signal(signal.SIGTERM)
    code, _, err = stub.finish()
    assert code == 143 and "terminated" in err, err
    assert not _leftovers(str(app)), _leftovers(str(app))


def test_history_memory_bound_thins_checkpoints(tmp_path, gdb_tool):
    """With a 1 MiB bound (less than one checkpoint's private memory) only the newest checkpoint
    stays: history then begins there, not at the first instruction."""
    app = make_app(tmp_path, "spin", SPIN.replace("1500000", "100000000"))
    sym = _symbols(app)
    stub = Stub(str(app), "--gdb-history", "1")
    text = stub.gdb(f"break *{sym['done']:#x}", "continue", "reverse-continue", "info registers rip rcx",
                    "delete", "continue")
    assert "No more reverse-execution history." in text, text
    rip, rcx = _regs(text, "rip", "rcx")[0]
    assert rip in range(sym["spin"], sym["mark"]) and 0 < rcx < 100000000, text  # inside the loop, not at _start
    code, out, err = stub.finish()
    assert code == 8 and "history memory over 1 MiB: it now begins at instruction" in err, err


# Echoes what the terminal gives it (reads return what has arrived), 1M instructions of spinning
# between reads, until end of input.
TTY_ECHO = """
section .text
_start:
again:
    lea rdi, [rip + buf]
    mov rsi, 64
    call HC_CONSOLE_READ
got:
    test rax, rax
    jz done
    mov rsi, rax
    lea rdi, [rip + buf]
    call HC_CONSOLE_WRITE
    mov rcx, 500000
spin:
    dec rcx
    jnz spin
    jmp again
done:
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .bss
buf: resb 64
"""


def test_terminal_input_after_going_back(tmp_path, gdb_tool):
    """On a terminal: input read before gdb went back is replayed, input typed afterwards reaches
    the new runner (its console reader thread is restarted after fork), output is shown once."""
    import pty
    import threading

    app = make_app(tmp_path, "ttyecho", TTY_ECHO)
    sym = _symbols(app)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "exo", "boot", str(app), "--gdb", "127.0.0.1:0", "--gdb-wait"],
                            cwd=ROOT, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        err = b""
        while b"listening" not in err or not err.endswith(b"\n"):
            err += os.read(proc.stderr.fileno(), 4096)
        port = int(re.search(rb"listening on 127\.0\.0\.1:(\d+)", err).group(1))
        os.write(master, b"ab\n")

        def later() -> None:
            time.sleep(3)
            os.write(master, b"cd\n")
            time.sleep(1)
            os.write(master, b"\x04")  # end of input (a terminal's ^D at the start of a line)

        typist = threading.Thread(target=later)
        cmd = ["gdb", "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}", "-ex", f"break *{sym['got']:#x}",
               "-ex", "continue", "-ex", "info registers rax", "-ex", "reverse-stepi", "-ex", "reverse-stepi",
               "-ex", "stepi", "-ex", "delete", "-ex", "continue"]
        typist.start()
        text = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL).stdout.decode()
        typist.join()
        out, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert re.search(r"rax\s+0x3\b", text), text  # "ab\n"
    assert "exited normally" in text, text
    assert (proc.returncode, out) == (0, b"ab\ncd\n"), (err + rest).decode()
    assert not _leftovers(str(app)), _leftovers(str(app))


def test_disk_flush_is_not_seen_by_a_re_executed_read(tmp_path, gdb_tool):
    """A writable disk image is one file for every checkpoint: going back to before a flush, a
    read sees the old sector; the flushed contents reach the image at the end all the same."""
    from test_disk import BUF, CHECK, SECTOR_SIZE, SECTORS, DiskOp, disk_io, fill, program, req, sector_bytes
    from test_disk import write_console as console

    image = tmp_path / "disk.img"
    image.write_bytes(b"".join(sector_bytes(i) for i in range(SECTORS)))
    body = (req(0, DiskOp.READ, 5, 1, BUF) + disk_io(1) + CHECK + "\nread1:" + console(BUF, 10)
            + fill(BUF, SECTOR_SIZE, 0x41) + req(0, DiskOp.WRITE, 5, 1, BUF) + req(1, DiskOp.FLUSH, 0, 0, 0)
            + disk_io(2) + CHECK + "\n    mov rcx, 1500000\nspin:\n    dec rcx\n    jnz spin"
            + req(0, DiskOp.READ, 5, 1, BUF + 0x1000) + disk_io(1) + CHECK + console(BUF + 0x1000, 10) + "\ndone:")
    app = make_app(tmp_path, "disk", program(body))
    sym = _symbols(app)
    stub = Stub(str(app), "--disk", str(image))
    text = stub.gdb(f"break *{sym['read1']:#x}", f"break *{sym['done']:#x}", "continue", "continue",
                    "reverse-continue", f"x/s {BUF:#x}", "delete", "continue")
    assert text.count(f"Breakpoint 1, {sym['read1']:#018x}") == 2, text
    assert f'{BUF:#x}:\t"sector 005\\n' in text, text  # re-executed, the read sees the sector as it was
    assert "exited normally" in text, text
    code, out, err = stub.finish()
    assert (code, out) == (0, "sector 005AAAAAAAAAA"), err
    assert image.read_bytes()[5 * SECTOR_SIZE:6 * SECTOR_SIZE] == b"A" * SECTOR_SIZE  # written at the end
    assert image.read_bytes()[6 * SECTOR_SIZE:7 * SECTOR_SIZE] == sector_bytes(6)


def test_a_write_after_going_back_makes_a_new_future(tmp_path, gdb_tool):
    """Changing memory where history was re-executed: what follows is new, so its output is shown
    (not muted as already seen), and the program runs with the change."""
    app = make_app(tmp_path, "spin", SPIN)
    sym = _symbols(app)
    stub = Stub(str(app))
    text = stub.gdb(f"break *{sym['after']:#x}", f"break *{sym['done']:#x}", "continue", "continue",
                    "reverse-continue", f"set {{char}}{sym['msg']:#x} = 'J'", "set $rbx = 3", "delete", "continue")
    assert text.count(f"Breakpoint 1, {sym['after']:#018x}") == 2, text
    assert "exited with code 03" in text, text
    code, out, err = stub.finish()
    assert (code, out) == (3, "hello\nhello\nJello\nJello\n"), err
    assert not _leftovers(str(app)), _leftovers(str(app))


def test_input_of_the_old_future_goes_to_the_new_one(tmp_path, gdb_tool):
    """After a write where history was re-executed, the input the old future had read (from a pipe,
    gone from it) is read again by the new future, in order."""
    app = make_app(tmp_path, "reader", READER)
    sym = _symbols(app)
    stub = Stub(str(app), stdin=b"abcdwxyz")
    text = stub.gdb(f"break *{sym['got']:#x}", "continue", "continue", "reverse-continue",
                    f"set {{char}}{sym['buf']:#x} = 'Q'", "delete", "continue")
    assert "exited normally" in text, text
    code, out, err = stub.finish()
    assert (code, out) == (0, "abcdQbcdwxyz"), err  # "abcd" shown before going back


def test_sigkill_to_the_supervisor_leaves_no_process(tmp_path):
    """The supervisor killed outright cannot clean up: the runner dies with it (parent-death
    signal), the parked checkpoints notice within a second."""
    app = make_app(tmp_path, "forever", "section .text\n_start:\n    inc rax\n    jmp _start\n")
    stub = Stub(str(app), wait=False)
    deadline = time.monotonic() + TIMEOUT
    while len(_leftovers(str(app))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_leftovers(str(app))) >= 3, _leftovers(str(app))
    stub.proc.kill()
    stub.proc.wait(timeout=TIMEOUT)
    deadline = time.monotonic() + 10
    while _leftovers(str(app)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(str(app)), _leftovers(str(app))


def test_attached_later_history_reaches_the_first_instruction(tmp_path, gdb_tool):
    app = make_app(tmp_path, "forever", "section .text\n_start:\n    inc rax\n    jmp _start\n")
    stub = Stub(str(app), wait=False)
    time.sleep(1)
    text = stub.gdb("info registers rax", "reverse-stepi", "reverse-stepi", "info registers rax",
                    "reverse-continue", "info registers rip rax", "kill")
    values = _regs(text, "rax")
    # two instructions back (a jmp, an inc): one less; then the very start of the run
    assert len(values) == 3 and values[0][0] > 100_000 and values[1][0] == values[0][0] - 1, text
    assert "No more reverse-execution history." in text and re.search(r"rip\s+0x400000\b", text), text
    assert re.search(r"rax\s+0x0\b", text), text
    code, _, err = stub.finish()
    assert code == 137, err


# Two writes to `counter`, a million and a half instructions apart (checkpoints between them).
WRITER = """
section .text
_start:
    mov rbx, 5
w1:
    mov qword ptr [rip + counter], 1
    mov rcx, 1500000
spin:
    dec rcx
    jnz spin
w2:
    mov qword ptr [rip + counter], 2
    mov rcx, 1500000
spin2:
    dec rcx
    jnz spin2
done:
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .data
counter: dq 0
"""


def test_reverse_continue_to_watchpoint_and_hardware_breakpoint_hits(tmp_path, gdb_tool):
    app = make_app(tmp_path, "writer", WRITER)
    sym = _symbols(app)
    stub = Stub(str(app))
    text = stub.gdb(f"break *{sym['done']:#x}", "continue", "delete",
                    f"watch *(long *){sym['counter']:#x}",
                    "reverse-continue", "info registers rip", f"print *(long *){sym['counter']:#x}",
                    "reverse-continue", "info registers rip", f"print *(long *){sym['counter']:#x}",
                    "delete", f"hbreak *{sym['w2']:#x}", "continue", "info registers rip",
                    "reverse-continue", "info registers rip", "delete", "continue")
    rips = [r[0] for r in _regs(text, "rip")]
    # Going back meets each write before it is made (the value is the older one), as rr stops.
    assert rips[:2] == [sym["w2"], sym["w1"]], text
    assert re.findall(r"^\$\d+ = (\d+)", text, re.M)[:2] == ["1", "0"], text
    # The hardware breakpoint: forward to it (from w1), forward again, then back to it.
    assert rips[2] == sym["w2"] and "exited normally" in text, text
    code, out, err = stub.finish()
    assert code == 0 and "Traceback" not in err, err
    assert not _leftovers(str(app)), _leftovers(str(app))
