"""Debian's mdevctl, unmodified, against the mount through ``apfs run``.

mdevctl hard-codes ``/sys`` and ``/etc/mdevctl.d``: ``apfs run --mount`` gives it the tree
over ``/sys`` and a private ``/etc/mdevctl.d`` that lives as long as its namespace, so each
test runs its mdevctl session as one ``apfs run``.  The host's ``/etc/mdevctl.d`` is compared
before and after every test.

Every test is written per flavor: the parent is ``matrix`` in both, the type, the files that
show a device's matrix and what makes an APQN assignable differ.  Assigned ids are written
with ``0x`` so that the same definition means the same ids under the seed's hexadecimal
parsing and upstream's base-0 parsing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Mount, Shell
from helpers import apfs_run, assert_unchanged, snapshot, tree_listing

from vdev.ap.host import DEFAULT_HOST_TOML

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(shutil.which("mdevctl") is None,
                       reason="mdevctl is not installed (scripts/setup.sh installs Debian's)"),
]

PARENT = "matrix"
U1 = "8a4cd1a4-ba38-4e1f-9bd4-14b5b8c0cb10"
U2 = "0fd9bd3a-6ed5-4a49-9ba5-2c0b0a8e4c21"
HOST_ETC = Path("/etc/mdevctl.d")


def _seed_apqns(mount: Mount, uuid: str) -> list[str]:
    """The ap_matrix flavor has no ``matrix`` file: adapters x domains."""
    device = mount.sys / "bus/mdev/devices" / uuid
    adapters = (device / "adapters").read_text().split()
    domains = (device / "domains").read_text().split()
    return [f"{a}.{d}" for a in adapters for d in domains]


def _upstream_apqns(mount: Mount, uuid: str) -> list[str]:
    return (mount.sys / "bus/mdev/devices" / uuid / "matrix").read_text().split()


@dataclass(frozen=True)
class Flavor:
    name: str
    config: str | None
    """The host's TOML; None: the embedded default (the seed's host)."""
    mdev_type: str
    apqns: Callable[[Mount, str], list[str]]
    """The APQNs of a device's matrix, read from the mount."""
    reserve: str
    """Shell lines run on the tree before devices are made: what makes APQNs 05.0004,
    05.00ab, 06.0047 assignable (upstream: out of the host's apmask/aqmask)."""


AP_MATRIX = Flavor("ap_matrix", None, "ap_matrix-passthrough", _seed_apqns, reserve="")
VFIO_AP = Flavor("vfio_ap", DEFAULT_HOST_TOML.replace("[host]", '[host]\nflavor = "vfio_ap"'),
                 "vfio_ap-passthrough", _upstream_apqns,
                 reserve="echo -0x5,-0x6 > bus/ap/apmask && echo -0x4,-0x47,-0xab > bus/ap/aqmask")
@pytest.fixture(params=[AP_MATRIX, VFIO_AP], ids=["ap_matrix", "vfio_ap"])
def flavor(request: pytest.FixtureRequest) -> Flavor:
    return request.param


@pytest.fixture
def tree(flavor: Flavor, mount_factory: Callable[[str | None], Mount]) -> Mount:
    mount = mount_factory(flavor.config)
    if flavor.reserve:
        reserved = mount.bash(flavor.reserve, cwd=mount.sys)
        assert reserved.returncode == 0, reserved.stderr
    return mount


@pytest.fixture(autouse=True)
def host_etc_untouched() -> Iterator[None]:
    before = tree_listing(HOST_ETC)
    yield
    assert tree_listing(HOST_ETC) == before, "a test wrote to the host's /etc/mdevctl.d"


def mdevctl_session(mount: Mount, script: str) -> Shell:
    """``script`` run by bash in one ``apfs run --mount`` namespace."""
    done = apfs_run("--mount", str(mount.root), "--", "bash", "-c", f"set -u\n{script}")
    return Shell(done.returncode, done.stdout, done.stderr)


def test_types_lists_the_parent_and_its_type(tree: Mount, flavor: Flavor) -> None:
    session = mdevctl_session(tree, f"""
        mdevctl types
        mdevctl start -u {U1} -p {PARENT} -t {flavor.mdev_type}
        mdevctl types --dumpjson
    """)
    assert session.returncode == 0, session.stderr
    text, dumped = session.stdout.split("\n\n", 1)
    assert text.splitlines() == [
        PARENT, f"  {flavor.mdev_type}", "    Available instances: 65536",
        "    Device API: vfio-ap", "    Name: VFIO AP Passthrough Device"]
    assert json.loads(dumped) == [{PARENT: [{flavor.mdev_type: {
        "available_instances": 65535, "device_api": "vfio-ap",
        "name": "VFIO AP Passthrough Device"}}]}]


def test_start_list_and_stop_a_device(tree: Mount, flavor: Flavor) -> None:
    session = mdevctl_session(tree, f"""
        mdevctl start -u {U1} -p {PARENT} -t {flavor.mdev_type}
        mdevctl list
        ls /sys/bus/mdev/devices
        mdevctl stop -u {U1}
        mdevctl list
        ls /sys/bus/mdev/devices | wc -l
    """)
    assert session.returncode == 0, session.stderr
    assert session.stdout.splitlines() == [
        f"{U1} {PARENT} {flavor.mdev_type} manual", "", U1, "", "0"]


def test_define_modify_then_start_applies_the_attributes(tree: Mount, flavor: Flavor) -> None:
    session = mdevctl_session(tree, f"""
        mdevctl define -u {U1} -p {PARENT} -t {flavor.mdev_type}
        mdevctl modify -u {U1} --addattr=assign_adapter --value=0x5
        mdevctl modify -u {U1} --addattr=assign_domain --value=0x4
        mdevctl modify -u {U1} --addattr=assign_domain --value=0xab
        mdevctl modify -u {U1} --addattr=assign_control_domain --value=0x47
        ls /etc/mdevctl.d/{PARENT}
        mdevctl list --defined --verbose
        mdevctl start -u {U1}
        mdevctl list --verbose
        mdevctl list --defined --dumpjson
    """)
    assert session.returncode == 0, session.stderr
    attrs = ['    @{0}: {"assign_adapter":"0x5"}', '    @{1}: {"assign_domain":"0x4"}',
             '    @{2}: {"assign_domain":"0xab"}', '    @{3}: {"assign_control_domain":"0x47"}']
    defined, active, dumped = session.stdout.split("\n\n", 2)
    assert defined.splitlines() == [
        U1, f"{U1} {PARENT} {flavor.mdev_type} manual", "  Attrs:", *attrs]
    assert active.splitlines() == [
        f"{U1} {PARENT} {flavor.mdev_type} manual (defined)", "  Attrs:", *attrs]
    assert json.loads(dumped) == [{PARENT: [{U1: {
        "mdev_type": flavor.mdev_type, "start": "manual",
        "attrs": [{"assign_adapter": "0x5"}, {"assign_domain": "0x4"},
                  {"assign_domain": "0xab"}, {"assign_control_domain": "0x47"}]}}]}]
    # What the kernel side holds, read from the host.
    assert flavor.apqns(tree, U1) == ["05.0004", "05.00ab"]
    assert tree.read(f"sys/bus/mdev/devices/{U1}/control_domains") == "0047\n"


def test_start_from_a_jsonfile(tree: Mount, flavor: Flavor, tmp_path: Path) -> None:
    definition = tmp_path / "guest.json"
    definition.write_text(json.dumps({
        "mdev_type": flavor.mdev_type, "start": "manual",
        "attrs": [{"assign_adapter": "0x6"}, {"assign_domain": "0x47"}]}))
    session = mdevctl_session(tree, f"""
        mdevctl start -u {U2} -p {PARENT} --jsonfile {definition}
        mdevctl start -p {PARENT} --jsonfile {definition} > /dev/null && echo "started twice"
        mdevctl list
    """)
    assert session.returncode == 0, session.stderr
    # The second device asks for the same APQN 06.0047: refused, removed again.
    assert session.stdout.splitlines() == [f"{U2} {PARENT} {flavor.mdev_type} manual", ""]
    assert "Address already in use" in session.stderr
    assert flavor.apqns(tree, U2) == ["06.0047"]


def test_a_conflicting_definition_fails_with_the_kernel_reason_and_leaves_nothing(
        tree: Mount, flavor: Flavor, tmp_path: Path) -> None:
    running = tmp_path / "running.json"
    running.write_text(json.dumps({
        "mdev_type": flavor.mdev_type, "start": "manual",
        "attrs": [{"assign_adapter": "0x5"}, {"assign_domain": "0x4"}]}))
    first = mdevctl_session(tree, f"mdevctl start -u {U1} -p {PARENT} --jsonfile {running}")
    assert first.returncode == 0, first.stderr
    before = snapshot(tree.root)

    session = mdevctl_session(tree, f"""
        mdevctl define -u {U2} -p {PARENT} -t {flavor.mdev_type}
        mdevctl modify -u {U2} --addattr=assign_adapter --value=0x5
        mdevctl modify -u {U2} --addattr=assign_domain --value=0x4
        mdevctl start -u {U2}
    """)
    assert session.returncode == 1
    assert session.stderr == ("Error: Failed to write 0x4 to attribute assign_domain\n\n"
                              "Caused by:\n    Address already in use (os error 98)\n")
    assert_unchanged(before, snapshot(tree.root), f"mdevctl start -u {U2}")
    refusal = [line for line in tree.log().splitlines() if "EADDRINUSE" in line]
    assert len(refusal) == 1
    assert f"{U2}/assign_domain: write '0x4' refused" in refusal[0]
    assert f"05.0004 to mdev: already assigned to {U1}" in refusal[0]
