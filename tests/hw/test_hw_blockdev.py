"""The block device: sectors on a raw image, a write-back cache, flush as the only barrier."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from hw import Machine, MachineConfigError
from hw.blockdev import SECTOR_SIZE, BlockDevice

SECTORS = 16


def sector_bytes(i: int, fill: bytes = b".") -> bytes:
    head = f"sector {i:03d}\n".encode()
    return head + fill * (SECTOR_SIZE - len(head))


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(b"".join(sector_bytes(i) for i in range(SECTORS)))
    return p


def on_image(path, sector: int, count: int = 1) -> bytes:
    return path.read_bytes()[sector * SECTOR_SIZE : (sector + count) * SECTOR_SIZE]


def test_read_returns_the_images_sectors(image) -> None:
    d = BlockDevice(image)
    assert d.sectors == SECTORS and d.name == "disk" and d.sector_size == 512
    assert d.read(3, 2) == sector_bytes(3) + sector_bytes(4)
    assert (d.reads, d.sectors_read) == (1, 2)
    d.close()


def test_writes_are_cached_until_flush(image) -> None:
    d = BlockDevice(image)
    new = b"W" * (2 * SECTOR_SIZE)
    assert d.write(5, new) is True
    assert d.read(4, 4) == sector_bytes(4) + new + sector_bytes(7)  # reads see the cache
    assert on_image(image, 5, 2) == sector_bytes(5) + sector_bytes(6)  # the image does not yet
    assert d.dirty_sectors == 2
    assert d.flush() == 2
    assert on_image(image, 5, 2) == new
    assert d.dirty_sectors == 0 and d.flushes == 1 and d.sectors_flushed == 2
    d.close()
    again = BlockDevice(image)  # persistent across a reopen
    assert again.read(5, 2) == new
    again.close()


def test_flush_writes_in_sector_order_and_last_write_wins(image) -> None:
    d = BlockDevice(image)
    d.write(9, b"a" * SECTOR_SIZE)
    d.write(2, b"b" * SECTOR_SIZE)
    d.write(9, b"c" * SECTOR_SIZE)
    d.write(3, b"d" * SECTOR_SIZE)
    assert d.flush() == 3
    assert on_image(image, 2, 2) == b"b" * SECTOR_SIZE + b"d" * SECTOR_SIZE
    assert on_image(image, 9) == b"c" * SECTOR_SIZE
    d.close()


def test_close_without_flush_loses_the_writes(image) -> None:
    """A crash: close() is a power failure, not a shutdown."""
    before = image.read_bytes()
    d = BlockDevice(image)
    d.write(1, b"x" * SECTOR_SIZE)
    d.flush()
    d.write(2, b"y" * SECTOR_SIZE)  # never flushed
    d.close()
    after = BlockDevice(image)
    assert after.read(1, 1) == b"x" * SECTOR_SIZE
    assert after.read(2, 1) == sector_bytes(2)
    after.close()
    assert image.read_bytes()[2 * SECTOR_SIZE :] == before[2 * SECTOR_SIZE :]


def test_machine_close_does_not_flush(image) -> None:
    d = BlockDevice(image)
    m = Machine(4 << 20, stdin=b"", stdout=io.BytesIO(), disk=d)
    assert m.disk is d and "disk" in m.devices
    d.write(0, b"z" * SECTOR_SIZE)
    m.close()
    assert on_image(image, 0) == sector_bytes(0)


def test_machine_without_disk() -> None:
    m = Machine(4 << 20, stdin=b"", stdout=io.BytesIO())
    assert m.disk is None and "disk" not in m.devices


def test_fail_after_drops_every_later_write(image) -> None:
    d = BlockDevice(image, fail_after=2)
    assert d.write(1, b"1" * SECTOR_SIZE)
    assert d.write(2, b"2" * SECTOR_SIZE)
    assert not d.crashed
    assert d.write(3, b"3" * SECTOR_SIZE) is False  # the power failed here
    assert d.crashed and d.dropped_writes == 1
    assert d.read(3, 1) == sector_bytes(3)
    assert d.flush() == 2  # what was accepted still reaches the image
    assert d.write(4, b"4" * SECTOR_SIZE) is False  # and nothing more ever does
    d.flush()
    d.close()
    assert on_image(image, 1, 4) == b"1" * SECTOR_SIZE + b"2" * SECTOR_SIZE + sector_bytes(3) + sector_bytes(4)
    assert d.stats()["dropped_writes"] == 2


def test_fail_after_counts_writes_since_the_last_flush(image) -> None:
    d = BlockDevice(image, fail_after=1)
    assert d.write(1, b"1" * SECTOR_SIZE)
    d.flush()
    assert d.write(2, b"2" * SECTOR_SIZE)  # the counter restarted at the flush
    assert d.write(3, b"3" * SECTOR_SIZE) is False
    d.close()


def test_fail_after_zero_drops_the_first_write(image) -> None:
    d = BlockDevice(image, fail_after=0)
    assert d.write(0, b"q" * SECTOR_SIZE) is False and d.crashed
    d.flush()
    d.close()
    assert on_image(image, 0) == sector_bytes(0)


def test_readonly_device(image) -> None:
    os.chmod(image, 0o444)
    try:
        d = BlockDevice(image, readonly=True)
        assert d.read(0, 1) == sector_bytes(0)
        with pytest.raises(MachineConfigError, match="read-only"):
            d.write(0, b"x" * SECTOR_SIZE)
        assert d.flush() == 0
        d.close()
    finally:
        os.chmod(image, 0o644)


@pytest.mark.parametrize("sector, count", [(-1, 1), (SECTORS, 1), (SECTORS - 1, 2), (0, 0)])
def test_out_of_range_is_a_config_error(image, sector, count) -> None:
    d = BlockDevice(image)
    with pytest.raises(MachineConfigError, match="outside the disk"):
        d.read(sector, count)
    with pytest.raises(MachineConfigError):
        d.write(sector, b"\0" * SECTOR_SIZE * count)
    d.close()


def test_partial_sector_write_is_a_config_error(image) -> None:
    d = BlockDevice(image)
    with pytest.raises(MachineConfigError, match="whole sectors"):
        d.write(0, b"short")
    d.close()


@pytest.mark.parametrize(
    "content, problem",
    [(None, "no such disk image"), (b"", "empty"), (b"x" * 513, "not a multiple of 512")],
)
def test_bad_images_are_rejected_naming_the_file(tmp_path, content, problem) -> None:
    p = tmp_path / "bad.img"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(MachineConfigError) as e:
        BlockDevice(p)
    assert str(p) in str(e.value) and problem in str(e.value)


def test_directory_is_rejected(tmp_path) -> None:
    with pytest.raises(MachineConfigError, match="directory"):
        BlockDevice(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open any file")
def test_unreadable_image_is_rejected(image) -> None:
    os.chmod(image, 0)
    try:
        with pytest.raises(MachineConfigError) as e:
            BlockDevice(image)
        assert str(image) in str(e.value) and "cannot open" in str(e.value)
    finally:
        os.chmod(image, 0o644)


def test_held_flushes_stay_in_memory_until_released(image) -> None:
    """hold_flushes (a debugger re-executing from forked copies): a flush is durable for reads but
    leaves the shared image file alone until release_flushes, or close."""
    d = BlockDevice(image)
    d.hold_flushes()
    d.write(2, b"A" * SECTOR_SIZE)
    assert d.flush() == 1 and d.dirty_sectors == 0 and d.sectors_flushed == 1
    d.write(3, b"B" * SECTOR_SIZE)  # unflushed, over a held sector's neighbour
    d.write(2, b"C" * SECTOR_SIZE)  # unflushed, over a held sector: the newer wins
    assert d.read(1, 3) == sector_bytes(1) + b"C" * SECTOR_SIZE + b"B" * SECTOR_SIZE
    assert on_image(image, 2) == sector_bytes(2)
    assert d.release_flushes() == 1
    assert on_image(image, 2) == b"A" * SECTOR_SIZE and on_image(image, 3) == sector_bytes(3)
    d.hold_flushes()
    d.flush()  # C and B held
    d.close()  # writes what was held, still drops what was not flushed
    assert on_image(image, 2, 2) == b"C" * SECTOR_SIZE + b"B" * SECTOR_SIZE


def test_one_writer_per_image(tmp_path):
    """An image opened writable is locked: a second writer, or a reader, gets a clear error;
    readers share; closing releases it (issue 16)."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(64 * 512))
    first = BlockDevice(img)
    with pytest.raises(MachineConfigError, match="in use by another process"):
        BlockDevice(img)
    with pytest.raises(MachineConfigError, match="being written by another process"):
        BlockDevice(img, readonly=True)
    first.close()
    readers = [BlockDevice(img, readonly=True), BlockDevice(img, readonly=True)]
    with pytest.raises(MachineConfigError, match="in use"):
        BlockDevice(img)
    for r in readers:
        r.close()
    BlockDevice(img).close()


def test_second_exo_on_a_written_image_is_one_line(tmp_path):
    import subprocess
    import sys

    img = tmp_path / "d.img"
    img.write_bytes(bytes(64 * 512))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, hw.blockdev as b; d = b.BlockDevice(sys.argv[1]); "
                               "print('held', flush=True); sys.stdin.read()", str(img)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        r = subprocess.run([sys.executable, "-m", "exo", "boot", "guest_apps/cat", "--disk", str(img), "--", "/x"],
                           capture_output=True, stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2])
        lines = r.stderr.decode().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and str(img) in lines[0] and "locked" in lines[0]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
