"""Random administrator sessions on the vfio_ap model keep upstream's invariants.

Hypothesis drives mask writes (both syntaxes), creates, assignments in any base, ``ap_config``
writes, binds, unbinds, probes and removes, many of them invalid.  After every step: no APQN
is in two mdevs; no mdev holds an APQN the host masks reserve; every bound queue sits on the
driver the masks dictate; every guest matrix is a filtered part of its matrix.  Every refused
write leaves the whole state exactly as it was.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.unit.ap_shell import VFIO_MATRIX, VFIO_TYPE_DIR, VfioShell
from vdev.ap import bitmap
from vdev.errors import DeviceError

HOST = """
[host]
domains = ["04", "05", "47"]
[[card]]
id = "05"
type = "CEX5C"
[[card]]
id = "06"
type = "CEX8A"
[[card]]
id = "07"
type = "CEX7P"
"""
UUIDS = [f"{i:08x}-0000-4000-8000-00000000000{i}" for i in range(1, 4)]
IDS = [4, 5, 7, 8, 0x47, 0x100]  # configured, over-provisioned and out of range
QUEUES = [f"{a:02x}.{d:04x}" for a in (5, 6, 7) for d in (4, 5, 0x47)]
ASSIGN_FILES = ["assign_adapter", "unassign_adapter", "assign_domain", "unassign_domain",
                "assign_control_domain", "unassign_control_domain"]


def number(value: int) -> st.SearchStrategy[str]:
    """How an administrator may spell an id for kstrtoul(buf, 0)."""
    return st.sampled_from([f"{value}", f"{value:#x}", f"0{value:o}", f"+{value}",
                            f"{value}\n", f"{value:x}"])


relative_term = st.builds(lambda sign, first, span: f"{sign}{first}" + (
    f"-{first + span}" if span else ""), st.sampled_from("+-"), st.sampled_from(IDS[:-1]),
    st.sampled_from([0, 0, 1, 2]))
relative = st.lists(relative_term, min_size=1, max_size=3).map(",".join)
absolute = st.sets(st.sampled_from(IDS[:-1])).map(
    lambda ids: bitmap.to_sysfs(bitmap.from_ids(ids)))
masks_text = st.one_of(relative, absolute, st.sampled_from(["", "\n", "-300", "0xg", "+1-"]))
ids_mask = st.sets(st.sampled_from(IDS[:-1]), max_size=3).map(
    lambda ids: bitmap.to_sysfs(bitmap.from_ids(ids)))


class VfioApSession(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sh = VfioShell(HOST)
        # Start from vfio-ap.rst's reservation, so that sessions reach assignments early.
        self.sh.echo("-5,-7", "/sys/bus/ap/apmask")
        self.sh.echo("-4,-0x47", "/sys/bus/ap/aqmask")
        self.refusals = 0

    # -- the whole state, to compare before and after a refusal ------------------------------

    def state(self) -> Any:
        bus, vfio = self.sh.bus, self.sh.vfio
        return (
            bus.apmask, bus.aqmask, bus.ap_domain,
            {name: (d.driver.name if d.driver else "") for name, d in bus.devices.items()},
            [(m.uuid, m.apm, m.aqm, m.adm, m.guest_apm, m.guest_aqm, m.guest_adm)
             for m in vfio.mdevs.values()],
        )

    def write(self, text: str, path: str) -> None:
        before = self.state()
        try:
            self.sh.write(text, path)
        except DeviceError:
            self.refusals += 1
            assert self.state() == before, f"refused {text!r} > {path} changed the state"

    # -- rules -------------------------------------------------------------------------------

    @rule(attr=st.sampled_from(["apmask", "aqmask"]), text=masks_text,
          newline=st.booleans())
    def write_mask(self, attr: str, text: str, newline: bool) -> None:
        self.write(text + ("\n" if newline else ""), f"/sys/bus/ap/{attr}")

    @rule(uuid=st.sampled_from(UUIDS))
    def create(self, uuid: str) -> None:
        self.write(uuid + "\n", f"{VFIO_TYPE_DIR}/create")

    @precondition(lambda self: self.sh.vfio.mdevs)
    @rule(data=st.data(), attr=st.sampled_from(ASSIGN_FILES), value=st.sampled_from(IDS))
    def assign(self, data: st.DataObject, attr: str, value: int) -> None:
        uuid = data.draw(st.sampled_from(sorted(self.sh.vfio.mdevs)))
        self.write(data.draw(number(value)), f"{VFIO_MATRIX}/{uuid}/{attr}")

    @precondition(lambda self: self.sh.vfio.mdevs)
    @rule(data=st.data(), apm=ids_mask, aqm=ids_mask, adm=ids_mask,
          end=st.sampled_from(["\n", "", ",\n"]))
    def ap_config(self, data: st.DataObject, apm: str, aqm: str, adm: str, end: str) -> None:
        uuid = data.draw(st.sampled_from(sorted(self.sh.vfio.mdevs)))
        third = "" if end == ",\n" else f",{adm}"
        self.write(f"{apm},{aqm}{third}{end}", f"{VFIO_MATRIX}/{uuid}/ap_config")

    @rule(driver=st.sampled_from(["cex4queue", "vfio_ap"]),
          action=st.sampled_from(["bind", "unbind"]), queue=st.sampled_from(QUEUES))
    def bind_or_unbind(self, driver: str, action: str, queue: str) -> None:
        self.write(queue + "\n", f"/sys/bus/ap/drivers/{driver}/{action}")

    @rule(queue=st.sampled_from(QUEUES))
    def drivers_probe(self, queue: str) -> None:
        self.write(queue, "/sys/bus/ap/drivers_probe")

    @precondition(lambda self: self.sh.vfio.mdevs)
    @rule(data=st.data(), value=st.sampled_from(["1", "0", "x"]))
    def remove(self, data: st.DataObject, value: str) -> None:
        uuid = data.draw(st.sampled_from(sorted(self.sh.vfio.mdevs)))
        self.write(value, f"{VFIO_MATRIX}/{uuid}/remove")

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def no_apqn_in_two_mdevs(self) -> None:
        mdevs = list(self.sh.vfio.mdevs.values())
        for i, one in enumerate(mdevs):
            for other in mdevs[i + 1:]:
                assert not (one.apm & other.apm and one.aqm & other.aqm), (one.uuid, other.uuid)

    @invariant()
    def no_mdev_holds_a_host_apqn(self) -> None:
        bus = self.sh.bus
        for mdev in self.sh.vfio.mdevs.values():
            assert not (mdev.apm & bus.apmask and mdev.aqm & bus.aqmask), mdev.uuid

    @invariant()
    def queues_sit_where_the_masks_say(self) -> None:
        bus = self.sh.bus
        for card in bus.cards.values():
            for queue in card.queues.values():
                if queue.driver is not None:
                    assert queue.driver.passthrough != bus.host_owns(queue), queue.name

    @invariant()
    def guest_matrix_is_the_bound_configured_part_of_the_matrix(self) -> None:
        vfio = self.sh.vfio
        for mdev in vfio.mdevs.values():
            assert mdev.guest_apm & ~(mdev.apm & vfio.host_apm) == 0
            assert mdev.guest_aqm & ~(mdev.aqm & vfio.host_aqm) == 0
            assert mdev.guest_adm & ~(mdev.adm & vfio.host_adm) == 0
            for adapter in bitmap.ids(mdev.guest_apm):
                for domain in bitmap.ids(mdev.guest_aqm):
                    queue = self.sh.bus.cards[adapter].queues[domain]
                    assert queue.driver is self.sh.bus.passthrough, queue.name


VfioApSession.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                           deadline=None)
test_vfio_ap_sessions = VfioApSession.TestCase
