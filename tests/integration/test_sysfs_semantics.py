"""Acceptance 5: the mount behaves like sysfs (spec/sysfs-semantics.md), file by file.

Modes and sizes as ``stat`` shows them, kernfs's open checks even for root, a namespace
nobody can change, O_TRUNC/O_APPEND/0-byte writes, per-open ``show()`` snapshots, one
``store()`` per ``write()`` of at most 4096 bytes with the offset ignored, and NUL-terminated
buffers.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mount
from helpers import MATRIX, TYPE_DIR, assert_unchanged, mdevs, snapshot, write_once

CARD05 = "sys/devices/ap/card05"
QUEUE = f"{CARD05}/05.0004"
BUS = "sys/bus/ap"

# (path, file type, mode); regular files are text attributes of st_size 4096.
MODES = [
    (f"{BUS}/ap_domain", stat.S_IFREG, 0o644),
    (f"{BUS}/ap_adapter_mask", stat.S_IFREG, 0o444),
    (f"{BUS}/ap_usage_domain_mask", stat.S_IFREG, 0o444),
    (f"{BUS}/config_time", stat.S_IFREG, 0o644),
    (f"{BUS}/poll_timeout", stat.S_IFREG, 0o644),
    (f"{BUS}/bindings", stat.S_IFREG, 0o444),
    (f"{BUS}/drivers_probe", stat.S_IFREG, 0o200),
    (f"{BUS}/uevent", stat.S_IFREG, 0o200),
    (f"{BUS}/drivers/cex4queue/bind", stat.S_IFREG, 0o200),
    (f"{BUS}/drivers/vfio_ap_matrix/unbind", stat.S_IFREG, 0o200),
    (f"{CARD05}/online", stat.S_IFREG, 0o644),
    (f"{CARD05}/config", stat.S_IFREG, 0o644),
    (f"{CARD05}/type", stat.S_IFREG, 0o444),
    (f"{CARD05}/request_count", stat.S_IFREG, 0o644),
    (f"{QUEUE}/reset", stat.S_IFREG, 0o644),
    (f"{QUEUE}/online", stat.S_IFREG, 0o644),
    (f"{QUEUE}/interrupt", stat.S_IFREG, 0o444),
    (f"{TYPE_DIR}/create", stat.S_IFREG, 0o200),
    (f"{TYPE_DIR}/available_instances", stat.S_IFREG, 0o444),
    (f"{MATRIX}/$uuid/assign_adapter", stat.S_IFREG, 0o200),
    (f"{MATRIX}/$uuid/unassign_control_domain", stat.S_IFREG, 0o200),
    (f"{MATRIX}/$uuid/remove", stat.S_IFREG, 0o200),
    (f"{MATRIX}/$uuid/adapters", stat.S_IFREG, 0o444),
    (f"{MATRIX}/$uuid/control_domains", stat.S_IFREG, 0o444),
    ("apfs/guests/start", stat.S_IFREG, 0o200),
    ("sys", stat.S_IFDIR, 0o755),
    (BUS, stat.S_IFDIR, 0o755),
    (f"{BUS}/drivers/cex4queue", stat.S_IFDIR, 0o755),
    (CARD05, stat.S_IFDIR, 0o755),
    (QUEUE, stat.S_IFDIR, 0o755),
    (f"{MATRIX}/$uuid", stat.S_IFDIR, 0o755),
    (f"{BUS}/devices/card05", stat.S_IFLNK, 0o777),
    (f"{BUS}/drivers/cex4queue/05.0004", stat.S_IFLNK, 0o777),
    (f"{CARD05}/driver", stat.S_IFLNK, 0o777),
    (f"{QUEUE}/subsystem", stat.S_IFLNK, 0o777),
    (f"{TYPE_DIR}/devices/$uuid", stat.S_IFLNK, 0o777),
    ("sys/bus/mdev/devices/$uuid", stat.S_IFLNK, 0o777),
]


def create_mdev(mount: Mount) -> tuple[Mount, str]:
    """One mediated device, created the seed's way."""
    done = mount.bash(f'cd "$MNT/{TYPE_DIR}" && uuidgen > create')
    assert done.returncode == 0, done
    (uuid,) = mdevs(mount.root)
    return mount, uuid


@pytest.fixture
def with_mdev(mount: Mount) -> tuple[Mount, str]:
    """A fresh default mount with one mediated device."""
    return create_mdev(mount)


@pytest.fixture(scope="module")
def shared(module_mount_factory: Callable[..., Mount]) -> tuple[Mount, str]:
    """One default mount with one mediated device for the tests that must not change it."""
    return create_mdev(module_mount_factory())


def test_stat_shows_sysfs_modes_and_sizes(shared: tuple[Mount, str]) -> None:
    mount, uuid = shared
    for relpath, kind, mode in MODES:
        st = os.lstat(mount.root / relpath.replace("$uuid", uuid))
        assert (relpath, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)) == \
            (relpath, kind, mode)
        assert (st.st_uid, st.st_gid) == (0, 0)
        if kind == stat.S_IFREG:
            assert st.st_size == 4096, relpath
        elif kind == stat.S_IFDIR:
            assert st.st_size == 0, relpath


def test_every_entry_of_the_tree_follows_the_rules(shared: tuple[Mount, str]) -> None:
    """All of sys/: text attributes 4096 bytes with 0444/0200/0644, directories 0755 with
    nlink = 2 + subdirectories, symlinks 0777; nothing else exists."""
    mount, _ = shared
    checked = 0
    for here, dirs, files in os.walk(mount.sys, followlinks=False):
        names = dirs + files
        subdirs = sum(stat.S_ISDIR(os.lstat(os.path.join(here, n)).st_mode) for n in names)
        st = os.lstat(here)
        assert (stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink) == (0o755, 0, 2 + subdirs), \
            here
        for name in names:
            path = os.path.join(here, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                assert (stat.S_IMODE(st.st_mode) in (0o444, 0o200, 0o644), st.st_size) == \
                    (True, 4096), path
            elif stat.S_ISLNK(st.st_mode):
                assert stat.S_IMODE(st.st_mode) == 0o777, path
            else:
                assert stat.S_ISDIR(st.st_mode), path
            checked += 1
    assert checked > 200


def test_short_content_keeps_size_4096(mount: Mount) -> None:
    """direct_io: reading "4\\n" must not shrink the size the kernel reports."""
    path = mount.root / BUS / "ap_domain"
    assert path.read_text() == "4\n"
    assert path.stat().st_size == 4096
    assert path.read_text() == "4\n"


@pytest.mark.parametrize("relpath", [
    f"{MATRIX}/$uuid/assign_adapter",
    f"{MATRIX}/$uuid/remove",
    f"{BUS}/drivers/cex4queue/bind",
    f"{BUS}/drivers/vfio_ap_matrix/unbind",
    f"{TYPE_DIR}/create",
    "apfs/guests/start",
])
def test_cat_of_a_write_only_attribute_is_refused_even_for_root(
        shared: tuple[Mount, str], relpath: str) -> None:
    mount, uuid = shared
    assert os.geteuid() == 0
    result = mount.bash(f'cat "$MNT/{relpath.replace("$uuid", uuid)}"')
    assert result.returncode == 1
    assert result.stderr.endswith(": Permission denied\n"), result.stderr


@pytest.mark.parametrize("relpath", [f"{BUS}/ap_adapter_mask", f"{MATRIX}/$uuid/adapters",
                                     f"{CARD05}/type", "apfs/log"])
def test_echo_into_a_read_only_attribute_is_refused_even_for_root(
        shared: tuple[Mount, str], relpath: str) -> None:
    mount, uuid = shared
    before = snapshot(mount.root)
    result = mount.bash(f'echo 1 > "$MNT/{relpath.replace("$uuid", uuid)}"')
    assert result.returncode == 1
    assert result.stderr.endswith(": Permission denied\n"), result.stderr
    assert_unchanged(before, snapshot(mount.root))


# (command typed in sys/bus/ap, what the shell reports)
NAMESPACE_CHANGES = [
    ("mkdir newdir", "Operation not permitted"),
    ("mkdir drivers/cex4queue/05.0004x", "Operation not permitted"),
    ("rmdir devices", "Operation not permitted"),
    ("rm ap_domain", "Operation not permitted"),
    ("rm devices/card05", "Operation not permitted"),
    ("unlink config_time", "Operation not permitted"),
    ("ln -s ap_domain newlink", "Operation not permitted"),
    ("ln ap_domain hardlink", "Operation not permitted"),
    ("mv ap_domain moved", "Operation not permitted"),
    ("mv drivers/cex4queue drivers/renamed", "Operation not permitted"),
    ("mknod newfifo p", "Operation not permitted"),
    ("mkfifo newfifo", "Operation not permitted"),
    ("mknod newdev c 1 3", "Operation not permitted"),
    ("touch newfile", "Permission denied"),
    ("echo 1 > newfile", "Permission denied"),
    ("cp ap_domain copy", "Permission denied"),
]


@pytest.mark.parametrize(("command", "message"), NAMESPACE_CHANGES)
def test_namespace_cannot_change(shared: tuple[Mount, str], command: str, message: str) -> None:
    mount, _ = shared
    before = snapshot(mount.root)
    result = mount.bash(f'cd "$SYS/bus/ap" && {command}')
    assert result.returncode != 0
    assert result.stderr.rstrip("\n").endswith(message), result.stderr
    assert "Function not implemented" not in result.stderr
    assert_unchanged(before, snapshot(mount.root), command)


def test_append_truncate_touch_and_empty_writes_are_accepted(mount: Mount) -> None:
    """`echo x >> attr` stores x; `: > attr`, `touch attr` and a 0-byte write() change
    nothing; Rust's fs::write (O_WRONLY|O_CREAT|O_TRUNC) works on an existing attribute."""
    appended = mount.bash('cd "$SYS/bus/ap" && echo 7 >> config_time && cat config_time')
    assert (appended.returncode, appended.stdout, appended.stderr) == (0, "7\n", "")

    before = snapshot(mount.root)
    quiet = mount.bash('cd "$SYS/bus/ap" && : > config_time && : > poll_thread && '
                       "touch config_time && truncate -s 0 config_time")
    assert (quiet.returncode, quiet.stderr) == (0, ""), quiet
    assert write_once(mount.sys / "bus/ap/config_time", b"") == 0
    assert_unchanged(before, snapshot(mount.root), "O_TRUNC/touch/0-byte writes")
    assert os.stat(mount.sys / "bus/ap/config_time").st_size == 4096

    fd = os.open(mount.sys / "bus/ap/config_time", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        assert os.write(fd, b"8") == 1
    finally:
        os.close(fd)
    assert mount.read("sys/bus/ap/config_time") == "8\n"


def test_each_open_reads_one_snapshot_until_offset_zero(mount: Mount) -> None:
    path = mount.sys / "bus/ap/config_time"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.read(fd, 1) == b"3"
        changed = mount.bash('echo 100 > "$SYS/bus/ap/config_time"')
        assert changed.returncode == 0, changed
        assert os.read(fd, 100) == b"0\n"  # the rest of "30\n", not of "100\n"
        assert os.read(fd, 100) == b""
        assert os.pread(fd, 100, 0) == b"100\n"  # offset 0 calls show() again
        assert os.pread(fd, 10, 2) == b"0\n"
        assert os.pread(fd, 10, 4) == b""
        assert os.pread(fd, 10, 5000) == b""  # past the end
    finally:
        os.close(fd)


def test_one_store_per_write_whatever_the_offset(with_mdev: tuple[Mount, str]) -> None:
    mount, uuid = with_mdev
    fd = os.open(mount.root / MATRIX / uuid / "assign_adapter", os.O_WRONLY)
    try:
        assert os.write(fd, b"5\n") == 2
        assert os.write(fd, b"6\n") == 2  # at offset 2: a second store(), of "6\n"
        assert os.pwrite(fd, b"a\n", 1000) == 2  # offsets are ignored for text attributes
    finally:
        os.close(fd)
    assert mount.read(f"{MATRIX}/{uuid}/adapters") == "05\n06\n0a\n"


def test_writes_longer_than_a_page_are_cut_to_4096_bytes(mount: Mount) -> None:
    timeout = mount.sys / "bus/ap/poll_timeout"
    assert mount.read("sys/bus/ap/poll_timeout") == "250000\n"
    # Only the first 4096 bytes reach store(): "000...05" (octal 5); the X's never arrive.
    assert write_once(timeout, b"0" * 4095 + b"5" + b"X" * 904) == 4096
    assert mount.read("sys/bus/ap/poll_timeout") == "5\n"
    assert write_once(timeout, b"0" * 5000) == 4096
    assert mount.read("sys/bus/ap/poll_timeout") == "0\n"
    with pytest.raises(OSError) as refused:  # 4096 octal digits, then an 8: not a number
        write_once(timeout, b"0" * 4095 + b"8" + b"0" * 904)
    assert refused.value.errno == errno.EINVAL


def test_store_sees_a_nul_terminated_string(with_mdev: tuple[Mount, str]) -> None:
    mount, uuid = with_mdev
    result = mount.bash(f"""set -e
        cd "$SYS/devices/ap_matrix/matrix/{uuid}"
        printf '5\\0junk' > assign_adapter
        printf '47\\0 x y' > assign_domain
        cat adapters domains""")
    assert (result.returncode, result.stdout, result.stderr) == (0, "05\n0047\n", ""), result


def test_open_file_of_a_removed_mdev_answers_enodev(with_mdev: tuple[Mount, str]) -> None:
    """kernfs deactivates removed files: writes on an fd opened before answer ENODEV."""
    mount, uuid = with_mdev
    fd = os.open(mount.root / MATRIX / uuid / "assign_adapter", os.O_WRONLY)
    try:
        removed = mount.bash(f'echo 1 > "$SYS/devices/ap_matrix/matrix/{uuid}/remove"')
        assert removed.returncode == 0, removed
        assert not (mount.root / MATRIX / uuid).exists()
        with pytest.raises(OSError) as refused:
            os.write(fd, b"5\n")
        assert refused.value.errno == errno.ENODEV
    finally:
        os.close(fd)


def test_open_attribute_that_vanishes_on_unbind_answers_enodev(mount: Mount) -> None:
    online = mount.root / QUEUE / "online"
    fd = os.open(online, os.O_RDWR)
    try:
        unbind = mount.bash('echo 05.0004 > "$SYS/bus/ap/drivers/cex4queue/unbind"')
        assert unbind.returncode == 0, unbind
        assert not online.exists()
        with pytest.raises(OSError) as refused:
            os.write(fd, b"0\n")
        assert refused.value.errno == errno.ENODEV
        with pytest.raises(OSError) as unreadable:
            os.pread(fd, 100, 0)
        assert unreadable.value.errno == errno.ENODEV
    finally:
        os.close(fd)


def test_directories_cannot_be_opened_as_files(mount: Mount) -> None:
    with pytest.raises(IsADirectoryError):
        Path(mount.sys / "bus/ap").read_text()


def test_files_come_and_go_with_the_binding(mount: Mount) -> None:
    """A host driver gives a queue `online`; vfio_ap_matrix gives it `status` instead."""
    result = mount.bash("""cd "$SYS/devices/ap/card05/05.0004"
        cat online
        echo 05.0004 > ../../../../bus/ap/drivers/cex4queue/unbind
        cat online status
        echo 05.0004 > ../../../../bus/ap/drivers/vfio_ap_matrix/bind
        cat status
        cat online
        echo 05.0004 > ../../../../bus/ap/drivers/vfio_ap_matrix/unbind
        echo 05.0004 > ../../../../bus/ap/drivers/cex4queue/bind
        cat online
        ls""")
    assert result.stdout == ("1\n" "unassigned\n" "1\n" "ap_functions\nchkstop\nconfig\ndriver\n"
                             "interrupt\nload\nonline\npendingq_count\nrequest_count\n"
                             "requestq_count\nreset\nsubsystem\n"), result
    assert result.stderr.splitlines() == [
        "cat: online: No such file or directory",
        "cat: status: No such file or directory",
        "cat: online: No such file or directory",
    ], result.stderr


def test_available_instances_counts_mdevs(mount: Mount) -> None:
    result = mount.bash(f"""set -e
        cd "$MNT/{TYPE_DIR}"
        cat name device_api available_instances
        uuidgen > create
        uuidgen > create
        cat available_instances
        echo 1 > "devices/$(ls devices | head -n 1)/remove"
        cat available_instances""")
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout == ("VFIO AP Passthrough Device\nvfio-ap\n65536\n65534\n65535\n")
