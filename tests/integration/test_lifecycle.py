"""Acceptance 7: mounts start, run side by side, stop on signals and recover from a kill.

Everything goes through the ``apfs`` command an administrator types (the venv's console
script) and signals sent to the daemon process.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import APFS, Mount, apfs, unmount
from helpers import daemon_pid, stat_errno, wait_until

from apfs import mountinfo

IDLE = 2.5
"""Longer than any attribute cache of the root (1 s): a stat would have to reach the daemon."""


def listdir_errno(path: Path) -> int | None:
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno
    return None


def mounted(root: Path) -> bool:
    """From /proc/self/mountinfo: never stats the mount, which may not answer."""
    return mountinfo.mount_at(str(root)) is not None


def process_gone(pid: int) -> bool:
    """No such process, or a zombie (it has exited; only its parent has not reaped it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def daemon_of(root: Path) -> int:
    pid = daemon_pid(root)
    assert pid is not None, f"no apfs.daemon process serves {root}"
    return pid


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """A directory for tests that mount by hand; unmounted afterwards whatever happened."""
    root = tmp_path / "mnt"
    root.mkdir()
    yield root
    unmount(Mount(root))
    assert not mounted(root)


@pytest.fixture
def other_mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points of non-apfs mounts made by a test (root only); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs or a bind mount needs root")
    made: list[Path] = []
    yield made
    for root in reversed(made):
        subprocess.run(["umount", str(root)], check=True, timeout=30)


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


# --- signals ------------------------------------------------------------------------------

STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_signal_after_idleness_unmounts_and_the_daemon_exits(mountpoint: Path, tmp_path: Path,
                                                             sig: signal.Signals) -> None:
    log = tmp_path / "daemon.log"
    assert apfs("mount", "--log", str(log), str(mountpoint)).returncode == 0
    assert Mount(mountpoint).read("sys/bus/ap/ap_domain") == "4\n"
    pid = daemon_of(mountpoint)
    time.sleep(IDLE)
    os.kill(pid, sig)
    assert wait_until(lambda: not mounted(mountpoint) and process_gone(pid), timeout=2.0), \
        f"after {sig.name}: mounted={mounted(mountpoint)}, daemon gone={process_gone(pid)}"
    assert os.listdir(mountpoint) == []
    text = log.read_text()
    assert f"{sig.name} received, unmounting" in text and text.endswith("apfs: stopped\n")


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_signal_to_a_foreground_mount_exits_0(mountpoint: Path, sig: signal.Signals) -> None:
    """SIGINT goes to the whole process group, as Ctrl-C in a terminal sends it."""
    foreground = subprocess.Popen([APFS, "mount", "--foreground", str(mountpoint)],
                                  start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: mounted(mountpoint), timeout=30.0)
        assert Mount(mountpoint).read("sys/bus/ap/ap_domain") == "4\n"
        time.sleep(IDLE)
        if sig == signal.SIGINT:
            os.killpg(foreground.pid, sig)
        else:
            foreground.send_signal(sig)
        assert foreground.wait(timeout=2.0) == 0
    finally:
        if foreground.poll() is None:
            foreground.kill()
        foreground.communicate()
    assert not mounted(mountpoint)
    assert os.listdir(mountpoint) == []


# --- apfs umount --------------------------------------------------------------------------


def test_umount_refuses_a_busy_tmpfs(other_mounts: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "tmpfs"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "apfs-test", str(root)], check=True)
    other_mounts.append(root)
    (root / "data").write_text("keep me\n")
    with open(root / "data") as busy:  # today's fallback detached exactly this case
        result = apfs("umount", str(root))
        assert result.returncode == 1
        assert result.stderr == (f"apfs umount: {root}: not an apfs mount (type tmpfs, source "
                                 f"apfs-test); left untouched (use umount(8) for other "
                                 f"filesystems)\n")
        assert busy.read() == "keep me\n"
    assert mounted(root)
    assert (root / "data").read_text() == "keep me\n"


def test_umount_refuses_a_bind_mount(other_mounts: list[Path], tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    (source / "data").write_text("keep me\n")
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    other_mounts.append(target)
    result = apfs("umount", str(target))
    assert result.returncode == 1
    assert result.stderr.startswith(f"apfs umount: {target}: not an apfs mount (type "), result
    assert "left untouched" in result.stderr
    assert mounted(target)
    assert (target / "data").read_text() == "keep me\n"


def test_umount_of_something_not_mounted_fails(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("")
    for path in (tmp_path, tmp_path / "keep", tmp_path / "missing"):
        result = apfs("umount", str(path))
        assert result.returncode == 1
        assert result.stderr == (f"apfs umount: {path}: not mounted (no mount point there in "
                                 f"/proc/self/mountinfo)\n")
    assert (tmp_path / "keep").exists()


def test_umount_of_a_mount_whose_daemon_is_stopped(mountpoint: Path) -> None:
    assert apfs("mount", str(mountpoint)).returncode == 0
    pid = daemon_of(mountpoint)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = apfs("umount", str(mountpoint))
        elapsed = time.monotonic() - started
        assert (result.returncode, result.stderr) == (0, ""), result
        assert elapsed <= 10.0, f"apfs umount took {elapsed:.1f} s"
        assert not mounted(mountpoint)
        assert wait_until(lambda: process_gone(pid), timeout=1.0)
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_no_command_looks_inside_a_mount_whose_daemon_is_stopped(mountpoint: Path) -> None:
    assert apfs("mount", str(mountpoint)).returncode == 0
    pid = daemon_of(mountpoint)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(IDLE)  # let the root's cached attributes expire
        started = time.monotonic()
        again = apfs("mount", str(mountpoint))
        inside = apfs("mount", str(mountpoint / "sys/bus"))
        not_a_mount = apfs("umount", str(mountpoint / "sys"))
        assert time.monotonic() - started <= 6.0
        assert again.stderr == (f"apfs mount: {mountpoint}: already a mount point, served by "
                                f"apfs daemon pid {pid}; 'apfs umount {mountpoint}' first\n")
        assert inside.stderr == (f"apfs mount: {mountpoint}/sys/bus: inside the apfs mount "
                                 f"{mountpoint}; mount on an empty directory outside it\n")
        assert not_a_mount.stderr.startswith(f"apfs umount: {mountpoint}/sys: not mounted")
        assert (again.returncode, inside.returncode, not_a_mount.returncode) == (1, 1, 1)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert Mount(mountpoint).read("sys/bus/ap/ap_domain") == "4\n"


def test_umount_of_a_stopped_daemon_whose_mount_is_busy(mountpoint: Path) -> None:
    """A client waits for an answer that will never come: the mount is detached anyway."""
    assert apfs("mount", str(mountpoint)).returncode == 0
    pid = daemon_of(mountpoint)
    sitter = subprocess.Popen(["sleep", "60"], cwd=mountpoint / "sys")
    os.kill(pid, signal.SIGSTOP)
    waiting = subprocess.Popen(["cat", str(mountpoint / "sys/bus/ap/ap_domain")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        result = apfs("umount", str(mountpoint))
        assert time.monotonic() - started <= 10.0
        assert (result.returncode, result.stderr) == (0, ""), result
        assert not mounted(mountpoint)
        assert wait_until(lambda: process_gone(pid), timeout=1.0)
        # Continued to act on SIGTERM, the daemon may still answer the waiting request before
        # it unmounts, or the request fails: either way the client does not hang.
        waiting.wait(timeout=5)
    finally:
        for process in (sitter, waiting):
            process.kill()
            process.wait()
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_umount_refuses_a_busy_mount_unless_lazy(mountpoint: Path) -> None:
    assert apfs("mount", str(mountpoint)).returncode == 0
    pid = daemon_of(mountpoint)
    with open(mountpoint / "sys/bus/ap/ap_domain") as busy:
        refused = apfs("umount", str(mountpoint))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"apfs umount: {mountpoint}: target is busy"), refused
        assert "--lazy" in refused.stderr
        assert mounted(mountpoint) and not process_gone(pid)
        assert busy.read() == "4\n"  # the daemon still serves

        detached = apfs("umount", "--lazy", str(mountpoint))
        assert detached.returncode == 0, detached
        assert f"daemon (pid {pid}) serves the files still open" in detached.stderr
        assert not mounted(mountpoint)
        busy.seek(0)
        assert busy.read() == "4\n"  # the open file is still served
    assert wait_until(lambda: process_gone(pid)), "the daemon outlived its last open file"


def kill_daemon(mountpoint: Path) -> None:
    pid = daemon_of(mountpoint)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: process_gone(pid))


def test_after_sigkill_umount_clears_the_dead_mount_and_mount_works_again(
        mountpoint: Path) -> None:
    assert apfs("mount", str(mountpoint)).returncode == 0
    changed = Mount(mountpoint).bash('echo 77 > "$SYS/bus/ap/config_time"')
    assert changed.returncode == 0
    kill_daemon(mountpoint)
    assert wait_until(lambda: listdir_errno(mountpoint) == errno.ENOTCONN)
    dead = Mount(mountpoint).bash('ls "$MNT"')
    assert dead.stderr.endswith(": Transport endpoint is not connected\n"), dead

    started = time.monotonic()
    refused = apfs("mount", str(mountpoint))
    assert time.monotonic() - started <= 2.0
    assert refused.returncode == 1
    assert refused.stderr == (
        f"apfs mount: {mountpoint}: already a mount point, an apfs mount whose daemon has "
        f"exited (Transport endpoint is not connected); 'apfs umount {mountpoint}' clears it\n")

    umount = apfs("umount", str(mountpoint))
    assert (umount.returncode, umount.stderr) == (0, ""), umount
    assert not mounted(mountpoint) and stat_errno(mountpoint) is None

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


# --- apfs mount: what it refuses ----------------------------------------------------------


def test_mount_refuses_a_regular_file(tmp_path: Path) -> None:
    afile = tmp_path / "plain-file"
    afile.write_text("")
    result = apfs("mount", str(afile))
    assert result.returncode == 1
    assert result.stderr == (f"apfs mount: {afile}: is a regular file, not a directory; "
                             f"mount on an empty directory\n")


def test_mount_refuses_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = apfs("mount", str(missing))
    assert result.returncode == 1
    assert result.stderr == (f"apfs mount: {missing}: no such directory (create it first: "
                             f"mkdir -p {missing})\n")


def test_mount_refuses_a_mounted_directory(mount: Mount) -> None:
    twice = apfs("mount", str(mount.root))
    assert twice.returncode == 1
    pid = daemon_of(mount.root)
    assert twice.stderr == (f"apfs mount: {mount.root}: already a mount point, served by apfs "
                            f"daemon pid {pid}; 'apfs umount {mount.root}' first\n")
    assert mount.read("sys/bus/ap/ap_domain") == "4\n"  # the first mount still serves


def test_mount_refuses_a_non_empty_directory(mountpoint: Path) -> None:
    (mountpoint / "notes.txt").write_text("mine\n")
    (mountpoint / "a-dir").mkdir()
    result = apfs("mount", str(mountpoint))
    assert result.returncode == 1
    assert result.stderr == (f"apfs mount: {mountpoint}: directory not empty (2 entries, first "
                             f"'a-dir'): the mount would hide them; choose an empty directory "
                             f"or pass --nonempty\n")
    assert not mounted(mountpoint)


def test_mount_over_a_non_empty_directory_with_nonempty(mountpoint: Path) -> None:
    (mountpoint / "notes.txt").write_text("mine\n")
    result = apfs("mount", "--nonempty", str(mountpoint))
    assert (result.returncode, result.stderr) == (0, ""), result
    assert sorted(os.listdir(mountpoint)) == ["apfs", "dev", "sys"]
    assert apfs("umount", str(mountpoint)).returncode == 0
    assert (mountpoint / "notes.txt").read_text() == "mine\n"


def test_mount_refuses_a_log_in_a_missing_directory(mountpoint: Path, tmp_path: Path) -> None:
    log = tmp_path / "no-such-dir" / "apfs.log"
    result = apfs("mount", "--log", str(log), str(mountpoint))
    assert result.returncode == 1
    assert result.stderr == (f"apfs mount: --log {log}: directory {log.parent} does not "
                             f"exist\n")
    assert not mounted(mountpoint)


def test_mount_refuses_a_directory_as_log(mountpoint: Path, tmp_path: Path) -> None:
    result = apfs("mount", "--log", str(tmp_path), str(mountpoint))
    assert result.returncode == 1
    assert result.stderr == (f"apfs mount: --log {tmp_path}: is a directory; --log takes a "
                             f"file name\n")


def test_mount_refuses_a_log_it_cannot_write(mountpoint: Path, other_mounts: list[Path],
                                             tmp_path: Path) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "apfs-test", str(readonly)], check=True)
    other_mounts.append(readonly)
    log = readonly / "apfs.log"
    result = apfs("mount", "--log", str(log), str(mountpoint))
    assert result.returncode == 1
    assert result.stderr == (f"apfs mount: --log {log}: cannot write to it: Read-only file "
                             f"system\n")
    assert not mounted(mountpoint)


def test_the_log_file_gets_the_daemon_log(mountpoint: Path, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "apfs.log"
    log.parent.mkdir()
    assert apfs("mount", "--log", str(log), str(mountpoint)).returncode == 0
    assert f"apfs: mounted on {mountpoint}" in log.read_text()


def test_help_exits_0_and_describes_the_layout() -> None:
    top = apfs("--help")
    assert top.returncode == 0, top
    for word in ("sys/", "apfs/", "SYSFS_ROOT", "log", "guests/"):
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
    assert not mounted(mountpoint)


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
    """On its only CPU a spin gains nothing over the single poll and holds the CPU."""
    pinned = subprocess.run(["taskset", "-c", "0", APFS, "mount", "--spin-us", "30",
                             str(mountpoint)],
                            capture_output=True, text=True, timeout=60)
    assert pinned.returncode == 0, pinned.stderr
    assert "busy-poll off: one CPU available" in Mount(mountpoint).log()
    assert Mount(mountpoint).read("sys/bus/ap/ap_domain") == "4\n"


def test_busy_poll_is_on_with_two_cpus(mountpoint: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this machine has one CPU")
    assert apfs("mount", "--spin-us", "30", str(mountpoint)).returncode == 0
    assert "busy-poll 30 µs after each request" in Mount(mountpoint).log()
