"""Linking libOS modules: library calls, least privilege, clear errors for what is not linked."""

from __future__ import annotations

import json

import pytest
from conftest import boot, make_app
from test_echo import run_exo

from exo.abi import Errno

PRINTF = """
section .text
_start:
    lea rdi, [rip + fmt]
    mov rsi, 42
    lea rdx, [rip + who]
    call LIB_CONSOLE_PRINTF
    mov rdi, 3
    call LIB_CORE_EXIT
section .rodata
fmt: db "n=%d who=%s", 10, 0
who: db "exo", 0
"""


def test_library_call_is_not_a_ring_transition(app):
    b = boot(app("p", PRINTF, libos={"console": "buffered"}))
    assert b.stdout == b"n=42 who=exo\n"
    env = b.envs[0]
    assert env.exit_status == 3
    t = b.kernel.acct.transitions
    assert t["libcall"] == 2  # printf, exit
    # printf staged its output in a page it maps itself, then one console_write; exit one sched_op
    assert b.kernel.acct.hypercalls == {"page_alloc": 1, "console_write": 1, "sched_op": 1}
    assert t["hypercall"] == 3 and t["trap"] == 0 and t["upcall"] == 0


def test_buffered_and_direct_console_differ_only_in_hypercalls(app):
    src = """
section .text
_start:
    mov r12, 5
again:
    mov rdi, 0x41
    call LIB_CONSOLE_PUTC
    dec r12
    jnz again
    mov rdi, 0xa
    call LIB_CONSOLE_PUTC
    xor edi, edi
    call LIB_CORE_EXIT
"""
    buffered = boot(app("b", src, libos={"console": "buffered"}))
    direct = boot(app("d", src, libos={"console": "direct"}))
    assert buffered.stdout == direct.stdout == b"AAAAA\n"
    assert buffered.kernel.acct.hypercalls["console_write"] == 1
    assert direct.kernel.acct.hypercalls["console_write"] == 6


def test_undeclared_hypercall_is_refused(app):
    # console declares console_read/console_write/page_alloc; env_create is not among them.
    src = """
section .text
_start:
    call HC_ENV_CREATE
    mov rdi, SCHED_EXIT
    mov rsi, rax
    neg rsi
    call HC_SCHED_OP
"""
    b = boot(app("greedy", src, libos={"console": "buffered"}))
    assert b.envs[0].exit_status == Errno.EPERM
    assert len(b.kernel.envs) == 1  # no child was made


def test_app_without_libos_is_unrestricted(app):
    src = """
section .text
_start:
    call HC_ENV_CREATE
    test rax, rax
    jz child
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
child:
    jmp child
"""
    b = boot(app("bare", src))
    assert b.envs[0].exit_status == 0 and len(b.kernel.envs) == 2


def test_calling_an_unlinked_module_fails_at_load(tmp_path):
    d = make_app(tmp_path, "nolink", PRINTF)  # no [libos] table at all
    r = run_exo("boot", str(d), cache=str(tmp_path / "c"))
    assert r.returncode == 2
    err = r.stderr.decode().strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "main.s:7:" in err
    assert "does not link the console module" in err and "[libos] console" in err


@pytest.mark.parametrize(
    "table, problem",
    [({"consol": "buffered"}, "unknown libOS module 'consol'"),
     ({"console": "fancy"}, "module 'console' has no implementation 'fancy' (choose: buffered, direct)")],
)
def test_bad_libos_table(tmp_path, table, problem):
    d = make_app(tmp_path, "bad", PRINTF, libos=table)
    r = run_exo("boot", str(d), cache=str(tmp_path / "c"))
    assert r.returncode == 2
    assert problem in r.stderr.decode() and "app.toml" in r.stderr.decode()


def test_image_report(tmp_path):
    d = make_app(tmp_path, "p", PRINTF, libos={"console": "direct"})
    r = run_exo("image", "--json", str(d), cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    rep = json.loads(r.stdout)
    assert rep["libos"] == {"core": "default", "console": "direct"}
    assert rep["library_calls"] == ["console_printf", "core_exit"]
    assert rep["hypercalls_called"] == []
    assert "console_write" in rep["hypercalls_allowed"] and "env_create" not in rep["hypercalls_allowed"]
    assert rep["size"] == sum(s["size"] for s in rep["segments"])
    # the minimum set of an instance: the read-only pages once for all, the rest each (exo/images.py)
    inst = rep["instances"]
    ro = sum((s["va"] + s["size"] + 4095) // 4096 - s["va"] // 4096 for s in rep["segments"] if "w" not in s["perm"])
    assert inst["shared_frames"] == ro and inst["shared_bytes"] == ro * 4096
    assert inst["own_frames_by_kind"]["stack"] == 16 and inst["own_frames_by_kind"]["info"] == 1
    assert inst["own_bytes"] == 4096 * sum(inst["own_frames_by_kind"].values())


def test_image_report_warns_about_denied_calls(tmp_path):
    src = "_start:\n    call HC_ENV_CREATE\n    xor edi, edi\n    call LIB_CORE_EXIT\n"
    d = make_app(tmp_path, "g", src, libos={"console": "buffered"})
    r = run_exo("image", str(d), cache=str(tmp_path / "c"))
    assert r.returncode == 0
    assert "warning: called but not allowed (will get -EPERM): env_create" in r.stdout.decode()


def test_bad_pointer_to_a_library_call_is_an_errno_not_a_crash(app):
    src = """
section .text
_start:
    mov rdi, 0xffff800000000000
    call LIB_CONSOLE_PUTS
    mov rdi, rax
    neg rdi
    call LIB_CORE_EXIT
"""
    b = boot(app("badptr", src, libos={"console": "buffered"}))
    assert b.envs[0].exit_status == Errno.EFAULT and not b.reports


def test_stray_jump_into_a_trampoline_page_is_reported(app):
    src = "_start:\n    mov rax, LIB_CONSOLE_PRINTF + 4\n    call rax\n"
    b = boot(app("stray", src, libos={"console": "buffered"}))
    assert b.reports and b.reports[0].kind == "breakpoint (#BP)"


def test_echo_links_console_and_is_still_exact(tmp_path):
    from conftest import ROOT

    data = bytes(range(256)) * 16
    r = run_exo("boot", str(ROOT / "guest_apps" / "echo"), "--stats-json", str(tmp_path / "s.json"), stdin=data,
                cache=str(tmp_path / "c"))
    assert r.returncode == 0 and r.stdout == data
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["transitions"]["libcall"] == 0  # echo uses the hypercalls console declares


def test_a_library_bug_stops_only_its_environment(app, monkeypatch):
    from conftest import WITNESS

    from libos.console import Console

    def broken(self, fmt, a1, a2, a3, a4, a5):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(Console, "printf", broken)
    b = boot(app("p", PRINTF, libos={"console": "buffered"}), app("w", WITNESS))
    assert b.stdout == b"ok\n"
    (report,) = b.reports
    assert report.kind == "libOS error in console.printf"
    assert "ZeroDivisionError: division by zero" in report.render()
    assert b.env("w").exit_status == 0


@pytest.mark.parametrize("app_name", ["primes", "cowtest", "spin", "threads"])
def test_apps_print_the_same_under_every_structure(tmp_path, app_name):
    from conftest import ROOT

    outs = set()
    for structure in ("exokernel", "monolithic", "xen-pv", "microkernel"):
        r = run_exo("boot", str(ROOT / "guest_apps" / app_name), "--structure", structure, cache=str(tmp_path))
        assert r.returncode == 0, (structure, r.stderr.decode()[-400:])
        outs.add(r.stdout if app_name != "threads" or structure != "xen-pv" else b"")
    outs.discard(b"")
    assert len(outs) == 1


def _clashing_module(index: int):
    from libos.module import LibModule

    class Clash(LibModule):
        NAME = "clash"
        IMPL = "fake"
        INDEX = index
        ENTRIES = ("hello",)

        def hello(self) -> int:
            return 0

    return Clash


def test_two_modules_with_one_trampoline_index_are_a_build_error(tmp_path, monkeypatch, capsys):
    # Regression (issue 11): two modules on one trampoline page linked silently, and the app's
    # threads ended with status 1 and nothing printed. Now resolving the app names both.
    from exo.cli import main
    from libos import registry
    from libos.link import LinkError, resolve

    monkeypatch.setitem(registry.MODULES, "clash", {"fake": _clashing_module(3)})  # sched's page
    with pytest.raises(LinkError, match=r"sched = \"rr\" .* and clash = \"fake\" .* both have trampoline INDEX 3"):
        resolve({"sched": "rr", "clash": "fake"})
    assert resolve({"clash": "fake"})[-1].NAME == "clash"  # alone it is fine
    d = make_app(tmp_path, "clashing", PRINTF, libos={"console": "buffered", "sched": "rr", "clash": "fake"})
    assert main(["boot", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "app.toml" in err and "sched" in err and "clash" in err and "INDEX 3" in err


def test_a_module_index_outside_the_trampoline_pages_is_a_build_error(monkeypatch) -> None:
    from libos import registry
    from libos.link import LinkError, resolve

    monkeypatch.setitem(registry.MODULES, "clash", {"fake": _clashing_module(15)})
    with pytest.raises(LinkError, match="INDEX 15, outside 0..14"):
        resolve({"clash": "fake"})


def test_a_library_bug_is_reported_with_the_module_file_and_line(app, monkeypatch):
    # Regression (issue 11): the report gave the exception's message twice and no location.
    import inspect

    from conftest import WITNESS

    import libos.console

    def broken_format(fmt, args, read):
        raise KeyError("no such conversion")

    monkeypatch.setattr(libos.console, "format_printf", broken_format)
    b = boot(app("p", PRINTF, libos={"console": "buffered"}), app("w", WITNESS))
    assert b.stdout == b"ok\n" and b.env("w").exit_status == 0
    (report,) = b.reports
    lines, first = inspect.getsourcelines(libos.console.Console.printf)
    call_line = first + next(i for i, line in enumerate(lines) if "format_printf(" in line)
    raise_line = inspect.getsourcelines(broken_format)[1] + 1
    here = "tests/libos/test_linking.py"
    assert report.error == (f"KeyError: 'no such conversion', raised at {here}:{raise_line} in broken_format, "
                            f"called from libos/console.py:{call_line} in printf")
    text = report.render()
    assert text.count("no such conversion") == 1, text
    assert "libos/console.py" in b.env("p").fault  # the one-line summary (--stats-json) has it too


def test_entry_argument_counts_read_from_code_objects_match_inspect_signature():
    # libos/module.py entry_nargs reads co_argcount (start-up); it must say what inspect.signature says
    # for every entry of every in-tree implementation, and for the cases it hands to inspect.
    import functools
    import inspect

    from libos import registry
    from libos.module import entry_nargs

    checked = 0
    for module, impls in registry.MODULES.items():
        for impl in list(impls):
            cls = registry.load(module, impl)
            inst = object.__new__(cls)
            for name in cls.ENTRIES:
                fn = getattr(inst, name)
                assert entry_nargs(fn) == len(inspect.signature(fn).parameters), f"{module}.{impl}.{name}"
                checked += 1
    assert checked > 50

    class M:
        def a(self, x, y=1, *rest, k, **kw): ...

        @functools.wraps(a)
        def b(self, *args): ...

    m = M()
    assert [entry_nargs(m.a), entry_nargs(m.b), entry_nargs(lambda: 0)] == [5, 5, 0]
