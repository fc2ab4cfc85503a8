"""Arbitrary writes on a ``vfio_ap`` mount: it stays up, and shows exactly the accepted ones.

As test_fuzz_mount.py does for the seed's flavor: hypothesis throws values at every writable
file of one mount (biased toward upstream's syntaxes: masks, base-0 ids, ``ap_config``
triples, APQN names, UUIDs, ``vfio-ap`` guest arguments), records the accepted writes, and at
the end the whole visible tree must equal a fresh in-process model that saw only those.
Re-probes after mask writes change which files and links hundreds of queues have: a stale
entry in the tree layer shows up as a difference.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import Mount
from helpers import (
    LOG,
    WriteRecorder,
    writable_files,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from apfs.host import Host, ap_only, load_config
from vdev.ap import bitmap
from vdev.ap.host import DEFAULT_HOST_TOML

EXAMPLES = 150
HOST = DEFAULT_HOST_TOML.replace("[host]", '[host]\nflavor = "vfio_ap"')
UUIDS = ["6f5a8c8e-3c1b-4d7a-9d0e-1a2b3c4d5e6f", "0b3e2e7c-8f4d-4a55-b7a3-9c8d7e6f5a4b"]
IDS = [4, 5, 6, 7, 0x47, 0xAB, 0xFF, 0x100]
APQNS = [f"{a:02x}.{d:04x}" for a in (5, 6) for d in (4, 0x47, 0xAB, 0xFF)]
MATRIX = "sys/devices/vfio_ap/matrix"
TYPE_DIR = f"{MATRIX}/mdev_supported_types/vfio_ap-passthrough"
MASKS = ["sys/bus/ap/apmask", "sys/bus/ap/aqmask"]


ends = st.sampled_from(["\n", "", "\n\n", " "])
ids = st.tuples(st.sampled_from(["{}", "{:#x}", "0{:o}", "+{}", "{:x}"]),
                st.sampled_from(IDS)).map(lambda t: t[0].format(t[1]))
masks = st.sets(st.sampled_from(IDS[:-1]), max_size=3).map(
    lambda s: bitmap.to_sysfs(bitmap.from_ids(s)))
relative = st.lists(st.tuples(st.sampled_from("+-"), st.sampled_from(IDS)).map(
    lambda t: f"{t[0]}{t[1]}"), min_size=1, max_size=3).map(",".join)
LIKELY = {
    "mask": st.one_of(relative, masks),
    "ap_config": st.tuples(masks, masks, masks, st.booleans()).map(
        lambda t: f"{t[0]},{t[1]}" + ("" if t[3] else f",{t[2]}")),
    "id": ids,
    "device": st.sampled_from([*APQNS, "card05", "card06"]),
    "uuid": st.sampled_from(UUIDS),
    "guest": st.sampled_from(UUIDS).map(lambda u: f"vfio-ap,sysfsdev=/sys/bus/mdev/devices/{u}"),
    "number": st.sampled_from(["0", "1", "5", "0x47", "x", "120"]),
}
candidates = st.tuples(st.fixed_dictionaries(LIKELY), ends,
                       st.binary(min_size=1, max_size=24), st.integers(0, 4))


def pick(relpath: str, drawn: tuple[dict[str, str], str, bytes, int]) -> bytes:
    likely, end, random_bytes, dice = drawn
    if dice == 4:
        return random_bytes
    name = relpath.rsplit("/", 1)[1]
    kind = {"apmask": "mask", "aqmask": "mask", "ap_config": "ap_config", "bind": "device",
            "unbind": "device", "drivers_probe": "device", "create": "uuid", "start": "guest",
            "stop": "guest"}.get(name, "id" if "assign_" in name else "number")
    return (likely[kind] + end).encode()


def test_fuzzed_writes_leave_the_state_of_the_accepted_ones(
        mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    mount = mount_factory(HOST)
    root = mount.root
    recorder = WriteRecorder(root)
    write, accepted, outcomes = recorder.write, recorder.accepted, recorder.outcomes

    write("sys/bus/ap/apmask", b"-5\n")
    write("sys/bus/ap/aqmask", b"-4,-0xab\n")
    for uuid in UUIDS:
        write(f"{TYPE_DIR}/create", f"{uuid}\n".encode())
    write(f"{MATRIX}/{UUIDS[0]}/assign_adapter", b"5\n")
    assert len(accepted) == 5

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],  # the mount keeps state: no shrinking
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def throw(data: st.DataObject) -> None:
        files = writable_files(root, exclude=[LOG])
        for _ in range(data.draw(st.integers(1, 4), label="writes")):
            index = data.draw(st.integers(0, 1 << 16), label="file")
            # One write in five goes to a mask: their re-probes are what this test is after.
            relpath = MASKS[index % 2] if index % 5 == 0 else files[index % len(files)]
            write(relpath, pick(relpath, data.draw(candidates, label="values")))
        assert (root / "sys/bus/ap/apmask").read_text().startswith("0x")

    throw()

    refused = recorder.refused
    assert outcomes.get(0, 0) > 50 and refused > 50, outcomes
    assert any(p.endswith("mask") for p, _ in accepted[5:]), "no mask write was accepted"
    recorder.assert_mount_is_the_model(Host(ap_only(load_config(None, "vfio_ap"))),
                                       tmp_path / "accepted-writes.txt")
    assert "internal error" not in mount.read(LOG)
