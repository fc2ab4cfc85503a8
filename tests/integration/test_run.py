"""``apfs run``: an unmodified program with the tree over ``/sys`` in a private mount namespace.

Exit status and signals pass through, a fresh mount is made and always unmounted, ``--mount``
reuses a running one, the host's ``/sys`` and ``/etc/mdevctl.d`` are never touched, and a
caller without CAP_SYS_ADMIN gets a clear refusal.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Mount
from helpers import APFS_RUN, apfs_run, tree_listing

from apfs import mountinfo

pytestmark = pytest.mark.mount

NOT_PRIVILEGED = "needs root (CAP_SYS_ADMIN)"


def _env(tmp_path: Path) -> dict[str, str]:
    """The fresh mount goes to a temporary directory under TMPDIR: here, a test's own
    ``tmp/``, which :func:`_leftovers` looks at afterwards."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp_path / "tmp")}


def _leftovers(tmp_path: Path) -> list[str]:
    """Mounts and temporary directories ``apfs run`` left in the test's TMPDIR."""
    tmp = tmp_path / "tmp"
    prefix = str(tmp.resolve()) + "/"
    mounted = [e.mountpoint for e in mountinfo.mounts() if e.mountpoint.startswith(prefix)]
    return mounted + os.listdir(tmp)


def _host_sys() -> tuple[list[str], list[tuple[str, str]]]:
    """What the host sees at /sys: its entries and what is mounted there."""
    mounted = [(e.fstype, e.source) for e in mountinfo.mounts() if e.mountpoint == "/sys"]
    return sorted(os.listdir("/sys")), mounted


def test_the_program_sees_a_fresh_tree_over_sys(tmp_path: Path) -> None:
    host_before = _host_sys()
    result = apfs_run("--", "bash", "-c", """
        cat /sys/bus/ap/ap_domain
        readlink /sys/class/mdev_bus/matrix
        ls /sys/bus/mdev/devices | wc -l
        cat /sys/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough/name
        grep -c " $TMPDIR/apfs-run-" /proc/self/mountinfo
    """, env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["4", "../../devices/ap_matrix/matrix", "0",
                                          "VFIO AP Passthrough Device", "1"]
    # Afterwards: no mount, no temporary directory, the host's /sys as it was.
    assert _leftovers(tmp_path) == []
    assert _host_sys() == host_before
    assert host_before[1][-1][0] == "sysfs"


def test_mount_options_apply_to_the_fresh_tree(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text('[host]\ndomains = ["0c"]\n\n[[card]]\nid = "2a"\ntype = "CEX8P"\n')
    log = tmp_path / "apfs.log"
    result = apfs_run("--config", str(config), "--log", str(log), "--",
                      "bash", "-c", "ls /sys/bus/ap/devices; echo 2a.000c > "
                      "/sys/bus/ap/drivers/cex4queue/bind", env=_env(tmp_path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["2a.000c", "card2a"]
    assert "write error: No such device" in result.stderr
    assert "sys/bus/ap/drivers/cex4queue/bind: write '2a.000c\\n' refused with ENODEV" \
        in log.read_text()


@pytest.mark.parametrize("status", [0, 1, 7, 255])
def test_exit_status_passes_through(tmp_path: Path, status: int) -> None:
    result = apfs_run("--", "sh", "-c", f"exit {status}", env=_env(tmp_path))
    assert result.returncode == status
    assert result.stderr == ""


def test_own_failures_are_told_apart_from_the_program_s(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a program\n")
    missing = apfs_run("--", "no-such-program-anywhere", env=_env(tmp_path))
    not_executable = apfs_run("--", str(data), env=_env(tmp_path))
    no_command = apfs_run(env=_env(tmp_path))
    bad_config = apfs_run("--config", str(tmp_path / "none.toml"), "--", "true",
                          env=_env(tmp_path))
    assert (missing.returncode, missing.stderr) == (
        127, "apfs run: no-such-program-anywhere: No such file or directory\n")
    assert (not_executable.returncode, not_executable.stderr) == (
        126, f"apfs run: {data}: Permission denied\n")
    assert no_command.returncode == 125
    assert "no command given" in no_command.stderr
    assert bad_config.returncode == 125
    assert "none.toml: no such configuration file" in bad_config.stderr
    assert _leftovers(tmp_path) == []


def _started(tmp_path: Path, script: str) -> subprocess.Popen[str]:
    """``apfs run -- bash -c SCRIPT``, returned once the script printed ``ready``."""
    proc = subprocess.Popen([*APFS_RUN, "--", "bash", "-c", script], env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_signal_to_apfs_run_reaches_the_program(tmp_path: Path) -> None:
    proc = _started(tmp_path, 'sleep 60 > /dev/null & '
                              'trap "kill $!; echo got TERM; exit 42" TERM; echo ready; wait')
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (42, "got TERM\n")
    assert _leftovers(tmp_path) == []


def test_a_program_killed_by_a_signal_kills_apfs_run_with_it(tmp_path: Path) -> None:
    proc = _started(tmp_path, "echo ready; exec sleep 60")
    proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGUSR1
    assert _leftovers(tmp_path) == []

    itself = apfs_run("--", "sh", "-c", "kill -HUP $$", env=_env(tmp_path))
    assert itself.returncode == -signal.SIGHUP


def test_mount_reuses_a_running_mount_and_leaves_it(mount: Mount, tmp_path: Path) -> None:
    first = apfs_run("--mount", str(mount.root), "--", "bash", "-c",
                     "echo 05.0004 > /sys/bus/ap/drivers/cex4queue/unbind", env=_env(tmp_path))
    assert first.returncode == 0, first.stderr
    # The change is the running mount's: seen from the host and by the next program.
    assert not os.path.lexists(mount.sys / "bus/ap/drivers/cex4queue/05.0004")
    second = apfs_run("--mount", str(mount.root), "--", "ls", "/sys/bus/ap/drivers/cex4queue",
                      env=_env(tmp_path))
    assert "05.0004" not in second.stdout.split()
    assert "05.0047" in second.stdout.split()
    assert mountinfo.mount_at(str(mount.root.resolve())) is not None
    assert _leftovers(tmp_path) == []  # no fresh mount was made


def test_mount_refuses_what_is_not_an_apfs_mount(tmp_path: Path) -> None:
    plain = apfs_run("--mount", str(tmp_path), "--", "true")
    with_options = apfs_run("--mount", str(tmp_path), "--config", "x.toml", "--", "true")
    assert plain.returncode == 125
    assert f"--mount {tmp_path}: not an apfs mount (nothing is mounted there)" in plain.stderr
    assert with_options.returncode == 125
    assert "--mount uses a running mount: --config" in with_options.stderr


def test_etc_mdevctl_d_is_private_unless_host_etc(tmp_path: Path) -> None:
    etc = Path("/etc/mdevctl.d")
    if not etc.is_dir():
        pytest.skip("the host has no /etc/mdevctl.d (mdevctl is not installed)")
    before = tree_listing(etc)
    host = f"{etc.stat().st_dev}:{etc.stat().st_ino}"
    private = apfs_run("--", "bash", "-c", """
        stat -f -c %T /etc/mdevctl.d; find /etc/mdevctl.d | sort
        mkdir /etc/mdevctl.d/matrix && echo '{}' > /etc/mdevctl.d/matrix/definition
    """, env=_env(tmp_path))
    kept = apfs_run("--host-etc", "--", "stat", "-c", "%d:%i", "/etc/mdevctl.d",
                    env=_env(tmp_path))
    assert private.returncode == 0, private.stderr
    assert private.stdout.splitlines() == [
        "tmpfs", "/etc/mdevctl.d", "/etc/mdevctl.d/scripts.d",
        "/etc/mdevctl.d/scripts.d/callouts", "/etc/mdevctl.d/scripts.d/notifiers"]
    assert kept.stdout.strip() == host
    assert tree_listing(etc) == before


@pytest.mark.parametrize("who", ["nobody", "root without CAP_SYS_ADMIN"])
def test_unprivileged_callers_are_refused_clearly(tmp_path: Path, who: str) -> None:
    if who == "nobody":
        drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        reachable = subprocess.run([*drop, *APFS_RUN[:1], "-c", "import apfs.run"],
                                   capture_output=True, cwd="/")
        if reachable.returncode != 0:
            pytest.skip("nobody cannot reach this checkout's interpreter or sources")
    else:
        drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    result = subprocess.run([*drop, *APFS_RUN, "--", "true"], capture_output=True, text=True,
                            timeout=60, cwd="/", env=_env(tmp_path))
    assert result.returncode == 125
    assert result.stderr.startswith("apfs run: a private mount namespace " + NOT_PRIVILEGED)
    assert "SYSFS_ROOT=MOUNT/sys" in result.stderr
    assert _leftovers(tmp_path) == []
