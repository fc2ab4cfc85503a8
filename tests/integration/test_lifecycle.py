"""Acceptance 7: mounts start, run side by side, stop on signals and recover from a kill.

Everything goes through the ``apfs`` command an administrator types (the venv's console
script) and signals sent to the daemon process.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import APFS, Mount, apfs, unmount
from helpers import daemon_pid, in_proc_mounts, stat_errno, wait_until


def listdir_errno(path: Path) -> int | None:
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno
    return None


def gone(root: Path) -> bool:
    return not os.path.ismount(root) and not in_proc_mounts(root)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """A directory for tests that mount by hand; unmounted afterwards whatever happened."""
    root = tmp_path / "mnt"
    root.mkdir()
    yield root
    unmount(Mount(root))
    assert gone(root)


def test_two_mounts_have_independent_state(mount_factory: Callable[..., Mount]) -> None:
    first, second = mount_factory(), mount_factory()
    done = first.bash('echo 05.0004 > "$SYS/bus/ap/drivers/cex4queue/unbind" && '
                      'echo 77 > "$SYS/bus/ap/config_time"')
    assert done.returncode == 0, done
    assert first.read("sys/bus/ap/config_time") == "77\n"
    assert second.read("sys/bus/ap/config_time") == "30\n"
    assert not (first.sys / "bus/ap/drivers/cex4queue/05.0004").exists()
    assert (second.sys / "bus/ap/drivers/cex4queue/05.0004").is_symlink()
    assert first.read("sys/bus/ap/bindings") == "7/8\n"
    assert second.read("sys/bus/ap/bindings") == "8/8 (complete)\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_to_the_daemon_unmounts(mountpoint: Path, sig: signal.Signals) -> None:
    assert apfs("mount", str(mountpoint)).returncode == 0
    assert os.path.ismount(mountpoint) and in_proc_mounts(mountpoint)
    pid = daemon_pid(mountpoint)
    assert pid is not None
    os.kill(pid, sig)
    assert wait_until(lambda: gone(mountpoint)), "the mount outlived the daemon's signal"
    assert wait_until(lambda: daemon_pid(mountpoint) is None)
    assert os.listdir(mountpoint) == []


def kill_daemon(mountpoint: Path) -> None:
    pid = daemon_pid(mountpoint)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: daemon_pid(mountpoint) is None)


def test_after_sigkill_umount_clears_the_dead_mount_and_mount_works_again(
        mountpoint: Path) -> None:
    assert apfs("mount", str(mountpoint)).returncode == 0
    changed = Mount(mountpoint).bash('echo 77 > "$SYS/bus/ap/config_time"')
    assert changed.returncode == 0
    kill_daemon(mountpoint)
    assert wait_until(lambda: listdir_errno(mountpoint) == errno.ENOTCONN)
    dead = Mount(mountpoint).bash('ls "$MNT"')
    assert dead.stderr.endswith(": Transport endpoint is not connected\n"), dead

    refused = apfs("mount", str(mountpoint))
    assert refused.returncode == 1
    assert "already a mount point" in refused.stderr

    umount = apfs("umount", str(mountpoint))
    assert (umount.returncode, umount.stderr) == (0, ""), umount
    assert gone(mountpoint) and stat_errno(mountpoint) is None

    again = apfs("mount", str(mountpoint))
    assert (again.returncode, again.stderr) == (0, ""), again
    fresh = Mount(mountpoint)
    assert fresh.read("sys/bus/ap/config_time") == "30\n"  # the default state, not the old
    assert sorted(os.listdir(mountpoint / "sys/bus/ap/drivers/cex4queue")) == [
        "05.0004", "05.0047", "05.00ab", "05.00ff",
        "06.0004", "06.0047", "06.00ab", "06.00ff", "bind", "unbind"]


def test_after_sigkill_stat_of_the_mountpoint_fails(mountpoint: Path) -> None:
    assert apfs("mount", str(mountpoint)).returncode == 0
    assert Mount(mountpoint).bash("ls").returncode == 0
    kill_daemon(mountpoint)
    assert wait_until(lambda: listdir_errno(mountpoint) == errno.ENOTCONN)
    # The root's attributes are cached for at most a second (fuseops.ROOT_TIMEOUT).
    assert wait_until(lambda: stat_errno(mountpoint) == errno.ENOTCONN, timeout=3.0)


def test_mount_refuses_a_file_and_a_mounted_directory(mount: Mount, tmp_path: Path) -> None:
    afile = tmp_path / "plain-file"
    afile.write_text("")
    not_dir = apfs("mount", str(afile))
    assert not_dir.returncode == 1
    assert not_dir.stderr.startswith(f"apfs mount: {afile}: not a directory"), not_dir.stderr

    missing = apfs("mount", str(tmp_path / "missing"))
    assert missing.returncode == 1
    assert "not a directory" in missing.stderr

    twice = apfs("mount", str(mount.root))
    assert twice.returncode == 1
    assert twice.stderr.startswith(f"apfs mount: {mount.root}: already a mount point"), \
        twice.stderr
    assert mount.read("sys/bus/ap/ap_domain") == "4\n"  # the first mount still serves


def test_umount_of_something_not_mounted_fails(tmp_path: Path) -> None:
    result = apfs("umount", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == f"apfs umount: {tmp_path}: not mounted\n"


def test_help_exits_0_and_describes_the_layout() -> None:
    top = apfs("--help")
    assert top.returncode == 0, top
    for word in ("mount", "umount", "sys/", "apfs/", "SYSFS_ROOT", "log", "guests/"):
        assert word in top.stdout, word


def test_mount_help_exits_0_and_describes_the_layout() -> None:
    sub = apfs("mount", "--help")
    assert sub.returncode == 0, sub
    assert "--config" in sub.stdout
    for word in ("sys/", "apfs/"):
        assert word in sub.stdout, word


BAD_CONFIGS = {
    "not-toml": "this is = = not toml\n",
    "unknown-key": "[host]\ndomains = []\ncolour = 'blue'\n",
    "unknown-type": '[[card]]\nid = "01"\ntype = "CEX9Z"\n',
    "id-too-large": '[host]\ndomains = ["100"]\n',
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_is_refused_naming_the_file(mountpoint: Path, tmp_path: Path,
                                               name: str) -> None:
    config = tmp_path / f"{name}.toml"
    config.write_text(BAD_CONFIGS[name])
    result = apfs("mount", "--config", str(config), str(mountpoint))
    assert result.returncode == 1
    assert str(config) in result.stderr, result.stderr
    assert not os.path.ismount(mountpoint)


def test_missing_config_is_refused_naming_the_file(mountpoint: Path, tmp_path: Path) -> None:
    config = tmp_path / "nowhere.toml"
    result = apfs("mount", "--config", str(config), str(mountpoint))
    assert result.returncode == 1
    assert result.stderr == f"apfs mount: {config}: no such configuration file\n"


def test_bad_bindings_are_refused_naming_the_file(mountpoint: Path, tmp_path: Path) -> None:
    config = tmp_path / "bindings.toml"
    config.write_text('[host]\ndomains = ["01"]\n[[card]]\nid = "01"\ntype = "CEX5C"\n'
                      '[bindings]\n"09.0001" = "cex4queue"\n')
    result = apfs("mount", "--config", str(config), str(mountpoint))
    assert result.returncode == 1
    assert "09.0001" in result.stderr
    assert str(config) in result.stderr, result.stderr


def test_a_good_config_file_is_served(mountpoint: Path, tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text('[host]\ndomains = ["0a"]\n[[card]]\nid = "3"\ntype = "CEX8P"\n')
    assert apfs("mount", "--config", str(config), str(mountpoint)).returncode == 0
    m = Mount(mountpoint)
    assert m.read("sys/devices/ap/card03/type") == "CEX8P\n"
    assert os.listdir(mountpoint / "sys/devices/ap/card03/03.000a")


def test_busy_poll_is_off_when_the_daemon_has_one_cpu(mountpoint: Path) -> None:
    """Spinning for the next request on the only CPU would delay the client sending it."""
    pinned = subprocess.run(["taskset", "-c", "0", APFS, "mount", str(mountpoint)],
                            capture_output=True, text=True, timeout=60)
    assert pinned.returncode == 0, pinned.stderr
    assert "one CPU available: not busy-polling" in Mount(mountpoint).log()
    assert Mount(mountpoint).read("sys/bus/ap/ap_domain") == "4\n"


def test_busy_poll_is_on_by_default_with_two_cpus(mountpoint: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this machine has one CPU")
    assert apfs("mount", str(mountpoint)).returncode == 0
    assert "busy-polling" not in Mount(mountpoint).log()
