"""Disk multiplexing (exo/disk.py): grants, batched disk_io, disk_info, disk_grant, `--disk`.

Guests keep their requests at REQS and their sector buffers from BUF on, pages
they allocate first; ``req()`` emits the code that fills in one 32-byte request.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from conftest import WITNESS, Booted
from test_echo import run_exo

from exo.abi import DISK_REQ_SIZE, SECTOR_SIZE, DiskGrant, DiskOp, EnvStatus, Errno

SECTORS = 64
REQS = 0x600000
BUF = 0x601000  # 4 pages of buffers: 32 sectors
INFO = 0x605000
PAGES = (REQS, BUF, BUF + 0x1000, BUF + 0x2000, BUF + 0x3000, INFO)


def sector_bytes(i: int) -> bytes:
    head = f"sector {i:03d}\n".encode()
    return head + b"." * (SECTOR_SIZE - len(head))


@pytest.fixture
def image(tmp_path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(b"".join(sector_bytes(i) for i in range(SECTORS)))
    return p


def on_image(path: Path, sector: int, count: int = 1) -> bytes:
    return path.read_bytes()[sector * SECTOR_SIZE : (sector + count) * SECTOR_SIZE]


def boot_disk(*apps: Path, disk=None, grants=None, max_instructions: int = 50_000_000) -> Booted:
    """conftest.boot with a disk: ``grants`` (first, count, writable) per app, default the whole disk."""
    from exo.api import build
    from exo.disk import grant
    from exo.kernel import DEFAULT_SLICE, Exokernel
    from exo.loader import spawn
    from hw import Machine
    from libos.link import link, relink_siblings

    out = io.BytesIO()
    machine = Machine(32 << 20, clock="virtual", stdin=b"", stdout=out, slice_seconds=0.005, disk=disk)
    kernel = Exokernel(machine, slice_instructions=DEFAULT_SLICE, on_fault=lambda r: None)
    kernel.env_create_hooks.append(lambda parent, child: relink_siblings(child.modules))
    envs = []
    for a in apps:
        m, image, classes = build(a)
        env = spawn(kernel, image, m.args, quota=m.quota)
        if classes:
            link(kernel.libs, env, classes)
        if disk is not None:
            if grants is None:
                grant(env, disk)
            else:
                for first, count, writable in grants:
                    grant(env, disk, first, count, writable)
        envs.append(env)
    try:
        kernel.run(max_instructions=max_instructions)
    finally:
        machine.close()  # as `exo boot` does: no implicit flush
    return Booted(out.getvalue(), kernel, envs)


def disk_of(path: Path, **kw):
    from hw.blockdev import BlockDevice

    return BlockDevice(path, **kw)


# ------------------------------------------------------------- guest code
def alloc(*vas: int) -> str:
    out = []
    for va in vas:
        out.append(f"""
    xor edi, edi
    mov rsi, {va:#x}
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz failed""")
    return "\n".join(out)


def req(i: int, op: int, sector: int, n: int, buf: int, reserved: int = 0) -> str:
    o = i * DISK_REQ_SIZE
    return f"""
    mov rbx, {REQS:#x}
    mov dword ptr [rbx + {o:#x}], {op:#x}
    mov dword ptr [rbx + {o + 4:#x}], {reserved:#x}
    mov rax, {sector:#x}
    mov qword ptr [rbx + {o + 8:#x}], rax
    mov rax, {n:#x}
    mov qword ptr [rbx + {o + 16:#x}], rax
    mov rax, {buf:#x}
    mov qword ptr [rbx + {o + 24:#x}], rax"""


def disk_io(count: int, done: int = 0) -> str:
    return f"""
    mov rdi, {REQS:#x}
    mov rsi, {count:#x}
    mov rdx, {done:#x}
    call HC_DISK_IO"""


def fill(va: int, length: int, byte: int) -> str:
    return f"""
    mov rdi, {va:#x}
    mov rcx, {length:#x}
    mov al, {byte:#x}
    rep stosb"""


def write_console(va: int, n: int) -> str:
    return f"""
    mov rdi, {va:#x}
    mov rsi, {n:#x}
    call HC_CONSOLE_WRITE"""


EXIT_0 = """
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP"""

EXIT_NEG_RAX = """
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP"""


def program(body: str) -> str:
    """``body`` runs after the pages are allocated; a nonzero RAX at `failed` exits with -RAX."""
    return f"""
section .text
_start:
{alloc(*PAGES)}
{body}
{EXIT_0}
failed:
{EXIT_NEG_RAX}
"""


CHECK = """
    test rax, rax
    jnz failed"""


def exited(env, status: int = 0) -> None:
    assert env.fault is None, env.fault
    assert env.status == EnvStatus.DEAD
    assert env.exit_status == status, f"exit {env.exit_status}, expected {status}"


# ------------------------------------------------------------------- tests
def test_read_a_sector_and_print_it(app, image) -> None:
    body = req(0, DiskOp.READ, 5, 1, BUF) + disk_io(1) + CHECK + write_console(BUF, 11)
    b = boot_disk(app("reader", program(body)), disk=disk_of(image))
    exited(b.envs[0])
    assert b.stdout == b"sector 005\n"


def test_write_then_flush_reaches_the_image(app, image) -> None:
    body = (fill(BUF, 2 * SECTOR_SIZE, 0x57) + req(0, DiskOp.WRITE, 7, 2, BUF) + req(1, DiskOp.FLUSH, 0, 0, 0)
            + disk_io(2) + CHECK)
    disk = disk_of(image)
    b = boot_disk(app("writer", program(body)), disk=disk)
    exited(b.envs[0])
    assert on_image(image, 6, 4) == sector_bytes(6) + b"W" * (2 * SECTOR_SIZE) + sector_bytes(9)
    assert (disk.writes, disk.flushes, disk.sectors_flushed) == (1, 1, 2)


def test_write_without_flush_is_lost_at_exit(app, image) -> None:
    """Durability is explicit: `exo boot` never flushes for the guest."""
    body = fill(BUF, SECTOR_SIZE, 0x57) + req(0, DiskOp.WRITE, 7, 1, BUF) + req(1, DiskOp.READ, 7, 1, BUF + 0x200)
    body += disk_io(2) + CHECK + write_console(BUF + 0x200, 4)
    before = image.read_bytes()
    b = boot_disk(app("forgetful", program(body)), disk=disk_of(image))
    exited(b.envs[0])
    assert b.stdout == b"WWWW"  # the guest read its own write from the cache
    assert image.read_bytes() == before


def test_a_batch_costs_one_hypercall(app, image) -> None:
    body = "".join(req(i, DiskOp.READ, 10 + i, 1, BUF + i * SECTOR_SIZE) for i in range(4))
    body += req(4, DiskOp.READ, 20, 8, BUF + 0x1000)
    body += disk_io(5, done=REQS + 0x800) + CHECK
    body += "".join(write_console(BUF + i * SECTOR_SIZE, 11) for i in range(4))
    body += write_console(BUF + 0x1000 + 7 * SECTOR_SIZE, 11)
    body += f"""
    mov rbx, {REQS + 0x800:#x}
    mov rsi, qword ptr [rbx]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP"""
    disk = disk_of(image)
    b = boot_disk(app("batch", program(body)), disk=disk)
    exited(b.envs[0], 5)  # the number applied
    assert b.stdout == b"".join(f"sector {i:03d}\n".encode() for i in (10, 11, 12, 13, 27))
    assert b.kernel.acct.hypercalls["disk_io"] == 1
    assert disk.reads == 5 and disk.sectors_read == 12


def test_disk_info(app, image) -> None:
    body = f"""
    mov rdi, {INFO:#x}
    call HC_DISK_INFO
{CHECK}
{write_console(INFO, 32)}"""
    b = boot_disk(app("info", program(body)), disk=disk_of(image), grants=[(0, 8, True), (16, 4, False)])
    exited(b.envs[0])
    assert struct.unpack("<QQQQ", b.stdout) == (SECTORS, 512, 0, 2)


def test_disk_info_on_a_readonly_disk(app, image) -> None:
    body = f"""
    mov rdi, {INFO:#x}
    call HC_DISK_INFO
{CHECK}
{write_console(INFO, 32)}"""
    b = boot_disk(app("info", program(body)), disk=disk_of(image, readonly=True))
    assert struct.unpack("<QQQQ", b.stdout) == (SECTORS, 512, 1, 1)


@pytest.mark.parametrize("call", ["HC_DISK_INFO", "HC_DISK_IO", "HC_DISK_GRANT"])
def test_no_disk_is_enodev(app, call) -> None:
    body = f"""
    mov rdi, {INFO:#x}
    xor esi, esi
    xor edx, edx
    xor r10d, r10d
    call {call}
{CHECK}"""
    b = boot_disk(app("nodisk", program(body)))
    exited(b.envs[0], Errno.ENODEV)


@pytest.mark.parametrize(
    "sector, n",
    [pytest.param(8, 1, id="after"), pytest.param(6, 4, id="straddling-the-end"),
     pytest.param(2, 4, id="across-two-grants"), pytest.param(40, 1, id="far")],
)
def test_outside_the_grants_is_eperm(app, image, sector, n) -> None:
    body = req(0, DiskOp.READ, sector, n, BUF) + disk_io(1) + CHECK
    b = boot_disk(app("snoop", program(body)), disk=disk_of(image), grants=[(0, 4, True), (4, 4, True)])
    exited(b.envs[0], Errno.EPERM)


def test_write_with_a_readonly_grant_is_eperm(app, image) -> None:
    body = req(0, DiskOp.READ, 2, 1, BUF) + disk_io(1) + CHECK  # reading is fine
    body += req(0, DiskOp.WRITE, 2, 1, BUF) + disk_io(1) + CHECK
    disk = disk_of(image)
    b = boot_disk(app("rogrant", program(body)), disk=disk, grants=[(0, 8, False)])
    exited(b.envs[0], Errno.EPERM)
    assert disk.writes == 0


def test_write_to_a_readonly_disk_is_erofs(app, image) -> None:
    body = req(0, DiskOp.READ, 2, 1, BUF) + disk_io(1) + CHECK
    body += req(0, DiskOp.WRITE, 2, 1, BUF) + disk_io(1) + CHECK
    disk = disk_of(image, readonly=True)
    b = boot_disk(app("rodisk", program(body)), disk=disk)
    exited(b.envs[0], Errno.EROFS)
    assert disk.writes == 0 and disk.reads == 1


def test_unmapped_buffer_is_efault_and_nothing_is_written(app, image) -> None:
    body = req(0, DiskOp.WRITE, 3, 1, 0x700000) + req(1, DiskOp.FLUSH, 0, 0, 0) + disk_io(2) + CHECK
    before = image.read_bytes()
    disk = disk_of(image)
    b = boot_disk(app("badbuf", program(body)), disk=disk)
    exited(b.envs[0], Errno.EFAULT)
    assert disk.writes == 0 and disk.flushes == 0
    assert image.read_bytes() == before


def test_buffer_running_off_its_page_is_efault(app, image) -> None:
    body = req(0, DiskOp.WRITE, 3, 2, INFO + 0xE00) + disk_io(1) + CHECK  # 1 KiB from 512 bytes before the end
    disk = disk_of(image)
    b = boot_disk(app("offpage", program(body)), disk=disk)
    exited(b.envs[0], Errno.EFAULT)
    assert disk.writes == 0


def test_read_into_a_readonly_page_is_efault(app, image) -> None:
    src = program(req(0, DiskOp.READ, 3, 1, 0) + "\n    lea rax, [rip + _start]\n    mov qword ptr [rbx + 0x18], rax"
                  + disk_io(1) + CHECK)
    disk = disk_of(image)
    b = boot_disk(app("rotext", src), disk=disk)
    exited(b.envs[0], Errno.EFAULT)


@pytest.mark.parametrize(
    "request_, errno",
    [
        pytest.param((DiskOp.READ, 0, 257, BUF, 0), Errno.EINVAL, id="too-many-sectors"),
        pytest.param((DiskOp.READ, 0, 0, BUF, 0), Errno.EINVAL, id="zero-sectors"),
        pytest.param((DiskOp.READ, SECTORS - 1, 2, BUF, 0), Errno.EINVAL, id="past-the-disk"),
        pytest.param((7, 0, 1, BUF, 0), Errno.EINVAL, id="bad-op"),
        pytest.param((DiskOp.READ, 0, 1, BUF, 1), Errno.EINVAL, id="reserved-not-zero"),
    ],
)
def test_bad_requests(app, image, request_, errno) -> None:
    op, sector, n, buf, reserved = request_
    body = req(0, op, sector, n, buf, reserved) + disk_io(1) + CHECK
    b = boot_disk(app("bad", program(body)), disk=disk_of(image))
    exited(b.envs[0], errno)


def test_too_many_requests_is_einval(app, image) -> None:
    body = f"""
    mov rdi, {REQS:#x}
    mov rsi, 0x1001
    xor edx, edx
    call HC_DISK_IO
{CHECK}"""
    b = boot_disk(app("huge", program(body)), disk=disk_of(image))
    exited(b.envs[0], Errno.EINVAL)


def test_batch_stops_at_the_first_bad_request_and_reports_done(app, image) -> None:
    body = (fill(BUF, SECTOR_SIZE, 0x41) + req(0, DiskOp.WRITE, 1, 1, BUF) + req(1, DiskOp.WRITE, 50, 1, BUF)
            + req(2, DiskOp.WRITE, 2, 1, BUF) + req(3, DiskOp.FLUSH, 0, 0, 0))
    body += disk_io(4, done=INFO) + f"""
    cmp rax, -EPERM
    jne failed
    mov rbx, {INFO:#x}
    mov rsi, qword ptr [rbx]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP"""
    disk = disk_of(image)
    b = boot_disk(app("partial", program(body)), disk=disk, grants=[(0, 8, True)])
    exited(b.envs[0], 1)
    assert disk.writes == 1 and disk.flushes == 0 and disk.dirty_sectors == 0  # closed unflushed


def test_bad_done_pointer_applies_nothing(app, image) -> None:
    body = fill(BUF, SECTOR_SIZE, 0x41) + req(0, DiskOp.WRITE, 1, 1, BUF) + disk_io(1, done=0x700000) + CHECK
    disk = disk_of(image)
    b = boot_disk(app("baddone", program(body)), disk=disk)
    exited(b.envs[0], Errno.EFAULT)
    assert disk.writes == 0


def test_fault_injection_drops_writes_after_the_nth(app, image) -> None:
    body = fill(BUF, SECTOR_SIZE, 0x41)
    body += "".join(req(i, DiskOp.WRITE, 1 + i, 1, BUF) for i in range(3)) + req(3, DiskOp.FLUSH, 0, 0, 0)
    body += disk_io(4) + CHECK  # dropped writes are not errors: the guest cannot tell
    disk = disk_of(image, fail_after=2)
    b = boot_disk(app("powerloss", program(body)), disk=disk)
    exited(b.envs[0])
    assert disk.crashed
    assert on_image(image, 1, 3) == b"A" * (2 * SECTOR_SIZE) + sector_bytes(3)


# -------------------------------------------------------------- grants to children
PARENT_MAKES_CHILD = """
    mov eax, NR_ENV_CREATE
    syscall                         ; the child resumes right here, RAX = 0, with no stack
    test rax, rax
    jz child
    js failed
    mov r12, rax
    xor edi, edi                    ; share the text page
    lea rsi, [rip + _start]
    mov rdx, r12
    lea r10, [rip + _start]
    mov r8, PERM_R | PERM_X
    call HC_PAGE_MAP
{check}
    mov rdi, r12                    ; a page for the child's requests and buffer
    mov rsi, {reqs:#x}
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
{check}
"""

START_CHILD = """
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
{check}
    mov rdi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
"""


def disk_grant(envid_reg: str, sector: int, n: int, mode: int) -> str:
    return f"""
    mov rdi, {envid_reg}
    mov rsi, {sector:#x}
    mov rdx, {n:#x}
    mov r10, {mode:#x}
    call HC_DISK_GRANT"""


def child_io(op: int, sector: int) -> str:
    """The child has no stack: direct `syscall`s; request at REQS, buffer at REQS + 0x200."""
    return f"""
    mov rbx, {REQS:#x}
    mov dword ptr [rbx], {op:#x}
    mov dword ptr [rbx + 0x4], 0x0
    mov qword ptr [rbx + 0x8], {sector:#x}
    mov qword ptr [rbx + 0x10], 0x1
    mov rax, {REQS + 0x200:#x}
    mov qword ptr [rbx + 0x18], rax
    mov rdi, rbx
    mov rsi, 0x1
    xor edx, edx
    mov eax, NR_DISK_IO
    syscall"""


CHILD_EXIT_NEG_RAX = """
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    mov eax, NR_SCHED_OP
    syscall"""


def test_child_granted_a_subrange_reads_inside_and_not_outside(app, image) -> None:
    src = f"""
section .text
_start:
{PARENT_MAKES_CHILD.format(check=CHECK, reqs=REQS)}
{disk_grant("r12", 0, SECTORS, DiskGrant.REVOKE)}
{CHECK}
{disk_grant("r12", 10, 2, DiskGrant.READ)}
{CHECK}
{disk_grant("r12", 20, 1, DiskGrant.READ)}
{CHECK}
{START_CHILD.format(check=CHECK)}
{EXIT_0}
failed:
{EXIT_NEG_RAX}
child:
{child_io(DiskOp.READ, 11)}
    test rax, rax
    jnz child_failed
    mov rdi, {REQS + 0x200:#x}
    mov rsi, 0xb
    mov eax, NR_CONSOLE_WRITE
    syscall
{child_io(DiskOp.READ, 12)}
    cmp rax, -EPERM
    jne child_failed
{child_io(DiskOp.WRITE, 10)}
    cmp rax, -EPERM
    jne child_failed
{child_io(DiskOp.READ, 20)}
child_failed:
{CHILD_EXIT_NEG_RAX}
"""
    b = boot_disk(app("parent", src), disk=disk_of(image))
    parent = b.envs[0]
    exited(parent)
    [cid] = parent.children
    child = b.kernel.envs[cid]
    exited(child, 0)
    assert b.stdout == b"sector 011\n"
    assert child.disk_grants == [(10, 2, False), (20, 1, False)]
    assert parent.disk_grants == [(0, SECTORS, True)]


def test_children_inherit_their_parents_grants(app, image) -> None:
    src = f"""
section .text
_start:
{PARENT_MAKES_CHILD.format(check=CHECK, reqs=REQS)}
{START_CHILD.format(check=CHECK)}
{EXIT_0}
failed:
{EXIT_NEG_RAX}
child:
{child_io(DiskOp.READ, 5)}
{CHILD_EXIT_NEG_RAX}
"""
    b = boot_disk(app("parent", src), disk=disk_of(image), grants=[(4, 4, False)])
    [cid] = b.envs[0].children
    child = b.kernel.envs[cid]
    exited(child, 0)
    assert child.disk_grants == [(4, 4, False)]


@pytest.mark.parametrize(
    "grant, errno",
    [
        pytest.param((10, 4, DiskGrant.WRITE), Errno.EPERM, id="more-rights-than-held"),
        pytest.param((6, 4, DiskGrant.READ), Errno.EPERM, id="beyond-what-is-held"),
        pytest.param((10, 0, DiskGrant.READ), Errno.EINVAL, id="empty"),
        pytest.param((10, 1, 3), Errno.EINVAL, id="bad-mode"),
        pytest.param((SECTORS, 1, DiskGrant.READ), Errno.EINVAL, id="past-the-disk"),
    ],
)
def test_disk_grant_never_adds_rights(app, image, grant, errno) -> None:
    sector, n, mode = grant
    src = f"""
section .text
_start:
{PARENT_MAKES_CHILD.format(check=CHECK, reqs=REQS)}
{disk_grant("r12", sector, n, mode)}
{CHECK}
{EXIT_0}
failed:
{EXIT_NEG_RAX}
child:
    ud2
"""
    b = boot_disk(app("parent", src), disk=disk_of(image), grants=[(0, 8, True), (8, 8, False)])
    exited(b.envs[0], errno)


def test_disk_grant_to_a_stranger_is_refused(app, image) -> None:
    body = disk_grant("0x1", 0, 1, DiskGrant.READ) + CHECK  # env 1 is the other app, not a child
    src = program(body)
    b = boot_disk(app("other", WITNESS), app("granter", src), disk=disk_of(image))
    exited(b.envs[1], Errno.EPERM)
    assert b.envs[0].disk_grants == [(0, SECTORS, True)]


def test_revoking_your_own_range(app, image) -> None:
    body = disk_grant("0x0", 0, SECTORS, DiskGrant.REVOKE) + CHECK
    body += req(0, DiskOp.READ, 0, 1, BUF) + disk_io(1) + CHECK
    b = boot_disk(app("drop", program(body)), disk=disk_of(image))
    exited(b.envs[0], Errno.EPERM)
    assert b.envs[0].disk_grants == []


def test_revoke_splits_ranges() -> None:
    from types import SimpleNamespace

    from exo.disk import revoke_range

    env = SimpleNamespace(disk_grants=[(0, 10, True), (20, 5, False)], children=[])
    revoke_range(SimpleNamespace(envs={}), env, 4, 18)
    assert env.disk_grants == [(0, 4, True), (22, 3, False)]


def test_disk_calls_need_declaring_under_a_libos(app, image) -> None:
    """Least privilege: a libOS-linked app may only make the hypercalls its modules declare."""
    src = program(req(0, DiskOp.READ, 5, 1, BUF) + disk_io(1) + CHECK)  # (console declares page_alloc)
    b = boot_disk(app("undeclared", src, libos={"console": "direct"}), disk=disk_of(image))
    exited(b.envs[0], Errno.EPERM)


# ---------------------------------------------------------------------- the CLI
READ_AND_PRINT = program(req(0, DiskOp.READ, 5, 1, BUF) + disk_io(1) + CHECK + write_console(BUF, 11)
                         + fill(BUF, SECTOR_SIZE, 0x5A) + req(0, DiskOp.WRITE, 5, 1, BUF)
                         + req(1, DiskOp.FLUSH, 0, 0, 0) + disk_io(2) + CHECK)


def test_cli_boot_with_a_disk(app, image) -> None:
    a = app("cli", READ_AND_PRINT)
    r = run_exo("boot", str(a), "--disk", str(image))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"sector 005\n"
    assert on_image(image, 5) == b"Z" * SECTOR_SIZE


def test_cli_boot_with_a_readonly_disk(app, image) -> None:
    a = app("cli", READ_AND_PRINT)
    before = image.read_bytes()
    r = run_exo("boot", str(a), "--disk", f"{image}:ro")
    assert r.returncode == Errno.EROFS, r.stderr.decode()
    assert r.stdout == b"sector 005\n"
    assert image.read_bytes() == before


def test_cli_disk_fail_after(app, image) -> None:
    a = app("cli", READ_AND_PRINT)
    before = image.read_bytes()
    r = run_exo("boot", str(a), "--disk", str(image), "--disk-fail-after", "0")
    assert r.returncode == 0, r.stderr.decode()
    assert image.read_bytes() == before


@pytest.mark.parametrize(
    "content, problem",
    [(None, "no such disk image"), (b"x" * 100, "not a multiple of 512"), (b"", "empty")],
)
def test_cli_bad_disk_is_one_line_exit_2(app, tmp_path, content, problem) -> None:
    a = app("cli", program(""))
    img = tmp_path / "missing.img"
    if content is not None:
        img.write_bytes(content)
    r = run_exo("boot", str(a), "--disk", str(img))
    err = r.stderr.decode()
    assert r.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("exo: error: "), err
    assert str(img) in lines[0] and problem in lines[0]
