"""``apfs mount --state DIR`` and ``apfs/reset`` on real mounts.

A state directory keeps what writes changed across unmounts; it is locked while mounted; a
damaged state file or one saved for another host is refused with its path (exit 1, no mount);
a save that fails (disk full) undoes the write and answers EIO, and the mount stays up.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mount, apfs
from helpers import (
    MATRIX,
    TYPE_DIR,
    assert_unchanged,
    differences,
    in_proc_mounts,
    snapshot,
    write_error,
)

UUID = "6f5a8c8e-3c1b-4d7a-9d0e-1a2b3c4d5e6f"
# Writes of every durable kind: bindings, an mdev with assignments, flags, bus settings.
WRITES = f"""
cd "$SYS/bus/ap"
echo 05.0004 > drivers/cex4queue/unbind && echo 05.0004 > drivers/vfio_ap_matrix/bind
echo 05.00ab > drivers/cex4queue/unbind && echo 05.00ab > drivers/vfio_ap_matrix/bind
echo card06 > drivers/cex4card/unbind
echo 0x47 > ap_domain && echo 60 > config_time && echo 1 > poll_thread && echo 0 > drivers_autoprobe
echo 0 > "$SYS/devices/ap/card05/05.0047/online"
echo 0 > "$SYS/devices/ap/card05/config"
echo {UUID} > "$MNT/{TYPE_DIR}/create"
cd "$MNT/{MATRIX}/{UUID}"
echo 5 > assign_adapter && echo ab > assign_domain && echo 4 > assign_domain
echo 47 > assign_control_domain
"""


def mount_with_state(root: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return apfs("mount", "--state", str(state), *extra, str(root))


def test_state_survives_umount_and_mount(places: tuple[Path, Path]) -> None:
    root, state = places
    assert mount_with_state(root, state).returncode == 0
    mount = Mount(root)
    pristine = snapshot(root)
    done = mount.bash(WRITES)
    assert done.returncode == 0, done.stderr
    written = snapshot(root)
    assert differences(pristine, written)
    assert apfs("umount", str(root)).returncode == 0

    assert mount_with_state(root, state).returncode == 0
    assert_unchanged(written, snapshot(root), "an unmount and a mount with the same --state")
    assert (root / MATRIX / UUID / "adapters").read_text() == "05\n"

    # The same host without --state is volatile, like sysfs.
    assert apfs("umount", str(root)).returncode == 0
    assert apfs("mount", str(root)).returncode == 0
    assert_unchanged(pristine, snapshot(root), "a mount without --state")


def test_vfio_ap_state_survives_umount_and_mount(places: tuple[Path, Path]) -> None:
    root, state = places
    assert mount_with_state(root, state, "--flavor", "vfio_ap").returncode == 0
    done = Mount(root).bash(
        f'cd "$SYS/bus/ap" && echo -0x5 > apmask && echo -4,-0xab > aqmask && '
        f'echo {UUID} > "$SYS/devices/vfio_ap/matrix/mdev_supported_types/'
        f'vfio_ap-passthrough/create" && cd "$SYS/devices/vfio_ap/matrix/{UUID}" && '
        f'echo 5 > assign_adapter && echo 4 > assign_domain && echo 0xab > assign_domain')
    assert done.returncode == 0, done.stderr
    written = snapshot(root)
    assert apfs("umount", str(root)).returncode == 0
    assert mount_with_state(root, state, "--flavor", "vfio_ap").returncode == 0
    assert_unchanged(written, snapshot(root), "an unmount and a mount with the same --state")
    matrix = (root / f"sys/devices/vfio_ap/matrix/{UUID}/guest_matrix").read_text()
    assert matrix == "05.0004\n05.00ab\n"


def test_reset_restores_the_configured_state_and_is_committed(
        places: tuple[Path, Path]) -> None:
    root, state = places
    assert mount_with_state(root, state).returncode == 0
    mount = Mount(root)
    pristine = snapshot(root)
    assert mount.bash(WRITES).returncode == 0
    start = mount.bash(f'echo "vfio_ap_matrix,sysfsdev=/sys/bus/mdev/devices/{UUID}" '
                       f'> "$MNT/apfs/guests/start"')
    assert start.returncode == 0, start.stderr
    assert (root / "apfs/guests" / UUID).is_dir()

    done = mount.bash('echo 1 > "$MNT/apfs/reset"')
    assert done.returncode == 0, done.stderr
    assert not (root / "apfs/guests" / UUID).exists()
    assert_unchanged(pristine, snapshot(root), "echo 1 > apfs/reset")
    bad = mount.bash('echo maybe > "$MNT/apfs/reset"')
    assert write_error(errno.EINVAL) in bad.stderr
    assert "apfs/reset: write 'maybe\\n' refused with EINVAL" in mount.log()

    assert apfs("umount", str(root)).returncode == 0
    assert mount_with_state(root, state).returncode == 0
    assert_unchanged(pristine, snapshot(root), "a remount after the reset")


def test_same_state_directory_mounted_twice_is_refused(places: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    root, state = places
    assert mount_with_state(root, state).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    second = mount_with_state(other, state)
    assert second.returncode == 1
    holder = (state / "lock").read_text().strip()
    assert f"{state}: state directory in use by apfs daemon pid {holder}" in second.stderr
    assert not in_proc_mounts(other)
    # The first mount is untouched; once it is gone the directory is free again.
    assert (root / "sys/bus/ap/ap_domain").read_text() == "4\n"
    assert apfs("umount", str(root)).returncode == 0
    assert mount_with_state(other, state).returncode == 0
    assert apfs("umount", str(other)).returncode == 0


def _truncate(data: bytes) -> bytes:
    return data[: len(data) - 7]


def _flip_a_body_bit(data: bytes) -> bytes:
    at = data.index(b"\n") + len(data) // 3
    return data[:at] + bytes([data[at] ^ 0x04]) + data[at + 1:]


def _flip_a_header_bit(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


@pytest.mark.parametrize(("damage", "reason"), [
    (_truncate, "truncated: "),
    (_flip_a_body_bit, "corrupted: the SHA-256 of its contents does not match its header"),
    (_flip_a_header_bit, "not an apfs state file"),
    (lambda data: b"", "not an apfs state file: it is empty"),
])
def test_damaged_state_file_is_refused_with_its_path(places: tuple[Path, Path], damage,
                                                     reason: str) -> None:
    root, state = places
    assert mount_with_state(root, state).returncode == 0
    assert Mount(root).bash(WRITES).returncode == 0
    assert apfs("umount", str(root)).returncode == 0
    path = state / "state"
    path.write_bytes(damage(path.read_bytes()))

    refused = mount_with_state(root, state)
    assert refused.returncode == 1
    assert f"{path}: " in refused.stderr and reason in refused.stderr, refused.stderr
    assert not in_proc_mounts(root)


def test_state_of_another_host_configuration_is_refused(places: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    root, state = places
    assert mount_with_state(root, state).returncode == 0
    assert apfs("umount", str(root)).returncode == 0
    config = tmp_path / "host.toml"
    config.write_text('[host]\ndomains = ["04"]\n[[card]]\nid = "05"\ntype = "CEX5C"\n')
    refused = mount_with_state(root, state, "--config", str(config))
    assert refused.returncode == 1
    assert f"{state / 'state'}: saved for a different host configuration" in refused.stderr
    assert not in_proc_mounts(root)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, so that the state directory can be filled up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_failed_save_undoes_the_write_with_eio_and_the_mount_stays(
        places: tuple[Path, Path], small_disk: Path) -> None:
    root, _ = places
    state = small_disk / "state"
    assert mount_with_state(root, state).returncode == 0
    mount = Mount(root)
    before = snapshot(root)
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)

    full = mount.bash('echo 05.0004 > "$SYS/bus/ap/drivers/cex4queue/unbind"')
    assert write_error(errno.EIO) in full.stderr
    assert_unchanged(before, snapshot(root), "a write whose state could not be saved")
    log = mount.log()
    assert (f"sys/bus/ap/drivers/cex4queue/unbind: cannot save the state to {state}/state: "
            f"No space left on device; the write is undone") in log
    assert "internal error" not in log

    filler.unlink()
    done = mount.bash('echo 05.0004 > "$SYS/bus/ap/drivers/cex4queue/unbind"')
    assert done.returncode == 0, done.stderr
    assert "05.0004" not in os.listdir(root / "sys/bus/ap/drivers/cex4queue")


def test_mount_help_documents_state() -> None:
    shown = apfs("mount", "--help").stdout
    assert "--state DIR" in shown and "apfs/reset" in shown
