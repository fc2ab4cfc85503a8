"""Acceptance 4: arbitrary writes never break a mount, and refused writes change nothing.

Hypothesis throws bytes (random, and biased toward almost-valid values: hex ids, APQN names,
UUIDs, ``1\\n``, guest ``-device`` arguments) at every writable file of one long-lived mount,
each as one ``write()``, and records the writes that were accepted.  The mount must stay
alive, no write may fail with EIO (an internal error) or ENOSYS, and at the end everything a
reader can see must equal a fresh in-process model that saw *only* the accepted writes, in
order: a refused write that changed something, or an accepted one whose effect differs from
the model's, shows up as a difference.
"""

from __future__ import annotations

import os
from pathlib import Path

from conftest import MountFactory
from helpers import (
    LOG,
    MATRIX,
    TYPE_DIR,
    WriteRecorder,
    writable_files,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from apfs.host import Host, ap_only, load_config
from vdev.ap.host import DEFAULT_HOST_TOML

EXAMPLES = 300
UUIDS = ["6f5a8c8e-3c1b-4d7a-9d0e-1a2b3c4d5e6f", "0b3e2e7c-8f4d-4a55-b7a3-9c8d7e6f5a4b",
         "A1B2C3D4-0000-4000-8000-00000000000F"]
APQNS = [f"{a:02x}.{d:04x}" for a in (0x05, 0x06, 0x07) for d in (0x04, 0x47, 0xAB, 0xFF, 0x05)]
DEVICES = [*APQNS, "card05", "card06", "card07"]
SYSFSDEVS = ["/sys/devices/ap_matrix/matrix/{u}", "/sys/bus/mdev/devices/{u}",
             "/sys/bus/mdev/drivers/vfio_mdev/{u}", f"/{TYPE_DIR}/devices/{{u}}",
             "/sys/bus/ap", "/sys/../sys/bus/mdev/devices/{u}/", "/sys/devices/ap/card05"]



def newline(s: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """The text as echo (newline) or printf (none) would write it."""
    return st.tuples(s, st.sampled_from(["\n", "", "\n\n", " ", "\0x"])).map(
        lambda t: (t[0] + t[1]).encode())


hex_ids = st.tuples(st.sampled_from(["", "0x", "0X", "+", "-", " "]),
                    st.integers(0, 0x1FF)).map(lambda t: f"{t[0]}{t[1]:x}")
numbers = st.one_of(st.integers(-5, 300).map(str), st.sampled_from(
    ["0", "1", "y", "n", "on", "off", "5", "120", "121", "250000", "0x47", "077",
     "120000000000", "18446744073709551616"]))
uuids = st.one_of(st.sampled_from(UUIDS), st.uuids().map(str), st.sampled_from(UUIDS).map(
    lambda u: u.upper()))
devices = st.sampled_from(DEVICES)
guests = st.tuples(st.sampled_from(SYSFSDEVS), st.sampled_from(UUIDS),
                   st.sampled_from(["vfio_ap_matrix,sysfsdev=", "", "vfio_ap,sysfsdev="])).map(
    lambda t: t[2] + t[0].format(u=t[1].lower()))
anything = st.one_of(st.binary(min_size=1, max_size=48), st.just(b"0" * 5000),
                     st.text(min_size=1, max_size=12).map(str.encode), st.just(b""))


LIKELY = {
    "device": newline(devices),
    "uuid": newline(uuids),
    "id": newline(hex_ids),
    "guest": newline(guests),
    "uevent": newline(st.sampled_from(["add", "change", "bogus", "online extra"])),
    "number": newline(numbers),
}

# Which value a file's readers expect.  Strategies must not depend on the mount's state (the
# files that exist now), so every kind is drawn each time and the file picks its own.
candidates = st.tuples(st.fixed_dictionaries(LIKELY), anything, st.integers(0, 3))


def pick(relpath: str, drawn: tuple[dict[str, bytes], bytes, int]) -> bytes:
    likely, random_bytes, dice = drawn
    if dice == 3:
        return random_bytes
    name = relpath.rsplit("/", 1)[1]
    if name in ("bind", "unbind", "drivers_probe"):
        return likely["device"]
    if name == "create":
        return likely["uuid"]
    if name.startswith(("assign_", "unassign_")):
        return likely["id"]
    if name in ("start", "stop"):
        return likely["guest"]
    if name == "uevent":
        return likely["uevent"]
    return likely["number"]


def mount_is_alive(root: Path) -> None:
    assert os.path.ismount(root)
    assert "sys" in os.listdir(root)
    os.stat(root / "sys/bus/ap/ap_domain")
    assert (root / "sys/bus/ap/config_time").read_text().strip().isdigit()


def test_fuzzed_writes_leave_the_state_of_the_accepted_ones(mount_factory: MountFactory,
                                                           tmp_path: Path) -> None:
    # The AP host alone: a vTPM powered off by a fuzzed write makes its PCR files unreadable.
    mount = mount_factory(DEFAULT_HOST_TOML)
    root = mount.root
    recorder = WriteRecorder(root)
    write, accepted, outcomes = recorder.write, recorder.accepted, recorder.outcomes

    # Start from an interesting state: seed steps 1-3 plus a first mdev, through the recorder.
    for queue in ("05.0004", "05.00ab", "06.0004"):
        write("sys/bus/ap/drivers/cex4queue/unbind", f"{queue}\n".encode())
        write("sys/bus/ap/drivers/vfio_ap_matrix/bind", f"{queue}\n".encode())
    write(f"{TYPE_DIR}/create", f"{UUIDS[0]}\n".encode())
    write(f"{MATRIX}/{UUIDS[0]}/assign_adapter", b"5\n")
    assert len(accepted) == 8

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],  # the mount keeps state: no shrinking
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def throw(data: st.DataObject) -> None:
        files = writable_files(root, exclude=[LOG])
        for _ in range(data.draw(st.integers(1, 4), label="writes")):
            relpath = files[data.draw(st.integers(0, 1 << 16), label="file") % len(files)]
            write(relpath, pick(relpath, data.draw(candidates, label="values")))
        mount_is_alive(root)

    throw()

    refused = recorder.refused
    assert outcomes.get(0, 0) > 50 and refused > 50, outcomes  # both kinds were exercised
    assert len({p for p, _ in accepted}) > 15, "too few files were written successfully"
    assert any(p.startswith("apfs/guests/") for p, _ in accepted), "no guest was started"

    mount_is_alive(root)
    recorder.assert_mount_is_the_model(Host(ap_only(load_config(None))),
                                       tmp_path / "accepted-writes.txt")
    assert "internal error" not in mount.read(LOG)
