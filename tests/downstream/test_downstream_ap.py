"""A downstream project's tests of its AP passthrough tooling, written against apfs.

They import only the public API (``apfs.testing``) and use the plugin's fixtures; nothing from
apfs's own test helpers.  ``tests/integration/test_fixture.py`` also runs this package with
``pytest -n 2``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from apfs.testing import Mount, mounted

DRIVERS = "sys/bus/ap/drivers"
PASSTHROUGH = "sys/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough"
GUEST1 = "1d0c43c8-5e0c-4d5c-9d1e-0e4f5a6b7c81"
GUEST2 = "2e1d54d9-6f1d-4e6d-8e2f-1f5a6b7c8d92"

SMALL_HOST = """
[host]
domains = ["0a"]

[[card]]
id = "03"
type = "CEX8P"
"""


def reserve_for_guests(mount: Mount, *queues: str) -> None:
    """What the tool under test would do first: hand queues to vfio_ap_matrix."""
    for queue in queues:
        mount.write(f"{DRIVERS}/cex4queue/unbind", f"{queue}\n")
        mount.write(f"{DRIVERS}/vfio_ap_matrix/bind", f"{queue}\n")


def test_an_administrators_passthrough_session(apfs_mount: Mount) -> None:
    done = apfs_mount.bash(f"""set -e
        cd "$SYS/bus/ap/drivers/cex4queue" && echo 05.0004 > unbind
        echo 05.0004 > ../vfio_ap_matrix/bind
        cd "$MNT/{PASSTHROUGH}" && echo {GUEST1} > create
        echo 5 > devices/{GUEST1}/assign_adapter; echo 4 > devices/{GUEST1}/assign_domain
        cat devices/{GUEST1}/adapters devices/{GUEST1}/domains""")
    assert (done.returncode, done.stdout, done.stderr) == (0, "05\n0004\n", "")
    assert apfs_mount.read("sys/bus/ap/bindings") == "8/8 (complete)\n"


def test_two_guests_cannot_share_a_queue(apfs_mount: Mount) -> None:
    reserve_for_guests(apfs_mount, "05.0004")
    for guest in (GUEST1, GUEST2):
        apfs_mount.write(f"{PASSTHROUGH}/create", guest)
        apfs_mount.write(f"{PASSTHROUGH}/devices/{guest}/assign_adapter", "5\n")
    apfs_mount.write(f"{PASSTHROUGH}/devices/{GUEST1}/assign_domain", "4\n")

    with pytest.raises(OSError) as refused:
        apfs_mount.write(f"{PASSTHROUGH}/devices/{GUEST2}/assign_domain", "4\n")

    assert refused.value.errno == errno.EADDRINUSE
    last = apfs_mount.refusals()[-1]
    assert (last.path, last.value, last.errno) == (
        f"sys/devices/ap_matrix/matrix/{GUEST2}/assign_domain", "4\n", errno.EADDRINUSE)
    assert "05.0004" in last.message
    assert apfs_mount.read(f"{PASSTHROUGH}/devices/{GUEST2}/domains") == ""


def test_a_refused_echo_in_bash_prints_the_errno(apfs_mount: Mount) -> None:
    done = apfs_mount.bash('echo 05.0004 > "$SYS/bus/ap/drivers/vfio_ap_matrix/bind"')
    assert done.returncode == 1
    assert done.stderr.endswith(f"write error: {os.strerror(errno.ENODEV)}\n"), done.stderr
    assert [r.message for r in apfs_mount.refusals()] == [
        "bind: 05.0004 is already bound to cex4queue"]


def guest_queues(mount: Mount) -> list[str]:
    return sorted(set(os.listdir(mount.sys / "bus/ap/drivers/vfio_ap_matrix")) -
                  {"bind", "unbind"})


@pytest.mark.parametrize("queue", ["05.0004", "06.00ab", "05.00ff"])
def test_each_test_starts_from_the_configured_host(apfs_session_mount: Mount,
                                                   queue: str) -> None:
    """One mount for all three, reset between them: each finds no queue reserved yet."""
    assert guest_queues(apfs_session_mount) == []
    assert os.listdir(apfs_session_mount.root / PASSTHROUGH / "devices") == []
    reserve_for_guests(apfs_session_mount, queue)
    apfs_session_mount.write(f"{PASSTHROUGH}/create", GUEST1)
    assert guest_queues(apfs_session_mount) == [queue]


@pytest.mark.apfs_config(SMALL_HOST)
def test_a_host_of_our_own(apfs_mount: Mount) -> None:
    assert os.listdir(apfs_mount.sys / "devices/ap") == ["card03"]
    assert apfs_mount.read("sys/devices/ap/card03/type") == "CEX8P\n"
    assert apfs_mount.read("sys/devices/ap/card03/03.000a/online") == "1\n"


@pytest.mark.apfs_config(SMALL_HOST)
@pytest.mark.parametrize("run", [1, 2])
def test_a_session_host_of_our_own_is_reset_too(apfs_session_mount: Mount, run: int) -> None:
    assert apfs_session_mount.read("sys/bus/ap/bindings") == "1/1 (complete)\n"
    apfs_session_mount.write(f"{DRIVERS}/cex4queue/unbind", "03.000a\n")


def test_the_context_manager_with_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text(SMALL_HOST)
    with mounted(config, where=tmp_path) as mount:
        assert mount.read("sys/bus/ap/ap_domain") == "10\n"
        with pytest.raises(OSError) as refused:
            mount.write("sys/bus/ap/drivers/cex4queue/bind", "03.000a\n")
        assert refused.value.errno == errno.ENODEV
