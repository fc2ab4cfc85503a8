"""Model state export/restore and reset: round trips reproduce the tree, bad states are refused."""

from __future__ import annotations

import copy
import errno
import json
import random
from typing import Any

import pytest

from apfs.host import Host, ap_only, load_config
from tests.integration.helpers import apply_in_process, differences, model_snapshot
from tests.integration.workload import MATRIX, TYPE_DIR, UUIDS, model_write, random_write
from vdev.errors import DeviceError

SEED_SETUP = [
    ("sys/bus/ap/drivers/cex4queue/unbind", b"05.0004\n"),
    ("sys/bus/ap/drivers/vfio_ap_matrix/bind", b"05.0004\n"),
    ("sys/bus/ap/drivers/cex4queue/unbind", b"06.00ab\n"),
    ("sys/bus/ap/drivers/cex4card/unbind", b"card06\n"),
    (f"{TYPE_DIR}/create", f"{UUIDS[1]}\n".encode()),
    (f"{TYPE_DIR}/create", f"{UUIDS[0]}\n".encode()),
    (f"{MATRIX}/{UUIDS[1]}/assign_adapter", b"5\n"),
    (f"{MATRIX}/{UUIDS[1]}/assign_domain", b"ab\n"),
    (f"{MATRIX}/{UUIDS[1]}/assign_domain", b"4\n"),
    (f"{MATRIX}/{UUIDS[1]}/assign_control_domain", b"47\n"),
    (f"{MATRIX}/{UUIDS[0]}/assign_domain", b"47\n"),
    ("sys/devices/ap/card05/online", b"0\n"),
    ("sys/devices/ap/card05/config", b"0\n"),
    ("sys/bus/ap/ap_domain", b"0x47\n"),
    ("sys/bus/ap/config_time", b"60\n"),
    ("sys/bus/ap/poll_thread", b"1\n"),
    ("sys/bus/ap/poll_timeout", b"1000\n"),
    ("sys/bus/ap/scans", b"1\n"),
    ("sys/bus/ap/drivers_autoprobe", b"0\n"),
]


def fresh() -> Host:
    return Host(ap_only(load_config(None)))


def seeded() -> Host:
    host = fresh()
    for path, data in SEED_SETUP:
        apply_in_process(host, path, data)
    return host


def through_json(state: dict[str, Any]) -> Any:
    return json.loads(json.dumps(state))


def test_a_fresh_host_exports_only_its_settings() -> None:
    state = fresh().export_state()
    assert state["bus"]["cards"] == {} and state["bus"]["queues"] == {}
    assert state["matrix"] == {"mdevs": []}
    assert state["bus"]["ap_domain"] == 4 and state["bus"]["scans"] == 1


def test_export_lists_changed_devices_and_mdevs_in_creation_order() -> None:
    state = seeded().export_state()
    assert set(state["bus"]["queues"]) == {"05.0004", "06.00ab", "05.0047", "05.00ab",
                                          "05.00ff"}
    assert state["bus"]["queues"]["05.0004"]["driver"] == "vfio_ap_matrix"
    assert state["bus"]["queues"]["06.00ab"]["driver"] == ""
    assert state["bus"]["cards"]["card05"] == {"driver": "cex4card", "config": False,
                                               "online": False, "request_count": 0}
    assert [m["uuid"] for m in state["matrix"]["mdevs"]] == [UUIDS[1], UUIDS[0]]
    assert state["matrix"]["mdevs"][0] == {"uuid": UUIDS[1], "adapters": [5],
                                           "domains": [4, 0xAB], "control_domains": [0x47]}


def test_round_trip_reproduces_the_tree() -> None:
    source = seeded()
    target = fresh()
    target.restore_state(through_json(source.export_state()))
    assert not differences(model_snapshot(source), model_snapshot(target))
    assert target.export_state() == source.export_state()


@pytest.mark.parametrize("seed", range(20))
def test_round_trip_after_random_writes(seed: int) -> None:
    rng = random.Random(seed)
    source = fresh()
    for _ in range(60):
        path, data = random_write(rng, source)
        model_write(source, path, data)
    target = seeded()  # restoring must also undo what the target had
    target.restore_state(through_json(source.export_state()))
    assert not differences(model_snapshot(source), model_snapshot(target))


def test_restore_keeps_devices_and_drivers_and_surviving_mdevs() -> None:
    host = seeded()
    devices = dict(host.bus.devices)
    drivers = dict(host.bus.drivers)
    kept = host.matrix.mdevs[UUIDS[1]]
    removed = host.matrix.mdevs[UUIDS[0]]
    state = host.export_state()
    state["matrix"]["mdevs"] = state["matrix"]["mdevs"][:1]
    host.restore_state(state)
    assert all(host.bus.devices[n] is d for n, d in devices.items())
    assert all(host.bus.drivers[n] is d for n, d in drivers.items())
    assert host.matrix.mdevs == {UUIDS[1]: kept} and kept.alive
    assert not removed.alive
    # The APQN index follows: 05.0047 is free again, 05.0004 still taken.
    apply_in_process(host, f"{TYPE_DIR}/create", f"{UUIDS[2]}\n".encode())
    apply_in_process(host, f"{MATRIX}/{UUIDS[2]}/assign_domain", b"47\n")
    apply_in_process(host, f"{MATRIX}/{UUIDS[2]}/assign_adapter", b"5\n")
    with pytest.raises(DeviceError) as info:
        apply_in_process(host, f"{MATRIX}/{UUIDS[2]}/assign_domain", b"4\n")
    assert info.value.errno == errno.EADDRINUSE


def test_reset_file_restores_the_configured_state_and_stops_guests() -> None:
    host = seeded()
    mdev = host.matrix.mdevs[UUIDS[1]]
    apply_in_process(host, "apfs/guests/start",
                     f"vfio_ap_matrix,sysfsdev=/sys/bus/mdev/devices/{UUIDS[1]}\n".encode())
    assert host.matrix.guests
    apply_in_process(host, "apfs/reset", b"0\n")  # kstrtobool false: nothing happens
    assert host.matrix.guests
    apply_in_process(host, "apfs/reset", b"1\n")
    assert not host.matrix.guests and not host.matrix.mdevs and not mdev.alive
    assert not differences(model_snapshot(fresh()), model_snapshot(host))
    with pytest.raises(DeviceError) as info:
        apply_in_process(host, "apfs/reset", b"please\n")
    assert info.value.errno == errno.EINVAL and "reset: 'please\\n'" in info.value.message


def _set(state: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split("/")
    for key in parents:
        state = state[int(key)] if isinstance(state, list) else state[key]
    if value is KeyError:
        del state[last]
    else:
        state[last] = value


QUEUE = {"driver": "cex4queue", "online": True, "request_count": 0, "requestq_count": 0,
         "pendingq_count": 0}
BAD_STATES = [
    ("matrix", KeyError, "state: missing key 'matrix'"),
    ("extra", 1, "state: unknown key 'extra'"),
    ("bus/config_time", 200, "bus.config_time: 200 is outside 5..120"),
    ("bus/scans", True, "bus.scans: True is not an integer"),
    ("bus/ap_domain", 256, "bus.ap_domain: 256 is outside -1..255"),
    ("bus/apmask", 1, "bus.apmask/aqmask: this flavor's bus has no masks to change"),
    ("bus/poll_thread", "yes", "bus.poll_thread: 'yes' is not true or false"),
    ("bus/queues/05.0004/online", "yes", "bus.queues.05.0004.online: 'yes' is not true or "
                                         "false"),
    ("bus/queues/05.0004/request_count", -1, "bus.queues.05.0004.request_count: -1 is "
                                             "outside 0.."),
    ("bus/queues/05.0004/driver", "cex4card", "bus.queues.05.0004.driver: cex4card does not "
                                              "handle 05.0004"),
    ("bus/queues/05.0004/driver", "nope", "bus.queues.05.0004.driver: 'nope' is not a driver"),
    ("bus/queues/07.0004", QUEUE, "bus.queues.07.0004: no such queue on this host"),
    ("bus/queues/card05", QUEUE, "bus.queues.card05: no such queue"),
    ("bus/cards/card05/config", KeyError, "bus.cards.card05: missing key 'config'"),
    ("matrix/mdevs/0/uuid", "not-a-uuid", "matrix.mdevs[0].uuid: 'not-a-uuid' is not a "
                                          "lower-case UUID"),
    ("matrix/mdevs/1/uuid", UUIDS[1], f"matrix.mdevs[1].uuid: mdev {UUIDS[1]} is listed twice"),
    ("matrix/mdevs/0/adapters", [5, 300], "matrix.mdevs[0].adapters[1]: 300 is outside 0..255"),
    ("matrix/mdevs/1/adapters", [5], f"matrix.mdevs[1]: queue 05.0004 is assigned to both "
                                     f"{UUIDS[1]} and {UUIDS[0]}"),
    ("matrix/mdevs", {}, "matrix.mdevs: {} is not a list"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_STATES,
                         ids=[b[0] for b in BAD_STATES])
def test_bad_state_is_refused_naming_key_and_value_and_changes_nothing(
        path: str, value: Any, message: str) -> None:
    host = seeded()
    state = host.export_state()
    state["matrix"]["mdevs"][1]["domains"] = [4, 0x47]
    bad = copy.deepcopy(state)
    _set(bad, path, value)
    target = fresh()
    before = model_snapshot(target)
    with pytest.raises(ValueError) as info:
        target.restore_state(bad)
    assert message in str(info.value)
    assert not differences(before, model_snapshot(target))


VFIO = "sys/devices/vfio_ap/matrix"
VFIO_TYPE = f"{VFIO}/mdev_supported_types/vfio_ap-passthrough"
VFIO_SETUP = [
    ("sys/bus/ap/apmask", b"-0x5\n"),
    ("sys/bus/ap/aqmask", b"-4,-0xab\n"),
    (f"{VFIO_TYPE}/create", f"{UUIDS[1]}\n".encode()),
    (f"{VFIO_TYPE}/create", f"{UUIDS[0]}\n".encode()),
    (f"{VFIO}/{UUIDS[1]}/assign_adapter", b"5\n"),
    (f"{VFIO}/{UUIDS[1]}/assign_domain", b"4\n"),
    (f"{VFIO}/{UUIDS[1]}/assign_control_domain", b"0xab\n"),
    # adapter 5, domain 0xab (inv-bit masks: bit 0 is the leftmost)
    (f"{VFIO}/{UUIDS[0]}/ap_config", b"0x04,0x" + b"0" * 42 + b"1" + b"0" * 21 + b",0x0\n"),
]


def vfio_host() -> Host:
    return Host(ap_only(load_config(None, "vfio_ap")))


def test_vfio_ap_round_trip_restores_masks_mdevs_and_guest_matrices() -> None:
    source = vfio_host()
    for path, data in VFIO_SETUP:
        apply_in_process(source, path, data)
    state = through_json(source.export_state())
    assert state["bus"]["apmask"] == source.bus.apmask != fresh().bus.apmask
    assert [m["uuid"] for m in state["matrix"]["mdevs"]] == [UUIDS[1], UUIDS[0]]
    target = vfio_host()
    target.restore_state(state)
    assert not differences(model_snapshot(source), model_snapshot(target))
    assert target.matrix.mdevs[UUIDS[1]].guest_apm == source.matrix.mdevs[UUIDS[1]].guest_apm
    target.reset()  # back to the configured masks: the queues return to the host
    assert not differences(model_snapshot(vfio_host()), model_snapshot(target))
