"""Every refusal of spec/ap.md §3 on a ``vfio_ap`` mount: the errno, nothing changed, one line.

One mount for the module, taken through vfio-ap.rst's steps: apmask ``-0x5``, aqmask
``-4,-0xab``, mdev 1 with adapter 5 x domains 4, 0x47, 0xab (05.0047 is outside the host
masks because adapter 5 is), mdev 2 with adapter 6 x domains 4, 0xab and a guest running on
it, queue 06.00ff unbound.  The host allows three mdevs, so the third ``create`` is the last.
Each case is one shell line typed in one directory; bash must print the errno's text, the
whole tree must be as before and ``apfs/log`` must have gained one line naming the file.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

import pytest
from conftest import Mount
from helpers import snapshot, write_error
from test_refusals import Case, Shared

from vdev.ap import bitmap
from vdev.ap.host import DEFAULT_HOST_TOML

HOST = DEFAULT_HOST_TOML.replace("[host]", '[host]\nflavor = "vfio_ap"\nmdev_instances = 3')
BUS = "sys/bus/ap"
DRV = "sys/bus/ap/drivers"
TYPE = "sys/devices/vfio_ap/matrix/mdev_supported_types/vfio_ap-passthrough"
MDEV1 = "sys/devices/vfio_ap/matrix/$uuid1"
MDEV2 = "sys/devices/vfio_ap/matrix/$uuid2"
GUESTS = "apfs/guests"
ALL = "0x" + "f" * 64
THIRD = "00000000-0000-4000-8000-000000000003"


def mask(*ids: int) -> str:
    return bitmap.to_sysfs(bitmap.from_ids(ids))


SETUP = f"""
set -e
cd "$SYS/bus/ap"
echo -0x5 > apmask
echo -4,-0xab > aqmask
echo 06.00ff > drivers/cex4queue/unbind
cd "$SYS/devices/vfio_ap/matrix/mdev_supported_types/vfio_ap-passthrough"
uuid1=$(uuidgen) uuid2=$(uuidgen)
echo $uuid1 > create
echo $uuid2 > create
echo "uuid1=$uuid1"
echo "uuid2=$uuid2"
cd ../../$uuid1
echo 5 > assign_adapter
echo 4 > assign_domain
echo 0x47 > assign_domain
echo 171 > assign_domain
cd ../$uuid2
echo 6 > assign_adapter
echo 4 > assign_domain
echo 0xab > assign_domain
echo vfio-ap,sysfsdev=/sys/bus/mdev/devices/$uuid2 > "$MNT/apfs/guests/start"
echo {THIRD} > "$SYS/{TYPE.removeprefix("sys/")}/create"
"""

REFUSALS = [
    # apmask / aqmask: syntax, then APQNs an mdev holds going back to the host
    Case(BUS, "echo 0xg > apmask", errno.EINVAL),
    Case(BUS, f"echo {ALL}f > apmask", errno.EINVAL),  # 65 digits
    Case(BUS, "echo -256 > apmask", errno.EINVAL),
    Case(BUS, "echo -3-1 > aqmask", errno.EINVAL),
    Case(BUS, "echo '+5 ' > apmask", errno.EINVAL),
    Case(BUS, "echo +5x > aqmask", errno.EINVAL),
    Case(BUS, "echo +5 > apmask", errno.EBUSY),  # 05.0047 is mdev 1's
    Case(BUS, f"echo {ALL} > apmask", errno.EBUSY),
    Case(BUS, "echo +4 > aqmask", errno.EBUSY),  # 06.0004 is mdev 2's
    Case(BUS, "echo 4 > ap_domain", errno.EINVAL),  # not in aqmask
    # binds: already bound (>= 5.15), the masks' side, the wrong kind of device
    Case(f"{DRV}/vfio_ap", "echo 05.0004 > bind", errno.EBUSY),
    Case(f"{DRV}/vfio_ap", "echo 06.0047 > bind", errno.EBUSY),  # bound to cex4queue
    Case(f"{DRV}/cex4card", "echo card05 > bind", errno.EBUSY),
    Case(f"{DRV}/vfio_ap", "echo 06.00ff > bind", errno.ENODEV),  # inside the masks
    Case(f"{DRV}/vfio_ap", "echo card05 > bind", errno.ENODEV),
    Case(f"{DRV}/vfio_ap", "echo 09.0004 > bind", errno.ENODEV),
    Case(f"{DRV}/vfio_ap", "echo 06.0047 > unbind", errno.ENODEV),
    Case(f"{DRV}/cex4queue", "echo 05.0004 > unbind", errno.ENODEV),
    # assignments: kstrtoul(buf, 0), the maximum, the host masks, other mdevs
    Case(MDEV1, "echo ab > assign_adapter", errno.EINVAL),  # decimal by default
    Case(MDEV1, "echo ' 5' > assign_domain", errno.EINVAL),
    Case(MDEV1, "echo 0x > unassign_domain", errno.EINVAL),
    Case(MDEV1, "echo 99999999999999999999 > assign_domain", errno.ERANGE),
    Case(MDEV1, "echo 256 > assign_adapter", errno.ENODEV),
    Case(MDEV1, "echo 0x100 > unassign_adapter", errno.ENODEV),
    Case(MDEV1, "echo 0400 > assign_control_domain", errno.ENODEV),  # octal 256
    Case(MDEV1, "echo 256 > unassign_control_domain", errno.ENODEV),
    Case(MDEV2, "echo 0x47 > assign_domain", errno.EADDRNOTAVAIL),  # 06.0047 is the host's
    Case(MDEV1, "echo 6 > assign_adapter", errno.EADDRNOTAVAIL),  # 06.0047 again
    Case(MDEV2, "echo 5 > assign_adapter", errno.EADDRINUSE),  # 05.0004 is mdev 1's
    # ap_config: syntax, host masks, other mdevs (all or nothing)
    Case(MDEV1, f"printf {mask(5)},{mask(4)} > ap_config", errno.EINVAL),  # no newline
    Case(MDEV1, "echo 0x04,0x0g, > ap_config", errno.EINVAL),
    Case(MDEV1, "echo 0x04 > ap_config", errno.EINVAL),
    Case(MDEV1, f"echo {mask(5, 6)},{mask(0x47)}, > ap_config", errno.EADDRNOTAVAIL),
    Case(MDEV1, f"echo {mask(5, 6)},{mask(4)}, > ap_config", errno.EADDRINUSE),
    # the type and the devices
    Case(TYPE, "echo not-a-uuid > create", errno.EINVAL),
    Case(TYPE, "echo ${uuid1^^} > create", errno.EEXIST),
    Case(TYPE, "echo 00000000-0000-4000-8000-000000000004 > create", errno.EUSERS),
    Case(MDEV1, "echo one > remove", errno.EINVAL),
    Case(MDEV2, "echo 1 > remove", errno.EBUSY),  # its guest runs
    # guests take QEMU's upstream device name
    Case(GUESTS, "echo vfio_ap_matrix,sysfsdev=/sys/bus/mdev/devices/$uuid1 > start",
         errno.EINVAL),
    Case(GUESTS, "echo vfio-ap,sysfsdev=/sys/bus/mdev/devices/$uuid2 > start", errno.EBUSY),
]

ACCEPTED_NO_CHANGE = [
    Case(MDEV1, "echo 0 > remove", 0),
    Case(MDEV1, "echo 5 > assign_adapter", 0),  # already assigned: no checks
    Case(MDEV1, "echo 7 > unassign_adapter", 0),  # not assigned
    Case(MDEV1, "echo 0x47 > unassign_control_domain", 0),
    Case(BUS, "echo -5 > apmask", 0),  # already reserved
    Case(BUS, "echo +6 > apmask", 0),  # already the host's
    Case(BUS, "echo 06.0047 > drivers_probe", 0),
]


@pytest.fixture(scope="module")
def shared(module_mount_factory: Callable[..., Mount]) -> Iterator[Shared]:
    mount = module_mount_factory(HOST)
    setup = mount.bash(SETUP)
    assert setup.returncode == 0, setup.stderr
    uuids = dict(line.split("=", 1) for line in setup.stdout.splitlines())
    yield Shared(mount, uuids, snapshot(mount.root))


@pytest.mark.parametrize("case", REFUSALS, ids=str)
def test_refused_with_errno_and_nothing_changes(shared: Shared, case: Case) -> None:
    result = shared.assert_refused(case)
    assert result.stderr.endswith(f"{write_error(case.errno)}\n"), result.stderr


@pytest.mark.parametrize("case", ACCEPTED_NO_CHANGE, ids=str)
def test_accepted_without_visible_change(shared: Shared, case: Case) -> None:
    shared.assert_accepted_without_change(case)
