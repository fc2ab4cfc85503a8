"""apfs.testing and its pytest plugin: nothing is ever left behind, and xdist works.

The plugin is exercised the way a downstream project meets it: ``pytest`` runs in a
subprocess on a generated test file whose tests fail, raise, kill or stop their daemon, keep
a file open, and finally end the run itself (``os._exit``, SIGKILL, Ctrl-C).  Afterwards
``/proc/self/mountinfo`` and the process table must show nothing of that run.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import APFS, apfs
from helpers import wait_until

from apfs.testing import Mount, MountError, is_mounted, mounted, unmount

REPO = Path(__file__).resolve().parents[2]

RUN_TIMEOUT = 300
"""Bound of one inner pytest run; a hang (e.g. a stat of a stopped mount) fails the test."""

GONE_TIMEOUT = 10.0
"""Daemons whose owner died unmount and exit by themselves; allow for a loaded machine."""

# Each test appends the mount points it was given to mounted.txt, so the outer test knows
# that mounts were really made (an empty run would leave nothing behind, trivially).
SUITE = '''
import os
import signal
from pathlib import Path

import pytest

from apfs.testing import mounted

RECORD = Path(__file__).with_name("mounted.txt")
HELD = []


def record(*mounts):
    with RECORD.open("a") as f:
        f.writelines(f"{{m.root}}\\n" for m in mounts)


def test_fails(apfs_mount):
    record(apfs_mount)
    apfs_mount.write("sys/bus/ap/drivers/cex4queue/unbind", "05.0004\\n")
    assert apfs_mount.read("sys/bus/ap/bindings") == "8/8 (complete)\\n"


def test_raises(apfs_mount, apfs_session_mount):
    record(apfs_mount, apfs_session_mount)
    raise RuntimeError("the test broke")


def test_the_with_block_raises(tmp_path):
    with pytest.raises(KeyError), mounted(where=tmp_path) as mount:
        record(mount)
        raise KeyError("inside the with block")


def test_kills_its_daemon(apfs_mount):
    record(apfs_mount)
    apfs_mount.daemon.kill()
    apfs_mount.daemon.wait()


def test_stops_its_daemon(apfs_mount):
    record(apfs_mount)
    apfs_mount.daemon.send_signal(signal.SIGSTOP)


def test_leaves_a_file_open(apfs_mount):
    record(apfs_mount)
    HELD.append(open(apfs_mount.sys / "bus/ap/bindings"))  # a busy mount at teardown


def test_kills_the_session_daemon(apfs_session_mount):
    record(apfs_session_mount)
    apfs_session_mount.daemon.kill()
    apfs_session_mount.daemon.wait()


def test_session_mount_after_its_daemon_died(apfs_session_mount):
    record(apfs_session_mount)
    assert apfs_session_mount.read("sys/bus/ap/ap_domain") == "4\\n"


def test_ends_the_run(apfs_mount, apfs_session_mount):
    record(apfs_mount, apfs_session_mount)
    {end}
'''

ENDINGS = {
    "os._exit": ("os._exit(3)", [], 3),
    "sigkill": ("os.kill(os.getpid(), signal.SIGKILL)", [], -signal.SIGKILL),
    "ctrl-c": ("os.kill(os.getpid(), signal.SIGINT)", [], pytest.ExitCode.INTERRUPTED),
    "failures": ("pass", [], pytest.ExitCode.TESTS_FAILED),
    "-x": ("pass", ["-x"], pytest.ExitCode.TESTS_FAILED),
    "-k": ("pass", ["-k", "session"], pytest.ExitCode.OK),
}


def mounts_under(where: Path) -> list[str]:
    """Mount points under ``where`` in /proc/self/mountinfo (never a stat of them)."""
    prefix = f"{where}/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def processes_of(where: Path) -> list[int]:
    """Processes whose argv names something under ``where`` (the daemons of that run)."""
    marker = str(where).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in argv:
            found.append(int(name))
    return found


def left_behind(where: Path) -> list[str]:
    return mounts_under(where) + [f"pid {pid}" for pid in processes_of(where)]


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """The inner run's --basetemp; if this test fails, what it left is cleared anyway."""
    where = tmp_path / "run"
    yield where
    for pid in processes_of(where):
        os.kill(pid, signal.SIGKILL)
    for point in mounts_under(where):
        subprocess.run(["fusermount3", "-u", "-z", point], check=False)


def run_pytest(run_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                           f"--basetemp={run_dir}", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_run_that_goes_wrong_leaves_no_mount_and_no_daemon(tmp_path: Path, run_dir: Path,
                                                             ending: str) -> None:
    end, args, status = ENDINGS[ending]
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_bad_day.py").write_text(SUITE.format(end=end))

    done = run_pytest(run_dir, *args, cwd=suite)

    assert done.returncode == status, done.stdout + done.stderr
    recorded = (suite / "mounted.txt").read_text().split()
    assert recorded and all(p.startswith(f"{run_dir}/") for p in recorded), recorded
    assert wait_until(lambda: not left_behind(run_dir), GONE_TIMEOUT), left_behind(run_dir)
    if ending in ("failures", "-k"):
        assert "PASSED test_bad_day.py::test_session_mount_after_its_daemon_died" \
            in done.stdout, done.stdout


def test_the_downstream_package_passes_with_xdist(run_dir: Path) -> None:
    done = run_pytest(run_dir, "-n", "2", "tests/downstream", cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "created: 2/2 workers" in done.stdout, done.stdout
    assert wait_until(lambda: not left_behind(run_dir), GONE_TIMEOUT), left_behind(run_dir)


def readme_example() -> str:
    """The Python block of the README's "Test fixture" section."""
    section = (REPO / "README.md").read_text().split("\n## Test fixture\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_passes(tmp_path: Path, run_dir: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_readme.py").write_text(readme_example())
    done = run_pytest(run_dir, cwd=suite)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED test_readme.py::" in done.stdout, done.stdout


def test_the_option_sets_the_host_and_a_bad_marker_is_refused(tmp_path: Path,
                                                               run_dir: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "host.toml").write_text('[host]\ndomains = ["0a"]\n'
                                     '[[card]]\nid = "03"\ntype = "CEX8P"\n')
    (suite / "test_option.py").write_text(
        "import pytest\n\n"
        "def test_the_option(apfs_mount, apfs_session_mount):\n"
        "    for mount in (apfs_mount, apfs_session_mount):\n"
        "        assert mount.read('sys/devices/ap/card03/type') == 'CEX8P\\n'\n\n"
        "@pytest.mark.apfs_config()\n"
        "def test_a_bad_marker(apfs_mount):\n"
        "    pass\n")
    done = run_pytest(run_dir, "--apfs-config", "host.toml", cwd=suite)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "PASSED test_option.py::test_the_option" in done.stdout, done.stdout
    assert ("test_option.py::test_a_bad_marker: @pytest.mark.apfs_config takes one argument, "
            "TOML text (str) or a file (pathlib.Path); got args=() kwargs={}") in done.stdout


def test_a_mount_point_with_a_space_is_found_in_mountinfo(tmp_path: Path) -> None:
    where = tmp_path / "with space"
    where.mkdir()
    with mounted(where=where) as mount:
        assert is_mounted(mount.root)
        assert mount.read("sys/bus/ap/ap_domain") == "4\n"
    assert not is_mounted(mount.root) and not left_behind(tmp_path)


def test_mounted_names_the_reason_when_the_host_cannot_mount(tmp_path: Path) -> None:
    with pytest.raises(MountError) as failed, mounted("colour = 'blue'\n", where=tmp_path):
        pytest.fail("mounted() yielded a mount for a bad configuration")
    message = str(failed.value)
    assert f"apfs mount {tmp_path}/mnt failed (exit status 1)" in message, message
    assert f"{tmp_path}/mnt.toml" in message and "colour" in message, message
    assert not left_behind(tmp_path)


def test_refusals_are_parsed_whatever_the_value(apfs_mount: Mount) -> None:
    value = "it's \"quoted\"\ttab\n"
    with pytest.raises(OSError) as refused:
        apfs_mount.write("sys/bus/ap/drivers/cex4queue/bind", value)
    assert refused.value.errno == errno.ENODEV
    [refusal] = apfs_mount.refusals()
    assert (refusal.path, refusal.value, refusal.errno) == (
        "sys/bus/ap/drivers/cex4queue/bind", value, errno.ENODEV)
    assert refusal.message.startswith("bind: no device named"), refusal.message


def test_the_daemon_exits_with_its_owner(tmp_path: Path) -> None:
    """``apfs mount --exit-with PID`` (detached, as the CLI starts it)."""
    root = tmp_path / "mnt"
    root.mkdir()
    owner = subprocess.Popen(["sleep", "60"])
    try:
        done = apfs("mount", "--exit-with", str(owner.pid), str(root))
        assert done.returncode == 0, done.stderr
        assert is_mounted(root) and processes_of(root)
    finally:
        owner.kill()
        owner.wait()
    assert wait_until(lambda: not left_behind(tmp_path), GONE_TIMEOUT), left_behind(tmp_path)


def test_exit_with_a_process_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    done = subprocess.run([APFS, "mount", "--exit-with", str(gone.pid), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"--exit-with {gone.pid}: no such process" in done.stderr, done.stderr
    assert not is_mounted(tmp_path)


def test_unmount_refuses_a_mount_that_is_not_apfs(tmp_path: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "fixture-test", str(tmp_path)], check=True)
    try:
        with pytest.raises(MountError) as refused:
            unmount(tmp_path)
        assert str(refused.value) == (f"{tmp_path}: a tmpfs mount of fixture-test, not apfs: "
                                      "not unmounting it")
        assert is_mounted(tmp_path)
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True)


def test_mounted_with_state_starts_from_it_and_reset_goes_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bindings = "sys/bus/ap/bindings"
    with mounted(state=state, where=tmp_path) as first:
        first.write("sys/bus/ap/drivers/cex4queue/unbind", "05.0004\n")
    with mounted(state=state, where=tmp_path) as second:
        assert second.read(bindings) == "7/8\n"
        second.reset()
        assert second.read(bindings) == "8/8 (complete)\n"
    assert not left_behind(tmp_path)


def test_a_config_that_is_neither_text_nor_a_path_is_refused(tmp_path: Path) -> None:
    config: Any = b"[host]"
    with pytest.raises(TypeError) as refused, mounted(config, where=tmp_path):
        pytest.fail("mounted() yielded a mount for a bytes config")
    assert str(refused.value) == ("config=b'[host]': expected TOML text (str) or a path "
                                  "(os.PathLike)")
    assert not left_behind(tmp_path)
