"""Acceptance 3: malformed writes are refused with the spec's errno and change nothing.

One mount for the module, configured like the seed plus a deconfigured card 07, taken
through seed steps 1-4 (scripts/seed-workflow.sh) with Guest2 running.  Each case is one
shell line typed in one directory; bash must print the spec's errno text, the whole tree
(every readable file, link and directory) must be as before, and ``apfs/log`` must have
gained exactly one line naming the file and the errno.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conftest import Mount, Shell
from helpers import (
    LOG,
    SEED_WORKFLOW,
    Snapshot,
    assert_unchanged,
    lines,
    seed_vars,
    snapshot,
    writable_files,
    write_error,
)

from vdev.ap.host import DEFAULT_HOST_TOML

# The seed's host plus a deconfigured card 07, for the ENODEV cases of `online`.
HOST = DEFAULT_HOST_TOML + """
[[card]]
id = "07"
type = "CEX5C"
config = false
"""

BUS = "sys/bus/ap"
DRV = "sys/bus/ap/drivers"
CARD05 = "sys/devices/ap/card05"
CARD07 = "sys/devices/ap/card07"
HOST_QUEUE = "sys/devices/ap/card06/06.0047"  # still bound to cex4queue
GUEST_QUEUE = "sys/devices/ap/card05/05.0004"  # bound to vfio_ap_matrix, Guest1's
DECONFIGURED_QUEUE = "sys/devices/ap/card07/07.0004"
MDEV1 = "sys/devices/ap_matrix/matrix/$uuid1"  # Guest1: 05 06 x 0004 00ab
MDEV2 = "sys/devices/ap_matrix/matrix/$uuid2"  # Guest2: 05 x 0047 00ff, guest running
TYPE = "sys/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough"
GUESTS = "apfs/guests"
ZCRYPT = "apfs/zcrypt"

# 5000 bytes in one write() (tr's buffer is larger; bash's printf would write 4096 + 904).
FIVE_THOUSAND_Z = "head -c 5000 /dev/zero | tr '\\0' z"
FIVE_THOUSAND_5 = "head -c 5000 /dev/zero | tr '\\0' 5"


@dataclass(frozen=True)
class Case:
    where: str
    command: str
    errno: int

    @property
    def file(self) -> str:
        return self.command.rsplit("> ", 1)[1]

    def __str__(self) -> str:
        return f"{self.where.rsplit('/', 1)[-1]}: {self.command}"


REFUSALS = [
    # /sys/bus/ap attributes
    Case(BUS, "echo 0x1ff > ap_domain", errno.EINVAL),
    Case(BUS, "echo 256 > ap_domain", errno.EINVAL),
    Case(BUS, "echo -1 > ap_domain", errno.EINVAL),
    Case(BUS, "echo x > ap_domain", errno.EINVAL),
    Case(BUS, "echo > ap_domain", errno.EINVAL),
    Case(BUS, "echo '   ' > ap_domain", errno.EINVAL),
    Case(BUS, f"{FIVE_THOUSAND_Z} > ap_domain", errno.EINVAL),
    Case(BUS, "echo 4 > config_time", errno.EINVAL),
    Case(BUS, "echo 121 > config_time", errno.EINVAL),
    Case(BUS, "echo thirty > config_time", errno.EINVAL),
    Case(BUS, "echo 2 > poll_thread", errno.EINVAL),
    Case(BUS, "echo maybe > poll_thread", errno.EINVAL),
    Case(BUS, "echo ' 1' > poll_thread", errno.EINVAL),
    Case(BUS, "echo 120000000001 > poll_timeout", errno.EINVAL),
    Case(BUS, "echo -1 > poll_timeout", errno.EINVAL),
    Case(BUS, "echo '1 ' > poll_timeout", errno.EINVAL),
    Case(BUS, "echo 0x > poll_timeout", errno.EINVAL),
    Case(BUS, "echo 99999999999999999999 > poll_timeout", errno.ERANGE),
    Case(BUS, "echo 2 > drivers_autoprobe", errno.EINVAL),
    Case(BUS, "echo 09.0004 > drivers_probe", errno.ENODEV),
    Case(BUS, "echo bogus > uevent", errno.EINVAL),
    # driver bind/unbind: unknown devices, double binds, the wrong driver
    Case(f"{DRV}/cex4queue", "echo 09.0004 > bind", errno.ENODEV),
    Case(f"{DRV}/cex4queue", "echo 06.0047 > bind", errno.ENODEV),  # already bound here
    Case(f"{DRV}/cex4queue", "echo 05.0004 > bind", errno.ENODEV),  # bound to vfio_ap_matrix
    Case(f"{DRV}/cex4queue", "echo card05 > bind", errno.ENODEV),  # a card, not a queue
    Case(f"{DRV}/cex4queue", "echo 05.0004 > unbind", errno.ENODEV),  # not bound here
    Case(f"{DRV}/cex4queue", "echo ' 06.0047' > unbind", errno.ENODEV),
    Case(f"{DRV}/cex4queue", "echo 06.0047x > unbind", errno.ENODEV),
    Case(f"{DRV}/cex4queue", f"{FIVE_THOUSAND_Z} > unbind", errno.ENODEV),
    Case(f"{DRV}/vfio_ap_matrix", "echo 05.0004 > bind", errno.ENODEV),  # double bind
    Case(f"{DRV}/vfio_ap_matrix", "echo 06.0047 > bind", errno.ENODEV),  # bound to cex4queue
    Case(f"{DRV}/vfio_ap_matrix", "echo 05.0100 > bind", errno.ENODEV),
    Case(f"{DRV}/vfio_ap_matrix", "echo 06.0047 > unbind", errno.ENODEV),  # wrong driver
    Case(f"{DRV}/cex4card", "echo card05 > bind", errno.ENODEV),  # double bind
    Case(f"{DRV}/cex4card", "echo card09 > bind", errno.ENODEV),
    Case(f"{DRV}/cex4card", "echo 05.0004 > unbind", errno.ENODEV),
    Case(f"{DRV}/cex2acard", "echo card06 > unbind", errno.ENODEV),  # wrong driver
    # card and queue attributes
    Case(CARD05, "echo 2 > online", errno.EINVAL),
    Case(CARD05, "echo yes > online", errno.EINVAL),
    Case(CARD05, "echo 2 > config", errno.EINVAL),
    Case(CARD05, "echo > config", errno.EINVAL),
    Case(CARD07, "echo 1 > online", errno.ENODEV),  # deconfigured
    Case(HOST_QUEUE, "echo 2 > online", errno.EINVAL),
    Case(HOST_QUEUE, "echo x > online", errno.EINVAL),
    Case(DECONFIGURED_QUEUE, "echo 1 > online", errno.ENODEV),
    # mediated device assign/unassign
    Case(MDEV1, "echo g > assign_adapter", errno.EINVAL),
    Case(MDEV1, "echo 100 > assign_adapter", errno.ENODEV),
    Case(MDEV1, "echo 0x100 > assign_domain", errno.ENODEV),
    Case(MDEV1, "echo ' 5' > assign_adapter", errno.EINVAL),
    Case(MDEV1, "echo '5 ' > assign_adapter", errno.EINVAL),
    Case(MDEV1, "echo > assign_domain", errno.EINVAL),
    Case(MDEV1, "echo -5 > assign_domain", errno.EINVAL),
    Case(MDEV1, "echo 05.0004 > assign_adapter", errno.EINVAL),
    Case(MDEV1, "echo 10000000000000000 > assign_adapter", errno.ERANGE),
    Case(MDEV1, f"{FIVE_THOUSAND_Z} > assign_adapter", errno.EINVAL),
    Case(MDEV1, f"{FIVE_THOUSAND_5} > assign_domain", errno.ERANGE),
    Case(MDEV1, "echo 47 > assign_domain", errno.EADDRINUSE),  # 05.0047 is Guest2's
    Case(MDEV2, "echo 4 > assign_domain", errno.EADDRINUSE),  # 05.0004 is Guest1's
    Case(MDEV1, "echo zz > unassign_adapter", errno.EINVAL),
    Case(MDEV1, "echo 1ff > unassign_domain", errno.ENODEV),
    Case(MDEV1, "echo 100 > assign_control_domain", errno.ENODEV),
    Case(MDEV1, "echo x > unassign_control_domain", errno.EINVAL),
    Case(MDEV1, "echo junk > remove", errno.EINVAL),
    Case(MDEV1, "echo -1 > remove", errno.EINVAL),
    Case(MDEV1, "echo 1x > remove", errno.EINVAL),
    Case(MDEV2, "echo 1 > remove", errno.EBUSY),  # its guest runs
    # mdev creation
    Case(TYPE, "echo not-a-uuid > create", errno.EINVAL),
    Case(TYPE, "echo $uuid1 > create", errno.EEXIST),
    Case(TYPE, "echo ${uuid1^^} > create", errno.EEXIST),  # the same UUID in upper case
    Case(TYPE, "echo ${uuid1:1} > create", errno.EINVAL),  # 35 characters
    Case(TYPE, "echo ${uuid1/-/x} > create", errno.EINVAL),  # a dash replaced
    Case(TYPE, "echo g${uuid1:1} > create", errno.EINVAL),  # not hex
    Case(TYPE, 'echo " $uuid1" > create', errno.EINVAL),  # 38 bytes
    Case(TYPE, f"{FIVE_THOUSAND_Z} > create", errno.EINVAL),
    # guests (apfs's own control files)
    Case(GUESTS, "echo junk > start", errno.EINVAL),
    Case(GUESTS, "echo vfio_ap,sysfsdev=/sys/bus/mdev/devices/$uuid1 > start", errno.EINVAL),
    Case(GUESTS, "echo vfio_ap_matrix,host=/sys/bus/mdev/devices/$uuid1 > start", errno.EINVAL),
    Case(GUESTS, "echo sys/bus/mdev/devices/$uuid1 > start", errno.EINVAL),
    Case(GUESTS, "echo /sys/bus/mdev/devices/${uuid1/0/1}0 > start", errno.ENOENT),
    Case(GUESTS, "echo /sys/bus/ap > start", errno.ENODEV),
    Case(GUESTS, "echo /sys/bus/mdev/devices/$uuid2 > start", errno.EBUSY),  # already running
    Case(GUESTS, "echo /sys/bus/mdev/devices/$uuid1 > stop", errno.ENOENT),  # not running
    # host-side crypto requests
    Case(ZCRYPT, "echo 05.0004 0 > request", errno.EINVAL),
    Case(ZCRYPT, "echo 05.0004 1 soon > request", errno.EINVAL),
    Case(ZCRYPT, "echo 07.0004 > request", errno.ENODEV),
    Case(ZCRYPT, "echo 05.0004 > request", errno.ENODEV),  # passthrough (vfio_ap_matrix)
]

# Writes that sysfs accepts whatever they say and that change nothing visible here.
ACCEPTED_NO_CHANGE = [
    Case(CARD05, "echo junk > request_count", 0),  # zeroes counters; none counted yet
    Case(HOST_QUEUE, "echo junk > request_count", 0),
    Case(GUEST_QUEUE, "echo junk > request_count", 0),
    Case(GUEST_QUEUE, "echo junk > reset", 0),
    Case(HOST_QUEUE, f"{FIVE_THOUSAND_Z} > reset", 0),
    Case(MDEV1, "echo 0 > remove", 0),  # 0 = no-op
    Case(MDEV1, "echo 5 > assign_adapter", 0),  # already assigned
    Case(MDEV1, "echo 7 > unassign_adapter", 0),  # not assigned: clear_bit is silent
    Case(BUS, "echo 06.0047 > drivers_probe", 0),  # bound devices are left alone
    Case(BUS, "echo 'change extra args' > uevent", 0),
    Case(BUS, "echo 0x4 > ap_domain", 0),  # the current default domain
    Case(BUS, "echo 30 > config_time", 0),
]


@dataclass
class Shared:
    mount: Mount
    uuids: dict[str, str]
    state: Snapshot

    def expand(self, text: str) -> str:
        return text.replace("$uuid1", self.uuids["uuid1"]).replace("$uuid2", self.uuids["uuid2"])

    def type_line(self, case: Case) -> Shell:
        prefix = f"uuid1={self.uuids['uuid1']}; uuid2={self.uuids['uuid2']}"
        return self.mount.bash(f'{prefix}; cd "$MNT/{case.where}" || exit 99; {case.command}')

    def assert_refused(self, case: Case) -> Shell:
        """Type the case's line: bash reports its errno once, the tree is unchanged, and the
        log has one line naming the file and the errno.  Returns what bash printed."""
        log_before = lines(self.mount.log())
        result = self.type_line(case)
        assert result.returncode == 1, result
        assert f"{write_error(case.errno)}\n" in result.stderr, result.stderr
        assert result.stderr.count("write error: ") == 1, result.stderr
        self._assert_unchanged(case)
        new = lines(self.mount.log())[len(log_before):]
        assert len(new) == 1, new
        path = self.expand(f"{case.where}/{case.file}")
        assert f"{path}: write " in new[0]
        assert f"refused with {errno.errorcode[case.errno]} " in new[0]
        return result

    def assert_accepted_without_change(self, case: Case) -> None:
        log_before = self.mount.log()
        result = self.type_line(case)
        assert (result.returncode, result.stderr) == (0, ""), result
        self._assert_unchanged(case)
        assert self.mount.log() == log_before

    def _assert_unchanged(self, case: Case) -> None:
        after = snapshot(self.mount.root)
        before, self.state = self.state, after
        assert_unchanged(before, after, case.command)


@pytest.fixture(scope="module")
def shared(module_mount_factory: Callable[..., Mount]) -> Iterator[Shared]:
    mount = module_mount_factory(HOST)
    seed = mount.bash(f'bash "{SEED_WORKFLOW}" "$SYS"')
    assert seed.returncode == 0, seed.stderr
    uuids = seed_vars(seed.stdout)
    guest2 = mount.bash(f"echo vfio_ap_matrix,sysfsdev=/sys/bus/mdev/devices/{uuids['uuid2']}"
                        f' > "$MNT/apfs/guests/start"')
    assert guest2.returncode == 0, guest2
    yield Shared(mount, uuids, snapshot(mount.root))


@pytest.mark.parametrize("case", REFUSALS, ids=str)
def test_refused_with_errno_and_nothing_changes(shared: Shared, case: Case) -> None:
    shared.assert_refused(case)


@pytest.mark.parametrize("case", ACCEPTED_NO_CHANGE, ids=str)
def test_accepted_without_visible_change(shared: Shared, case: Case) -> None:
    shared.assert_accepted_without_change(case)


def test_empty_write_to_every_writable_file_succeeds_and_changes_nothing(
        shared: Shared) -> None:
    """`printf '' > attr`: an open with O_TRUNC and no write() at all; and a write(2) of 0
    bytes returns 0 without calling store() (spec: "A write of 0 bytes returns 0")."""
    files = writable_files(shared.mount.root)
    assert len(files) > 40, files
    script = "\n".join(f"printf '' > '{f}' || echo 'refused: {f}'" for f in files)
    result = shared.mount.bash(script)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    for relpath in files:
        fd = os.open(shared.mount.root / relpath, os.O_WRONLY)
        try:
            assert os.write(fd, b"") == 0
        finally:
            os.close(fd)
    after = snapshot(shared.mount.root)
    before, shared.state = shared.state, after
    assert_unchanged(before, after, "empty writes")
    assert LOG not in files
