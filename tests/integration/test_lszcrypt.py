"""scripts/lszcrypt against s390-tools' lszcrypt, on real mounts.

The recordings in tests/data/lszcrypt were made by the real lszcrypt over the same trees
(scripts/capture-lszcrypt); scripts/lszcrypt must print the same bytes, warnings and exit
status.  With LSZCRYPT_REAL / CHZCRYPT_REAL naming s390-tools binaries, the comparison also
runs live and the real chzcrypt drives the tree.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import GUEST1_APQNS, GUEST2_APQNS, SEED_WORKFLOW, seed_vars
from lszcrypt_cases import SCRIPT, Case, Host, Result, load, load_hosts, run_lszcrypt, run_setup

pytestmark = pytest.mark.mount



def params(hosts: list[Host]) -> list:
    """(host, case) pairs, one test each."""
    return [pytest.param(host, case, id=f"{host.name}:{case.command_line or '(no args)'}")
            for host in hosts for case in host.cases]


HOSTS = load_hosts()
BY_NAME = {host.name: host for host in HOSTS}
CASES = params(HOSTS)
SCRIPT_CMD = [sys.executable, str(SCRIPT)]
LSZCRYPT_REAL = os.environ.get("LSZCRYPT_REAL")
CHZCRYPT_REAL = os.environ.get("CHZCRYPT_REAL")


@pytest.fixture(scope="module")
def host_sys(module_mount_factory: Callable) -> Iterator[Callable[[Host], Path]]:
    """Each host of cases.toml mounted once for the module, its setup lines run: MOUNT/sys."""
    mounted: dict[str, Path] = {}

    def get(host: Host) -> Path:
        if host.name not in mounted:
            mount = module_mount_factory(host.config_text)
            run_setup(host, mount.root)
            mounted[host.name] = mount.sys
        return mounted[host.name]

    yield get


def lszcrypt(sys_root: Path, *args: str) -> Result:
    return run_lszcrypt(SCRIPT_CMD, list(args), sys_root)


def assert_same(got: Result, expected: Result) -> None:
    assert got.stderr == expected.stderr
    assert got.status == expected.status
    # Compared as text so a failure shows a readable diff.
    assert got.stdout.decode("latin-1") == expected.stdout.decode("latin-1")


@pytest.mark.parametrize(("host", "case"), CASES)
def test_script_prints_what_s390_tools_lszcrypt_printed(host_sys: Callable, host: Host,
                                                        case: Case) -> None:
    assert_same(lszcrypt(host_sys(host), *case.args), load(host, case))


@pytest.mark.skipif(not LSZCRYPT_REAL, reason="LSZCRYPT_REAL is not set: set it to an "
                    "s390-tools lszcrypt binary to compare against the real tool live")
@pytest.mark.parametrize(("host", "case"), CASES)
def test_script_prints_what_s390_tools_lszcrypt_prints_live(host_sys: Callable, host: Host,
                                                            case: Case) -> None:
    sys_root = host_sys(host)
    assert_same(lszcrypt(sys_root, *case.args),
                run_lszcrypt([str(LSZCRYPT_REAL)], case.args, sys_root))


# --- --guest ---------------------------------------------------------------------------------


def queue_rows(listing: bytes) -> list[str]:
    """The APQNs (``05.0004``) of a listing's queue rows."""
    return [line.split()[0] for line in listing.decode().splitlines()[2:] if "." in line[:8]]


def test_guests_of_the_seed_workflow_print_the_seed_guests_listings(mount) -> None:
    """After the seed's steps 1-4, lszcrypt --guest prints, byte for byte, what the real
    lszcrypt printed on a host shaped like each guest (guest1.toml, guest2.toml)."""
    done = mount.bash(f'bash "{SEED_WORKFLOW}" "$SYS"')
    assert done.returncode == 0, done.stderr
    uuids = seed_vars(done.stdout)
    for uuid, host, apqns in ((uuids["uuid1"], BY_NAME["guest1"], GUEST1_APQNS),
                              (uuids["uuid2"], BY_NAME["guest2"], GUEST2_APQNS)):
        assert queue_rows(lszcrypt(mount.sys, "--guest", uuid).stdout) == apqns
        for case in host.cases:
            assert_same(lszcrypt(mount.sys, "--guest", uuid, *case.args), load(host, case))


def test_guest_view_is_what_a_started_guest_gets(mount) -> None:
    """--guest agrees with apfs's own model of a started guest (apfs/guests/<uuid>/apqns),
    also when the mdev's matrix holds queues that are not bound to vfio_ap_matrix."""
    script = """
        set -e
        echo 05.0004 > "$SYS/bus/ap/drivers/cex4queue/unbind"
        echo 05.0004 > "$SYS/bus/ap/drivers/vfio_ap_matrix/bind"
        echo 06.0004 > "$SYS/bus/ap/drivers/cex4queue/unbind"
        echo 06.0004 > "$SYS/bus/ap/drivers/vfio_ap_matrix/bind"
        cd "$SYS/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough"
        uuid=$(uuidgen); echo "$uuid" > create
        cd "devices/$uuid"
        echo 5 > assign_adapter; echo 6 > assign_adapter
        echo 4 > assign_domain; echo 47 > assign_domain
        echo "vfio_ap_matrix,sysfsdev=/sys/bus/mdev/devices/$uuid" > "$MNT/apfs/guests/start"
        echo "$uuid"
    """
    done = mount.bash(script)
    assert done.returncode == 0, done.stderr
    uuid = done.stdout.split()[-1]
    started = mount.read(f"apfs/guests/{uuid}/apqns").split()
    assert started == ["05.0004", "06.0004"]
    assert queue_rows(lszcrypt(mount.sys, "--guest", uuid).stdout) == started
    domains = lszcrypt(mount.sys, "--guest", uuid, "-d").stdout.decode().splitlines()
    # Row 00 (domains 0x00-0x0f) shows 04 as usage+control; row 40 shows 0x47 too.
    assert domains[2] == "    00  .  .  .  .  B" + "  ." * 11
    assert domains[6] == "    40  .  .  .  .  .  .  .  B" + "  ." * 8


def test_guest_in_the_vfio_ap_flavor_follows_guest_matrix(host_sys: Callable) -> None:
    """Upstream's mdev has guest_matrix: --guest lists its APQNs and the mdev's control
    domains, as the real lszcrypt did on a host shaped like that guest (vfio-guest.toml)."""
    sys_root = host_sys(BY_NAME["vfio"])
    uuid = "6d1f4a2e-3b5c-4d7e-8f90-a1b2c3d4e5f6"
    matrix = (sys_root / f"devices/vfio_ap/matrix/{uuid}/guest_matrix").read_text().split()
    assert matrix == ["05.0004", "05.00ab"]
    guest = BY_NAME["vfio-guest"]
    for case in guest.cases:
        assert_same(lszcrypt(sys_root, "--guest", uuid, *case.args), load(guest, case))


def test_guest_of_an_unknown_mdev_is_refused(mount) -> None:
    uuid = "0b4d5a2c-ffff-4e3b-9a3b-3f0d4c1e2a10"
    got = lszcrypt(mount.sys, "--guest", uuid)
    assert (got.status, got.stderr, got.stdout) == (
        1, f"lszcrypt: Error - mediated device {uuid} does not exist.\n", b"")


# --- the real chzcrypt ---------------------------------------------------------------------


@pytest.mark.skipif(not CHZCRYPT_REAL, reason="CHZCRYPT_REAL is not set: set it to an "
                    "s390-tools chzcrypt binary to drive the tree with the real tool")
def test_real_chzcrypt_changes_read_back(mount) -> None:
    """Each chzcrypt command through SYSFS_ROOT reads back with cat and with lszcrypt;
    refused values exit 1 and change nothing."""
    steps = [
        ("-d 05", "sys/devices/ap/card05/online", "0\n"),
        ("-e 05", "sys/devices/ap/card05/online", "1\n"),
        ("-d 06.0047", "sys/devices/ap/card06/06.0047/online", "0\n"),
        ("--config-off 06", "sys/devices/ap/card06/config", "0\n"),
        ("--config-on 06", "sys/devices/ap/card06/config", "1\n"),
        ("-e 06.0047", "sys/devices/ap/card06/06.0047/online", "1\n"),
        ("-p", "sys/bus/ap/poll_thread", "1\n"),
        ("-n", "sys/bus/ap/poll_thread", "0\n"),
        ("-c 60", "sys/bus/ap/config_time", "60\n"),
        ("-t 1000000", "sys/bus/ap/poll_timeout", "1000000\n"),
        ("-q 0xab", "sys/bus/ap/ap_domain", "171\n"),
        ("-d -a", "sys/devices/ap/card06/online", "0\n"),
        ("-e -a", "sys/devices/ap/card06/online", "1\n"),
    ]
    for args, path, value in steps:
        done = mount.bash(f'SYSFS_ROOT="$SYS" "{CHZCRYPT_REAL}" {args}')
        assert done.returncode == 0, (args, done.stderr)
        assert mount.read(path) == value, args
    bus = lszcrypt(mount.sys, "-b").stdout.decode()
    assert "ap_domain=0xab\n" in bus
    assert "config_time=60 (seconds)\npoll_thread is disabled\n" in bus
    assert "poll_timeout=1000000 (nanoseconds)\n" in bus
    for args, path, value in (("-c 200", "sys/bus/ap/config_time", "60\n"),
                              ("-t 200000000000", "sys/bus/ap/poll_timeout", "1000000\n"),
                              ("-q 47", "sys/bus/ap/ap_domain", "171\n")):
        done = mount.bash(f'SYSFS_ROOT="$SYS" "{CHZCRYPT_REAL}" {args}')
        assert done.returncode == 1, args
        assert "unable to change" in done.stderr, (args, done.stderr)
        assert mount.read(path) == value, args
    done = mount.bash(f'SYSFS_ROOT="$SYS" "{CHZCRYPT_REAL}" --config-off 06')
    assert done.returncode == 0, done.stderr
    listing = lszcrypt(mount.sys, "06").stdout.decode().splitlines()
    assert listing[2] == "06       CEX5A Accelerator deconfig          -"
