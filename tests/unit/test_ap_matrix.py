"""The ap_matrix flavor: the seed's commands, its two examples, exclusivity and guests."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.ap_shell import MATRIX, TYPE_DIR, Shell
from vdev.ap import ApBus, ApMatrix, HostConfig, MatrixMdev
from vdev.errors import DeviceError

AP = "/sys/bus/ap"
UUID1 = "6f5a8c8e-3c1b-4d7a-9d0e-1a2b3c4d5e6f"
UUID2 = "0b3e2e7c-8f4d-4a55-b7a3-9c8d7e6f5a4b"
SEED_QUEUES = ["05.0004", "05.00ab", "05.0047", "05.00ff", "06.0004", "06.00ab"]

TWO_ADAPTERS_THREE_DOMAINS = """
[host]
domains = ["05", "06", "07"]
[[card]]
id = "01"
type = "CEX5C"
[[card]]
id = "02"
type = "CEX5C"
"""


def refused(errno_value: int, fn, *args) -> DeviceError:
    with pytest.raises(DeviceError) as info:
        fn(*args)
    assert info.value.errno == errno_value, info.value
    return info.value


def reserve(sh: Shell, queues: list[str]) -> None:
    """Seed steps 1 and 2: take the queues from cex4queue and give them to vfio_ap_matrix."""
    for queue in queues:
        sh.echo(queue, f"{AP}/drivers/cex4queue/unbind")
        sh.echo(queue, f"{AP}/drivers/vfio_ap_matrix/bind")


def configure(sh: Shell, uuid: str, adapters: list[str], domains: list[str]) -> None:
    for adapter in adapters:
        sh.echo(adapter, f"{MATRIX}/{uuid}/assign_adapter")
    for domain in domains:
        sh.echo(domain, f"{MATRIX}/{uuid}/assign_domain")


def test_mdev_type_attributes() -> None:
    sh = Shell()
    assert sh.cat(f"{TYPE_DIR}/name") == "VFIO AP Passthrough Device\n"
    assert sh.cat(f"{TYPE_DIR}/device_api") == "vfio-ap\n"
    assert sh.cat(f"{TYPE_DIR}/available_instances") == "65536\n"
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    assert sh.cat(f"{TYPE_DIR}/available_instances") == "65535\n"


def test_seed_two_guest_example() -> None:
    sh = Shell()
    reserve(sh, SEED_QUEUES)
    assert sorted(sh.bus.drivers["cex4queue"].devices) == ["06.0047", "06.00ff"]
    sh.echo(UUID1, f"{TYPE_DIR}/create")  # uuidgen > create
    sh.echo(UUID2, f"{TYPE_DIR}/create")
    assert list(sh.matrix.mdevs) == [UUID1, UUID2]

    configure(sh, UUID1, ["5", "6"], ["4", "ab"])
    configure(sh, UUID2, ["5"], ["47", "ff"])
    assert sh.cat(f"{MATRIX}/{UUID1}/adapters") == "05\n06\n"
    assert sh.cat(f"{MATRIX}/{UUID1}/domains") == "0004\n00ab\n"
    assert sh.cat(f"{MATRIX}/{UUID2}/domains") == "0047\n00ff\n"
    assert sh.cat(f"{MATRIX}/{UUID1}/control_domains") == ""
    assert sh.cat("/sys/devices/ap/card05/05.0004/status") == "assigned\n"

    guest1 = sh.matrix.start_guest(UUID1)
    guest2 = sh.matrix.start_guest(UUID2)
    assert guest1.show_apqns() == "05.0004\n05.00ab\n06.0004\n06.00ab\n"
    assert guest2.show_apqns() == "05.0047\n05.00ff\n"
    assert guest1.show_lszcrypt() == (
        "CARD.DOMAIN TYPE  MODE\n"
        "------------------------------\n"
        "05          CEX5C CCA-Coproc\n"
        "05.0004     CEX5C CCA-Coproc\n"
        "05.00ab     CEX5C CCA-Coproc\n"
        "06          CEX5A Accelerator\n"
        "06.0004     CEX5A Accelerator\n"
        "06.00ab     CEX5A Accelerator\n"
    )
    assert guest2.show_lszcrypt().splitlines()[2:] == [
        "05          CEX5C CCA-Coproc",
        "05.0047     CEX5C CCA-Coproc",
        "05.00ff     CEX5C CCA-Coproc",
    ]
    # By architectural convention the usage domains are control domains of the guest too.
    assert guest1.show_crycb() == (
        "apm 0x06" + "0" * 62 + "\n"
        "aqm 0x08" + "0" * 40 + "1" + "0" * 21 + "\n"
        "adm 0x08" + "0" * 40 + "1" + "0" * 21 + "\n"
    )
    for queue in SEED_QUEUES:
        assert sh.cat(f"/sys/devices/ap/card{queue[:2]}/{queue}/status") == "in use\n"


def test_example_1_valid_configuration() -> None:
    sh = Shell(TWO_ADAPTERS_THREE_DOMAINS)
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    sh.echo(UUID2, f"{TYPE_DIR}/create")
    configure(sh, UUID1, ["1", "2"], ["5", "6"])
    configure(sh, UUID2, ["1", "2"], ["7"])
    assert sh.cat(f"{MATRIX}/{UUID2}/adapters") == "01\n02\n"


def test_example_2_invalid_configuration_adapter_first() -> None:
    sh = Shell(TWO_ADAPTERS_THREE_DOMAINS)
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    sh.echo(UUID2, f"{TYPE_DIR}/create")
    configure(sh, UUID1, ["1", "2"], ["5", "6"])
    sh.echo("1", f"{MATRIX}/{UUID2}/assign_adapter")
    err = refused(errno.EADDRINUSE, sh.echo, "6", f"{MATRIX}/{UUID2}/assign_domain")
    assert err.message == (f"assign_domain: Userspace may not assign queue 01.0006 to mdev: "
                           f"already assigned to {UUID1}")
    assert sh.cat(f"{MATRIX}/{UUID2}/domains") == ""
    sh.echo("7", f"{MATRIX}/{UUID2}/assign_domain")
    assert sh.cat(f"{MATRIX}/{UUID2}/domains") == "0007\n"


def test_example_2_invalid_configuration_domains_first() -> None:
    sh = Shell(TWO_ADAPTERS_THREE_DOMAINS)
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    sh.echo(UUID2, f"{TYPE_DIR}/create")
    configure(sh, UUID1, ["1", "2"], ["5", "6"])
    configure(sh, UUID2, [], ["6", "7"])
    err = refused(errno.EADDRINUSE, sh.echo, "1", f"{MATRIX}/{UUID2}/assign_adapter")
    assert "queue 01.0006" in err.message
    assert sh.cat(f"{MATRIX}/{UUID2}/adapters") == ""
    # Once Guest1 gives up domain 6, Guest2 may have adapter 1.
    sh.echo("6", f"{MATRIX}/{UUID1}/unassign_domain")
    sh.echo("1", f"{MATRIX}/{UUID2}/assign_adapter")


def test_control_domains_are_not_exclusive() -> None:
    sh = Shell()
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    sh.echo(UUID2, f"{TYPE_DIR}/create")
    for uuid in (UUID1, UUID2):
        sh.echo("4", f"{MATRIX}/{uuid}/assign_control_domain")
        sh.echo("25", f"{MATRIX}/{uuid}/assign_control_domain")
    assert sh.cat(f"{MATRIX}/{UUID2}/control_domains") == "0004\n0025\n"
    sh.echo("4", f"{MATRIX}/{UUID2}/unassign_control_domain")
    assert sh.cat(f"{MATRIX}/{UUID2}/control_domains") == "0025\n"


def test_assign_parses_hex_ids() -> None:
    sh = Shell()
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    mdev = f"{MATRIX}/{UUID1}"
    for value in ("47", "0x4", "AB", "+ff", "0X0"):
        sh.echo(value, f"{mdev}/assign_domain")
    sh.write("10", f"{mdev}/assign_domain")  # no newline, like mdevctl
    assert sh.cat(f"{mdev}/domains") == "0000\n0004\n0010\n0047\n00ab\n00ff\n"
    err = refused(errno.ENODEV, sh.echo, "100", f"{mdev}/assign_domain")
    assert err.message == "assign_domain: 0x100 is above the maximum domain id 0xff"
    err = refused(errno.ENODEV, sh.echo, "1ff", f"{mdev}/assign_adapter")
    assert err.message == "assign_adapter: 0x1ff is above the maximum adapter id 0xff"
    refused(errno.ENODEV, sh.echo, "100", f"{mdev}/assign_control_domain")
    for bad in ("", "g", "-1", "4 ", "0x", "4\n"):
        refused(errno.EINVAL, sh.echo, bad, f"{mdev}/assign_domain")
    refused(errno.ERANGE, sh.echo, "1" * 17, f"{mdev}/assign_domain")
    assert sh.cat(f"{mdev}/domains") == "0000\n0004\n0010\n0047\n00ab\n00ff\n"


def test_assign_and_unassign_are_idempotent() -> None:
    sh = Shell()
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    mdev = f"{MATRIX}/{UUID1}"
    sh.echo("5", f"{mdev}/unassign_adapter")
    sh.echo("5", f"{mdev}/assign_adapter")
    sh.echo("5", f"{mdev}/assign_adapter")
    assert sh.cat(f"{mdev}/adapters") == "05\n"
    sh.echo("5", f"{mdev}/unassign_adapter")
    sh.echo("5", f"{mdev}/unassign_adapter")
    assert sh.cat(f"{mdev}/adapters") == ""
    refused(errno.ENODEV, sh.echo, "100", f"{mdev}/unassign_adapter")


def test_create_refusals() -> None:
    sh = Shell(max_instances=2)
    create = f"{TYPE_DIR}/create"
    sh.write(UUID1.upper(), create)  # uuidgen output may be upper-case; no newline is fine
    assert list(sh.matrix.mdevs) == [UUID1]
    err = refused(errno.EEXIST, sh.echo, UUID1, create)
    assert err.message == f"create: mdev {UUID1} already exists"
    for bad in ("", "not-a-uuid", UUID2[:-1], UUID2.replace("-", "_"), UUID2 + "\n\n",
                "g" + UUID2[1:]):
        refused(errno.EINVAL, sh.write, bad, create)
    sh.write(UUID2 + "x", create)  # the kernel never looks at the 37th byte
    err = refused(errno.EUSERS, sh.echo, "1" + UUID2[1:], create)
    assert "no instances left" in err.message
    assert sh.cat(f"{TYPE_DIR}/available_instances") == "0\n"


def test_create_accepts_any_37th_byte() -> None:
    # The FUSE layer hands over one character per byte written (latin-1): a stray 0xff after
    # the UUID is one byte, which uuid_parse never looks at.
    sh = Shell()
    sh.write(UUID1 + "\xff", f"{TYPE_DIR}/create")
    assert list(sh.matrix.mdevs) == [UUID1]


def test_remove_frees_the_apqns() -> None:
    sh = Shell()
    reserve(sh, ["05.0004"])
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    configure(sh, UUID1, ["5"], ["4"])
    refused(errno.EINVAL, sh.echo, "yes", f"{MATRIX}/{UUID1}/remove")
    refused(errno.EINVAL, sh.echo, "99999999999999999999", f"{MATRIX}/{UUID1}/remove")
    sh.echo("0", f"{MATRIX}/{UUID1}/remove")
    assert UUID1 in sh.matrix.mdevs
    mdev = sh.matrix.mdevs[UUID1]
    sh.echo("1", f"{MATRIX}/{UUID1}/remove")
    assert sh.matrix.mdevs == {}
    assert sh.cat("/sys/devices/ap/card05/05.0004/status") == "unassigned\n"
    err = refused(errno.ENODEV, mdev.store_assign_domain, "47\n")  # a file left open
    assert err.message == f"assign_domain: mdev {UUID1} has been removed"
    sh.echo(UUID2, f"{TYPE_DIR}/create")
    configure(sh, UUID2, ["5"], ["4"])


def test_guest_lifecycle_and_queue_status() -> None:
    sh = Shell()
    reserve(sh, ["05.0004", "05.0047"])
    status = "/sys/devices/ap/card05/05.0004/status"
    assert sh.cat(status) == "unassigned\n"
    sh.echo(UUID1, f"{TYPE_DIR}/create")
    configure(sh, UUID1, ["5", "6", "7"], ["4", "47"])
    sh.echo("25", f"{MATRIX}/{UUID1}/assign_control_domain")
    assert sh.cat(status) == "assigned\n"
    guest = sh.matrix.start_guest(UUID1.upper())
    # 05.00ab and friends are not bound to vfio_ap_matrix; adapters 06/07 have no reserved
    # queues (07 does not even exist), so the guest sees only two queues.
    assert guest.show_apqns() == "05.0004\n05.0047\n"
    assert guest.show_lszcrypt().count("\n") == 5
    assert guest.adm == (1 << 4) | (1 << 0x47) | (1 << 0x25)
    assert sh.cat(status) == "in use\n"
    refused(errno.EBUSY, sh.matrix.start_guest, UUID1)
    refused(errno.EBUSY, sh.echo, "1", f"{MATRIX}/{UUID1}/remove")
    # No hot plug: changes wait for the next start.
    sh.echo("47", f"{MATRIX}/{UUID1}/unassign_domain")
    assert sh.cat("/sys/devices/ap/card05/05.0047/status") == "in use\n"
    assert sh.matrix.guests[UUID1] is guest
    # Another mdev may now claim 05.0047, but its guest cannot start while Guest1 runs.
    sh.echo(UUID2, f"{TYPE_DIR}/create")
    configure(sh, UUID2, ["5"], ["47"])
    err = refused(errno.EBUSY, sh.matrix.start_guest, UUID2)
    assert "05.0047" in err.message and UUID1 in err.message
    sh.matrix.stop_guest(UUID1)
    refused(errno.ENOENT, sh.matrix.stop_guest, UUID1)
    refused(errno.ENOENT, sh.matrix.start_guest, "00000000-0000-0000-0000-000000000000")
    assert sh.cat(status) == "assigned\n"
    assert sh.matrix.start_guest(UUID2).show_apqns() == "05.0047\n"
    assert sh.matrix.start_guest(UUID1).show_apqns() == "05.0004\n"


def test_scale_256_by_256_and_2000_mdevs() -> None:
    bus = ApBus(HostConfig.grid(256, 256))
    matrix = ApMatrix(bus)
    for i in range(2000):
        mdev = matrix.create(f"{i:08x}-0000-4000-8000-000000000000\n")
        mdev.store_assign_adapter(f"{i % 256:x}\n")
        mdev.store_assign_domain(f"{i // 256:x}\n")
        mdev.store_assign_control_domain("ff\n")
    last = matrix.mdevs["000007cf-0000-4000-8000-000000000000"]
    refused(errno.EADDRINUSE, last.store_assign_domain, "0\n")
    bus.unbind("cex4queue", "cf.0007\n")
    bus.bind("vfio_ap_matrix", "cf.0007\n")
    assert bus.devices["cf.0007"].show_status() == "assigned\n"
    assert matrix.show_available_instances() == f"{65536 - 2000}\n"
    # One mdev owning the whole free part of the matrix: 256 x 248 APQNs.
    big = matrix.create("ffffffff-0000-4000-8000-000000000000")
    for domain in range(8, 256):
        big.store_assign_domain(f"{domain:x}")
    for adapter in range(256):
        big.store_assign_adapter(f"{adapter:x}")
    assert len(big.show_domains().splitlines()) == 248
    big.store_remove("1")
    # Its APQNs are free again; the 2000 small mdevs still hold theirs.
    probe = matrix.create("eeeeeeee-0000-4000-8000-000000000000")
    probe.store_assign_adapter("0")
    probe.store_assign_domain("8")
    err = refused(errno.EADDRINUSE, probe.store_assign_domain, "0")
    assert "00000000-0000-4000-8000-000000000000" in err.message


# -- property: exclusivity and "error means nothing happened" ---------------------------------

UUIDS = [f"{i:08x}-aaaa-4bbb-8ccc-dddddddddddd" for i in range(4)]
OPS = ("assign_adapter", "unassign_adapter", "assign_domain", "unassign_domain",
       "assign_control_domain", "unassign_control_domain")
operation = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("remove"), st.integers(0, 3), st.sampled_from([0, 1])),
    st.tuples(st.sampled_from(OPS), st.integers(0, 3), st.integers(0, 4)),
    st.tuples(st.sampled_from(OPS), st.integers(0, 3), st.just(0x100)),
)


def observe(matrix: ApMatrix) -> tuple:
    """Everything a user can read: mdev files, instances left, status of every queue."""
    files = {uuid: (m.show_adapters(), m.show_domains(), m.show_control_domains())
             for uuid, m in matrix.mdevs.items()}
    status = [q.show_status() for q in matrix.bus.passthrough.devices.values()]
    return files, matrix.show_available_instances(), status


def apqn_sets(mdevs: dict[str, MatrixMdev]) -> dict[str, set[tuple[int, int]]]:
    return {uuid: set(m.apqns()) for uuid, m in mdevs.items()}


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_random_operations_keep_apqns_exclusive(ops: list[tuple[str, int, int]]) -> None:
    bus = ApBus(HostConfig.grid(4, 4))
    for queue in list(bus.drivers["cex4queue"].devices):
        bus.unbind("cex4queue", queue)
        bus.bind("vfio_ap_matrix", queue)
    matrix = ApMatrix(bus, max_instances=3)
    for op, index, value in ops:
        uuid = UUIDS[index]
        before = observe(matrix)
        try:
            if op == "create":
                matrix.create(uuid)
            elif uuid not in matrix.mdevs:
                continue
            elif op == "remove":
                matrix.mdevs[uuid].store_remove(f"{value}\n")
            else:
                getattr(matrix.mdevs[uuid], f"store_{op}")(f"{value:x}\n")
        except DeviceError:
            assert observe(matrix) == before
        claimed = apqn_sets(matrix.mdevs)
        seen: set[tuple[int, int]] = set()
        for apqns in claimed.values():
            assert not apqns & seen
            seen |= apqns
        assert set(matrix._owner) == seen
