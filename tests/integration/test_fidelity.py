"""Where a kernel's sysfs and a naive emulation part ways, each shown on a real mount.

Every test here is a behaviour seen on a real kernel (fs/kernfs, the mdev core) that an
earlier apfs got wrong: the first read of an open file at an offset, open files of removed
devices, link counts and sizes the kernel caches, the bytes ``create`` accepts.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Mount, apfs
from helpers import MATRIX, TYPE_DIR, mdevs

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def _create(mount: Mount, uuid: str = UUID) -> Path:
    assert mount.bash(f'echo {uuid} > "$SYS/{TYPE_DIR[4:]}/create"').returncode == 0
    return mount.root / MATRIX / uuid


def test_first_read_at_an_offset_runs_show(mount: Mount) -> None:
    mdev = _create(mount)
    assert mount.bash(f"echo 5 > {mdev}/assign_adapter").returncode == 0
    # kernfs runs show() on the first read whatever its offset: dd skips one byte of "05\n".
    done = mount.bash(f"dd if={mdev}/adapters bs=1 skip=1 count=2 status=none")
    assert done.stdout == "5\n"
    fd = os.open(mdev / "adapters", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 1) == b"5\n"
    finally:
        os.close(fd)


def test_an_open_file_of_a_removed_device_stays_dead_when_the_name_returns(
        mount: Mount) -> None:
    mdev = _create(mount)
    fd = os.open(mdev / "adapters", os.O_RDONLY)
    try:
        assert mount.bash(f"echo 1 > {mdev}/remove").returncode == 0
        _create(mount)  # a new device of the same name
        with pytest.raises(OSError) as dead:
            os.pread(fd, 4096, 0)
        assert dead.value.errno == errno.ENODEV
        assert os.fstat(fd).st_size == 4096  # the open pins its inode: fstat works
        assert (mdev / "adapters").read_text() == ""  # a fresh open sees the new device
    finally:
        os.close(fd)


def test_an_open_attribute_that_vanished_and_came_back_stays_dead(mount: Mount) -> None:
    queue = mount.sys / "devices/ap/card05/05.0004"
    fd = os.open(queue / "online", os.O_RDONLY)
    try:
        unbind_and_bind = ("echo 05.0004 > $SYS/bus/ap/drivers/cex4queue/unbind && "
                           "echo 05.0004 > $SYS/bus/ap/drivers/cex4queue/bind")
        assert mount.bash(unbind_and_bind).returncode == 0
        with pytest.raises(OSError) as dead:
            os.pread(fd, 4096, 0)
        assert dead.value.errno == errno.ENODEV
    finally:
        os.close(fd)
    assert (queue / "online").read_text() == "1\n"


def test_link_counts_follow_created_devices_and_started_guests(mount: Mount) -> None:
    matrix = mount.root / MATRIX
    before = os.stat(matrix).st_nlink
    mdev = _create(mount)
    assert os.stat(matrix).st_nlink == before + 1  # without listing the parent first
    guests = mount.root / "apfs/guests"
    idle = os.stat(guests).st_nlink
    assert mount.bash(f"echo 5 > {mdev}/assign_adapter && echo 4 > {mdev}/assign_domain && "
                      f"echo 05.0004 > $SYS/bus/ap/drivers/cex4queue/unbind && "
                      f"echo 05.0004 > $SYS/bus/ap/drivers/vfio_ap_matrix/bind && "
                      f"echo /sys/devices/ap_matrix/matrix/{UUID} > $MNT/apfs/guests/start"
                      ).returncode == 0
    assert os.stat(guests).st_nlink == idle + 1
    assert mount.bash(f"echo /sys/devices/ap_matrix/matrix/{UUID} > $MNT/apfs/guests/stop"
                      ).returncode == 0
    assert mount.bash(f"echo 1 > {mdev}/remove").returncode == 0
    assert (os.stat(guests).st_nlink, os.stat(matrix).st_nlink) == (idle, before)


def test_create_accepts_a_stray_37th_byte(mount: Mount) -> None:
    # The mdev core checks count (36 or 37) and uuid_parse() reads the first 36 bytes only.
    done = mount.bash(f"printf '{UUID}\\xff' > $SYS/{TYPE_DIR[4:]}/create")
    assert done.returncode == 0, done.stderr
    assert mdevs(mount.root) == [UUID]


def test_config_errors_name_ids_in_hex(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text('[[card]]\nid = 511\ntype = "CEX5C"\n')
    target = tmp_path / "mnt"
    target.mkdir()
    result = apfs("mount", "--config", str(config), str(target))
    assert result.returncode == 1
    assert "card[0].id: 0x1ff is outside 0x00..0xff" in result.stderr


def test_debug_logs_one_line_per_request(tmp_path: Path) -> None:
    target, log = tmp_path / "mnt", tmp_path / "daemon.log"
    target.mkdir()
    # With --log the daemon holds none of our pipes: capturing its output must not hang.
    apfs("mount", "--debug", "--log", str(log), str(target), check=True)
    try:
        subprocess.run(["cat", str(target / "sys/bus/ap/ap_domain")], check=True,
                       capture_output=True)
        kmsg = (target / "apfs/log").read_text()
    finally:
        apfs("umount", str(target), check=True)
    trace = [line for line in log.read_text().splitlines() if " request " in line]
    for request in ("lookup", "open", "read", "release"):
        assert any(f"request {request}(" in line for line in trace), request
    assert " request " not in kmsg  # apfs/log stays a kernel-style log
