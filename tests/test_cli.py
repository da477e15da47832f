"""Bad input to the command line: one line naming the file and the problem, exit 2."""

from __future__ import annotations

import pytest
from conftest import make_app
from test_echo import run_exo


def _one_line_error(r) -> str:
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("exo: error: ")
    return lines[0]


def test_missing_app(tmp_path):
    line = _one_line_error(run_exo("boot", str(tmp_path / "nope")))
    assert "nope" in line and "no such guest app" in line


def test_directory_without_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_line_error(run_exo("boot", str(tmp_path / "empty")))
    assert "app.toml" in line


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ('name = "x"\nsources = [', "not valid TOML"),
        ('name = "x"\n', "missing required key 'sources'"),
        ('name = "x"\nsources = ["missing.s"]\n', "source 'missing.s' not found"),
        ('name = "x"\nsorces = ["main.s"]\n', "unknown key 'sorces'"),
        ('name = 5\nsources = ["main.s"]\n', "'name' must be a str"),
        ('name = "x"\nsources = []\n', "non-empty list"),
    ],
)
def test_bad_manifest(tmp_path, manifest, problem):
    d = tmp_path / "app"
    d.mkdir()
    (d / "main.s").write_text("_start: nop\n")
    (d / "app.toml").write_text(manifest)
    line = _one_line_error(run_exo("boot", str(d)))
    assert "app.toml" in line and problem in line


@pytest.mark.parametrize(
    "source, lineno, problem",
    [
        ("_start:\n    nop\n    mvo rax, 1\n    nop\n", 3, "invalid mnemonic"),
        ("_start:\n    nop\n    mov rax, nowhere\n", 3, "undefined symbol 'nowhere'"),
        ("_start:\n    nop\n_start:\n    nop\n", 3, "defined more than once"),
        ("section .data\nx: dq 1\nmov rax, 1\nsection .text\n_start: nop\n", 3, "not a data directive"),
        ("section .weird\n_start: nop\n", 1, "unknown section"),
        ("_start:\n    nop\n    mov qword [rax], 1\n    jmp _start\n", 3, "cannot encode"),
    ],
)
def test_assembly_error_names_file_and_line(tmp_path, source, lineno, problem):
    d = make_app(tmp_path, "bad", source)
    line = _one_line_error(run_exo("boot", str(d), cache=str(tmp_path / "c")))
    assert f"main.s:{lineno}:" in line, line
    assert problem in line


def test_missing_entry_label(tmp_path):
    d = make_app(tmp_path, "noentry", "start:\n    nop\n")
    line = _one_line_error(run_exo("boot", str(d), cache=str(tmp_path / "c")))
    assert "entry label '_start'" in line


def test_bad_elf(tmp_path):
    d = tmp_path / "elfapp"
    d.mkdir()
    (d / "prog").write_bytes(b"\x7fELF" + b"\x01" * 60)
    (d / "app.toml").write_text('name = "elfapp"\nsources = ["prog"]\n')
    line = _one_line_error(run_exo("boot", str(d)))
    assert "prog" in line and "64-bit" in line


def test_bad_option_values(tmp_path):
    d = make_app(tmp_path, "ok", "_start: nop\n")
    line = _one_line_error(run_exo("boot", "--slice", "0", str(d)))
    assert "--slice" in line


def test_faulting_guest_exits_1_with_report(tmp_path):
    d = make_app(tmp_path, "crash", "_start:\n    xor eax, eax\n    mov qword ptr [rax], 1\n")
    r = run_exo("boot", str(d), cache=str(tmp_path / "c"))
    assert r.returncode == 1
    assert r.stdout == b""
    err = r.stderr.decode()
    assert "page fault (#PF)" in err and "user write of a not-present page" in err
    assert "mov qword ptr [rax], 1" in err and "rip" in err


def test_guest_exit_status_is_the_exit_code(tmp_path):
    d = make_app(tmp_path, "seven", "_start:\n    mov rdi, SCHED_EXIT\n    mov rsi, 7\n    call HC_SCHED_OP\n")
    r = run_exo("boot", str(d), cache=str(tmp_path / "c"))
    assert r.returncode == 7 and r.stderr == b""


@pytest.mark.parametrize(("status", "code", "note"), [("256", 0, True), ("-1", 255, False), ("0x1ff", 255, False)])
def test_exit_status_is_its_low_8_bits_and_a_hidden_failure_is_named(tmp_path, status, code, note):
    # Regression (issue 11): sched_op(EXIT, 256) made `exo boot` exit 0 without a word. The rule
    # is POSIX's (status & 0xff, docs/guests.md); a nonzero status that reads as 0 is named.
    import json

    d = make_app(tmp_path, "st", f"_start:\n    mov rdi, SCHED_EXIT\n    mov rsi, {status}\n    call HC_SCHED_OP\n")
    out = tmp_path / "s.json"
    r = run_exo("boot", "--stats-json", str(out), str(d), cache=str(tmp_path / "c"))
    assert r.returncode == code
    whole = int(status, 0)
    assert json.loads(out.read_text())["envs"][0]["exit"] == whole  # kept whole
    err = r.stderr.decode()
    if note:
        assert err == f"exo: environment 1 (st) exited with status {whole}; the process exit status is its low 8 bits: 0\n"
    else:
        assert err == ""


def test_guest_arguments_after_double_dash(tmp_path):
    # Print argv[1] (argc in rdi, argv in rsi at entry).
    src = """
    _start:
        mov rbx, [rsi + 8]
        mov rdi, rbx
        xor ecx, ecx
    count:
        cmp byte ptr [rbx + rcx], 0
        je counted
        inc rcx
        jmp count
    counted:
        mov rsi, rcx
        call HC_CONSOLE_WRITE
        mov rdi, SCHED_EXIT
        xor esi, esi
        call HC_SCHED_OP
    """
    d = make_app(tmp_path, "args", src)
    r = run_exo("boot", str(d), "--", "/etc/motd", cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"/etc/motd"
    # Bytes that are not UTF-8 reach the guest as they are (a traceback before: exo issue 16).
    r = run_exo("boot", str(d), "--", b"caf\xe9\xff", cache=str(tmp_path / "c"))
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    assert r.stdout == b"caf\xe9\xff"


def test_a_manifest_is_parsed_by_content_so_an_edit_is_seen_and_bad_toml_still_fails(tmp_path, monkeypatch):
    from exo.build.manifest import load_manifest
    from exo.errors import ExoUserError

    monkeypatch.setenv("EXO_CACHE_DIR", str(tmp_path / "cache"))
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.s").write_text("section .text\n_start:\n    ret\n")
    (app / "app.toml").write_text('name = "one"\nsources = ["main.s"]\n')
    assert load_manifest(app).name == "one"
    assert len(list((tmp_path / "cache" / "toml").iterdir())) == 1  # remembered
    assert load_manifest(app).name == "one"  # from the cache
    (app / "app.toml").write_text('name = "two"\nsources = ["main.s"]\n')
    assert load_manifest(app).name == "two"
    (app / "app.toml").write_text('name = "two"\nsources = [\n')
    with pytest.raises(ExoUserError, match="not valid TOML"):
        load_manifest(app)


def test_per_app_arguments_in_a_multi_app_boot(tmp_path):
    """--args APP=ARGS gives one app its own arguments (split as a shell would); the arguments
    after -- go to the apps without --args. A client/server pair needs no hand-written manifests."""
    r = run_exo("boot", "guest_apps/udp_echo", "guest_apps/nettest", "--net", "switch",
                "--args", "nettest=udp 10.0.2.15 7 5", "--", "5", cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    assert b"udp: 5 datagrams echoed intact" in r.stdout
    for bad, words in ((["--args", "nope=1"], b"--args: no booted app is named 'nope' (booted: udp_echo)"),
                       (["--args", "udp_echo"], b"--args: 'udp_echo' is not APP=ARGS"),
                       (["--args", "udp_echo='1"], b"--args: udp_echo: No closing quotation"),
                       (["--args", "udp_echo=1", "--args", "udp_echo=2"], b"'udp_echo' is given twice")):
        r = run_exo("boot", "guest_apps/udp_echo", *bad, cache=str(tmp_path / "c"))
        assert r.returncode == 2 and words in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
