"""The ``ap_matrix`` flavor: the 2017 RFC's matrix device, its mediated devices and guests.

Owns: ``/sys/devices/ap_matrix/matrix`` (the mdev type ``ap_matrix-passthrough`` with
``create``/``name``/``device_api``/``available_instances``), every mediated matrix device
(:class:`MatrixMdev`: ``assign_*``/``unassign_*``/``remove`` and the ``adapters``/``domains``/
``control_domains`` listings), the rule that an APQN belongs to at most one mdev, the
``status`` of queues bound to ``vfio_ap_matrix``, and what a guest started with an mdev sees
(:class:`GuestView`).

Must not know: driver-core binding rules or card attributes (that is :mod:`vdev.ap.bus`), the
upstream ``vfio_ap`` flavor's masks (apmask/aqmask, ``matrix``/``guest_matrix`` files), FUSE.

Theory of operation: an mdev holds three 256-bit masks, APM (adapters), AQM (usage domains)
and ADM (explicit control domains).  Its APQNs are APM x AQM.  ``_owner`` maps every claimed
APQN to the one mdev holding it, so an assignment checks and claims at most 256 APQNs (one
row or column of the matrix), whatever the number of mdevs; the same index answers a queue's
``status`` in O(1).  A refused assignment raises before touching any mask or index.

Numbers written to ``assign_*``/``unassign_*`` are hexadecimal (the seed writes
``echo 47 > assign_domain`` for domain 0x47 and ``echo ab``), parsed like
``kstrtoul(buf, 16)``.  Unassigning an id that is not assigned succeeds silently, as
``clear_bit`` does in every vfio_ap version; assigning an id twice is equally harmless.

Guests: assignments take effect when a guest (re)starts (the seed: no hot plug), so
:meth:`ApMatrix.start_guest` takes a snapshot.  The guest sees the APQNs of its matrix that
exist on the host and are bound to ``vfio_ap_matrix`` at that moment; its CRYCB ADM is
control_domains | domains (the seed's architectural convention).  While a guest runs, its
mdev cannot be removed (EBUSY) and no other guest may start with one of its APQNs (EBUSY);
unbinding one of its queues on the host does not change the running guest's snapshot.

Durable state: :meth:`ApMatrix.export_state` lists the mdevs in creation order with their
assignments; :meth:`ApMatrix.restore_state` puts them back.  Running guests are not part of
it: they stand for QEMU processes, which no file system state brings back.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

from vdev.ap import bitmap
from vdev.ap.bus import ApBus, Attr, PassthroughOps, Queue, apqn_name
from vdev.ap.cardtypes import CardType
from vdev.ap.mdev import ASSIGN_ATTRS, Apqn, MdevType, remove_requested
from vdev.errors import DeviceError
from vdev.kparse import kstrtoul

MDEV_TYPE = "ap_matrix-passthrough"



@dataclass(frozen=True)
class GuestView:
    """What a KVM guest started with an mdev sees; fixed until the guest stops."""

    uuid: str
    apm: int
    aqm: int
    adm: int
    apqns: tuple[Apqn, ...]
    card_types: dict[int, CardType]

    def show_apqns(self) -> str:
        return "".join(apqn_name(a, d) + "\n" for a, d in self.apqns)

    def show_crycb(self) -> str:
        """The CRYCB masks of the guest in the kernel's inv-bit sysfs format."""
        return "".join(f"{name} {bitmap.to_sysfs(mask)}\n"
                       for name, mask in (("apm", self.apm), ("aqm", self.aqm), ("adm", self.adm)))

    def show_lszcrypt(self) -> str:
        """``lszcrypt`` inside the guest: its cards and queues with their host types."""
        lines = ["CARD.DOMAIN TYPE  MODE", "-" * 30]
        card = None
        for adapter, domain in self.apqns:
            card_type = self.card_types[adapter]
            if adapter != card:
                card = adapter
                lines.append(_lszcrypt_row(f"{adapter:02x}", card_type))
            lines.append(_lszcrypt_row(apqn_name(adapter, domain), card_type))
        return "\n".join(lines) + "\n"


def _lszcrypt_row(name: str, card_type: CardType) -> str:
    return f"{name:<11} {card_type.name:<5} {card_type.mode}"


class MatrixMdev:
    """A mediated matrix device ``/sys/devices/ap_matrix/matrix/$uuid``."""

    ATTRS = (
        *ASSIGN_ATTRS,
        Attr("remove", 0o200),
        Attr("adapters", 0o444),
        Attr("domains", 0o444),
        Attr("control_domains", 0o444),
    )

    __slots__ = ("adm", "alive", "apm", "aqm", "matrix", "uuid")

    def __init__(self, matrix: ApMatrix, uuid: str) -> None:
        self.matrix = matrix
        self.uuid = uuid
        self.apm = 0
        self.aqm = 0
        self.adm = 0
        self.alive = True

    def apqns(self) -> Iterator[Apqn]:
        """The APQNs of this mdev's matrix (adapters outer, ascending)."""
        domains = list(bitmap.ids(self.aqm))
        for adapter in bitmap.ids(self.apm):
            for domain in domains:
                yield adapter, domain

    def store_assign_adapter(self, text: str) -> None:
        adapter = self._parse("assign_adapter", text, "adapter")
        if not self.apm >> adapter & 1:
            new = [(adapter, d) for d in bitmap.ids(self.aqm)]
            self.matrix._claim(self, "assign_adapter", new)
            self.apm |= 1 << adapter

    def store_unassign_adapter(self, text: str) -> None:
        adapter = self._parse("unassign_adapter", text, "adapter")
        if self.apm >> adapter & 1:
            self.matrix._release([(adapter, d) for d in bitmap.ids(self.aqm)])
            self.apm &= ~(1 << adapter)

    def store_assign_domain(self, text: str) -> None:
        domain = self._parse("assign_domain", text, "domain")
        if not self.aqm >> domain & 1:
            new = [(a, domain) for a in bitmap.ids(self.apm)]
            self.matrix._claim(self, "assign_domain", new)
            self.aqm |= 1 << domain

    def store_unassign_domain(self, text: str) -> None:
        domain = self._parse("unassign_domain", text, "domain")
        if self.aqm >> domain & 1:
            self.matrix._release([(a, domain) for a in bitmap.ids(self.apm)])
            self.aqm &= ~(1 << domain)

    def store_assign_control_domain(self, text: str) -> None:
        """Control domains are not exclusive: no claim, just the ADM bit."""
        self.adm |= 1 << self._parse("assign_control_domain", text, "domain")

    def store_unassign_control_domain(self, text: str) -> None:
        self.adm &= ~(1 << self._parse("unassign_control_domain", text, "domain"))

    def store_remove(self, text: str) -> None:
        self._check_alive("remove")
        if remove_requested(text):
            self.matrix._remove(self)

    def show_adapters(self) -> str:
        return "".join(f"{a:02x}\n" for a in bitmap.ids(self.apm))

    def show_domains(self) -> str:
        return "".join(f"{d:04x}\n" for d in bitmap.ids(self.aqm))

    def show_control_domains(self) -> str:
        """Only the explicitly assigned control domains (usage domains join ADM at start)."""
        return "".join(f"{d:04x}\n" for d in bitmap.ids(self.adm))

    def _parse(self, attr: str, text: str, what: str) -> int:
        """A hexadecimal id within the bus maximum: malformed EINVAL, too large ENODEV."""
        self._check_alive(attr)
        value = kstrtoul(text, 16, name=attr)
        config = self.matrix.bus.config
        maximum = config.max_adapter_id if what == "adapter" else config.max_domain_id
        if value > maximum:
            raise DeviceError(errno.ENODEV, f"{attr}: {value:#x} is above the maximum "
                              f"{what} id {maximum:#04x}")
        return value

    def _check_alive(self, attr: str) -> None:
        if not self.alive:
            raise DeviceError(errno.ENODEV, f"{attr}: mdev {self.uuid} has been removed")


class ApMatrix(MdevType):
    """The matrix device and its ``ap_matrix-passthrough`` mdev type, on top of an ApBus."""

    MDEV = MatrixMdev

    def __init__(self, bus: ApBus, *, max_instances: int | None = None) -> None:
        super().__init__(bus, max_instances)
        self._owner: dict[Apqn, MatrixMdev] = {}
        self._in_use: dict[Apqn, str] = {}
        bus.passthrough_ops = _MatrixOps(self)

    # -- guests ----------------------------------------------------------------------------

    def start_guest(self, uuid: str) -> GuestView:
        """Start a guest with ``-device vfio_ap_matrix,sysfsdev=.../$uuid``: snapshot its view."""
        mdev = self._mdev("start_guest", uuid)
        if mdev.uuid in self.guests:
            raise DeviceError(errno.EBUSY, f"start_guest: a guest already runs with {mdev.uuid}")
        passthrough = self.bus.passthrough
        apqns: list[Apqn] = []
        card_types: dict[int, CardType] = {}
        for adapter, domain in mdev.apqns():
            queue = self.bus.queue(adapter, domain)
            if queue is not None and queue.driver is passthrough:
                apqns.append((adapter, domain))
                card_types[adapter] = queue.type
        for apqn in apqns:
            other = self._in_use.get(apqn)
            if other is not None:
                raise DeviceError(errno.EBUSY, f"start_guest: queue {apqn_name(*apqn)} is in "
                                  f"use by the guest of mdev {other}")
        view = GuestView(mdev.uuid, mdev.apm, mdev.aqm, mdev.adm | mdev.aqm, tuple(apqns),
                         card_types)
        self.guests[mdev.uuid] = view
        self._in_use.update(dict.fromkeys(apqns, mdev.uuid))
        return view

    def stop_guest(self, uuid: str) -> None:
        """Shut the guest down; its queues' status falls back to assigned/unassigned."""
        view = self.guests.pop(uuid.lower(), None)
        if view is None:
            raise DeviceError(errno.ENOENT, f"stop_guest: no guest runs with mdev {uuid}")
        for apqn in view.apqns:
            del self._in_use[apqn]

    # -- durable state ---------------------------------------------------------------------

    def _restored(self) -> None:
        self._owner = {apqn: mdev for mdev in self.mdevs.values() for apqn in mdev.apqns()}

    # -- internals shared with MatrixMdev --------------------------------------------------

    def _mdev(self, attr: str, uuid: str) -> MatrixMdev:
        mdev = self.mdevs.get(uuid.lower())
        if mdev is None:
            raise DeviceError(errno.ENOENT, f"{attr}: no mdev {uuid}")
        return mdev

    def _claim(self, mdev: MatrixMdev, attr: str, apqns: list[Apqn]) -> None:
        """Give ``apqns`` to ``mdev``, or raise EADDRINUSE naming the first taken one."""
        owner = self._owner
        for apqn in apqns:
            other = owner.get(apqn)
            if other is not None and other is not mdev:
                raise DeviceError(errno.EADDRINUSE, f"{attr}: Userspace may not assign queue "
                                  f"{apqn_name(*apqn)} to mdev: already assigned to {other.uuid}")
        owner.update(dict.fromkeys(apqns, mdev))

    def _release(self, apqns: list[Apqn]) -> None:
        for apqn in apqns:
            del self._owner[apqn]

    def _remove(self, mdev: MatrixMdev) -> None:
        if mdev.uuid in self.guests:
            raise DeviceError(errno.EBUSY, f"remove: mdev {mdev.uuid} is in use by a running "
                              f"guest")
        self._release(list(mdev.apqns()))
        del self.mdevs[mdev.uuid]
        mdev.alive = False


class _MatrixOps(PassthroughOps):
    """vfio_ap_matrix's callbacks: only ``status`` (the 2017 bus has no masks to check)."""

    def __init__(self, matrix: ApMatrix) -> None:
        self.matrix = matrix

    def status_of(self, queue: Queue) -> str:
        apqn = (queue.adapter, queue.domain)
        if apqn in self.matrix._in_use:
            return "in use\n"
        if apqn in self.matrix._owner:
            return "assigned\n"
        return "unassigned\n"
