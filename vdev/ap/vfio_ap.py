"""The ``vfio_ap`` flavor: upstream Linux's matrix device, its mediated devices and guests.

Owns: ``/sys/devices/vfio_ap/matrix`` (``features``, the mdev type ``vfio_ap-passthrough``
with ``create``/``name``/``device_api``/``available_instances``), every mediated device
(:class:`VfioMdev`: ``assign_*``/``unassign_*``, ``ap_config``, ``matrix``, ``guest_matrix``,
``control_domains``, ``remove``), the vfio_ap driver's callbacks on the bus (queue ``status``,
``in_use`` for apmask/aqmask, probe and remove of queues) and what a guest started with an
mdev sees.

Must not know: driver-core binding or the mask syntaxes (that is :mod:`vdev.ap.bus`), the
seed's ``ap_matrix`` rules (hex ids, the APQN owner index), FUSE.

Theory of operation (drivers/s390/crypto/vfio_ap_ops.c): an mdev holds three 256-bit masks,
APM, AQM and ADM (:class:`~vdev.ap.bitmap` ints).  An assignment sets one bit, then validates
the whole matrix: no APQN of APM x AQM inside the host's apmask x aqmask (EADDRNOTAVAIL), none
shared with another mdev (EADDRINUSE), checked by mask intersection; a refusal changes
nothing.  ``guest_matrix`` is the *shadow APCB*, stored state: it is recomputed (filtered)
only by assignments of adapters and domains, ``ap_config`` writes and probes of vfio_ap
queues, and only loses bits otherwise, exactly where the kernel touches it.  Filtering keeps
the ids the host configuration has, then drops every adapter with an APQN not bound to
vfio_ap.  Numbers are ``kstrtoul(buf, 0)``: decimal by default.

Guests: a guest started with an mdev sees its guest matrix *live* (upstream hot-plugs
changes into a running guest).  While it runs, the mdev's queues show ``in use``, a second
guest cannot start on the mdev and the mdev cannot be removed (EBUSY; the kernel would
instead block the write until QEMU lets the device go).

Durable state is a handful of plain attributes: per mdev ``apm``/``aqm``/``adm`` and the
shadow ``guest_apm``/``guest_aqm``/``guest_adm``; :attr:`VfioAp.mdevs` in creation order.
"""

from __future__ import annotations

import errno

from vdev.ap import bitmap
from vdev.ap.bus import ApBus, Attr, PassthroughOps, Queue, apqn_name
from vdev.ap.cardtypes import CardType
from vdev.ap.matrix import GuestView
from vdev.ap.mdev import ASSIGN_ATTRS, Apqn, MdevType, remove_requested
from vdev.errors import DeviceError
from vdev.kparse import kstrtoul

MDEV_TYPE = "vfio_ap-passthrough"
FEATURES = "guest_matrix hotplug ap_config"


def _apqns(apm: int, aqm: int) -> list[Apqn]:
    domains = list(bitmap.ids(aqm))
    return [(a, d) for a in bitmap.ids(apm) for d in domains]


def _first_apqn(apm: int, aqm: int) -> str:
    return apqn_name(next(bitmap.ids(apm)), next(bitmap.ids(aqm)))


def _show_matrix(apm: int, aqm: int) -> str:
    """``vfio_ap_mdev_matrix_show``: APQNs, else ``xx.`` adapters, else ``.yyyy`` domains."""
    if apm and aqm:
        return "".join(apqn_name(a, d) + "\n" for a, d in _apqns(apm, aqm))
    if apm:
        return "".join(f"{a:02x}.\n" for a in bitmap.ids(apm))
    return "".join(f".{d:04x}\n" for d in bitmap.ids(aqm))


class VfioMdev:
    """A mediated device ``/sys/devices/vfio_ap/matrix/<uuid>``."""

    ATTRS = (
        *ASSIGN_ATTRS,
        Attr("ap_config", 0o644),
        Attr("control_domains", 0o444),
        Attr("matrix", 0o444),
        Attr("guest_matrix", 0o444),
        Attr("remove", 0o200),
    )

    __slots__ = ("adm", "alive", "apm", "aqm", "guest_adm", "guest_apm", "guest_aqm", "uuid",
                 "vfio")

    def __init__(self, vfio: VfioAp, uuid: str) -> None:
        self.vfio = vfio
        self.uuid = uuid
        self.apm = 0
        self.aqm = 0
        self.adm = 0
        self.guest_apm = 0
        self.guest_aqm = 0
        self.guest_adm = 0
        self.alive = True

    def holds(self, adapter: int, domain: int) -> bool:
        return bool(self.apm >> adapter & 1 and self.aqm >> domain & 1)

    # -- assign / unassign -------------------------------------------------------------------

    def store_assign_adapter(self, text: str) -> None:
        adapter = self._parse("assign_adapter", text, self.vfio.max_adapter_id)
        if not self.apm >> adapter & 1:
            apm = self.apm | 1 << adapter
            self.vfio.validate(self, "assign_adapter", f"adapter {adapter:#04x}", apm, self.aqm)
            self.apm = apm
            self.vfio.filter_matrix(self)

    def store_unassign_adapter(self, text: str) -> None:
        adapter = self._parse("unassign_adapter", text, self.vfio.max_adapter_id)
        bit = 1 << adapter
        self.apm &= ~bit
        self.guest_apm &= ~bit

    def store_assign_domain(self, text: str) -> None:
        domain = self._parse("assign_domain", text, self.vfio.max_domain_id)
        if not self.aqm >> domain & 1:
            aqm = self.aqm | 1 << domain
            self.vfio.validate(self, "assign_domain", f"domain {domain:#06x}", self.apm, aqm)
            self.aqm = aqm
            self.vfio.filter_matrix(self)

    def store_unassign_domain(self, text: str) -> None:
        domain = self._parse("unassign_domain", text, self.vfio.max_domain_id)
        bit = 1 << domain
        self.aqm &= ~bit
        self.guest_aqm &= ~bit

    def store_assign_control_domain(self, text: str) -> None:
        """Control domains are neither checked against the masks nor exclusive."""
        self.adm |= 1 << self._parse("assign_control_domain", text, self.vfio.max_domain_id)
        self.vfio.filter_cdoms(self)

    def store_unassign_control_domain(self, text: str) -> None:
        bit = 1 << self._parse("unassign_control_domain", text, self.vfio.max_domain_id)
        self.adm &= ~bit
        self.guest_adm &= ~bit

    def _parse(self, attr: str, text: str, maximum: int) -> int:
        """``kstrtoul(buf, 0)`` (EINVAL, ERANGE), then the configured maximum (ENODEV)."""
        self._check_alive(attr)
        value = kstrtoul(text, 0, name=attr)
        if value > maximum:
            raise DeviceError(errno.ENODEV, f"{attr}: {value:#x} is above the maximum id "
                              f"{maximum:#04x} of this AP configuration")
        return value

    # -- ap_config ---------------------------------------------------------------------------

    def show_ap_config(self) -> str:
        return ",".join(bitmap.to_sysfs(m) for m in (self.apm, self.aqm, self.adm)) + "\n"

    def store_ap_config(self, text: str) -> None:
        """``apm,aqm,adm``: the whole matrix at once, all or nothing.

        Checked in the kernel's order: syntax (EINVAL), host masks (EADDRNOTAVAIL), other
        mdevs (EADDRINUSE), then bits above the maxima (ENODEV).
        """
        self._check_alive("ap_config")
        # The kernel parses a copy cut to 201 bytes (three full masks, two commas, a
        # newline); it cannot change the outcome, since a mask has at most 66 characters.
        apm, aqm, adm = _parse_ap_config(text)
        vfio = self.vfio
        vfio.validate(self, "ap_config", "the new matrix", apm, aqm)
        for name, mask, maximum in (("adapter", apm, vfio.max_adapter_id),
                                    ("domain", aqm, vfio.max_domain_id),
                                    ("control domain", adm, vfio.max_domain_id)):
            if mask >> (maximum + 1):
                raise DeviceError(errno.ENODEV, f"ap_config: {name} "
                                  f"{max(bitmap.ids(mask)):#04x} is above the maximum id "
                                  f"{maximum:#04x} of this AP configuration")
        self.apm, self.aqm, self.adm = apm, aqm, adm
        vfio.filter_matrix(self)
        vfio.filter_cdoms(self)

    # -- listings ----------------------------------------------------------------------------

    def show_matrix(self) -> str:
        return _show_matrix(self.apm, self.aqm)

    def show_guest_matrix(self) -> str:
        return _show_matrix(self.guest_apm, self.guest_aqm)

    def show_control_domains(self) -> str:
        """Only the assigned control domains: upstream does not add the usage domains."""
        return "".join(f"{d:04x}\n" for d in bitmap.ids(self.adm))

    def store_remove(self, text: str) -> None:
        self._check_alive("remove")
        if remove_requested(text):
            self.vfio.remove(self)

    def _check_alive(self, attr: str) -> None:
        if not self.alive:
            raise DeviceError(errno.ENODEV, f"{attr}: mdev {self.uuid} has been removed")


def _parse_ap_config(text: str) -> tuple[int, int, int]:
    """Three masks taken with ``strsep(&rest, ",\\n")`` + ``ap_hex2bitmap`` each.

    An empty token is an empty mask; ``A,B\\n`` yields an empty third token (the newline
    ends the second), ``A,B`` runs out of tokens (EINVAL); whatever follows the third is
    ignored.
    """
    rest: str | None = text
    masks = []
    for name in ("apm", "aqm", "adm"):
        if rest is None:
            raise DeviceError(errno.EINVAL, f"ap_config: {text!r} has no {name} "
                              f"(expected 'apm,aqm,adm' as three hex masks)")
        cut = min((i for i in (rest.find(","), rest.find("\n")) if i >= 0), default=-1)
        token, rest = (rest, None) if cut < 0 else (rest[:cut], rest[cut + 1:])
        mask = bitmap.parse_hex(token)
        if mask is None:
            raise DeviceError(errno.EINVAL, f"ap_config: {name} {token!r} is not a mask "
                              f"('0x' optional, then up to 64 hex digits)")
        masks.append(mask)
    return masks[0], masks[1], masks[2]


class LiveGuest:
    """A running guest: its view follows the mdev's guest matrix (hot plug)."""

    def __init__(self, vfio: VfioAp, mdev: VfioMdev) -> None:
        self._vfio = vfio
        self.mdev = mdev

    def view(self) -> GuestView:
        mdev = self.mdev
        apqns = tuple(_apqns(mdev.guest_apm, mdev.guest_aqm))
        types: dict[int, CardType] = {a: self._vfio.bus.cards[a].type
                                      for a in bitmap.ids(mdev.guest_apm)}
        return GuestView(mdev.uuid, mdev.guest_apm, mdev.guest_aqm, mdev.guest_adm, apqns,
                         types)

    def show_apqns(self) -> str:
        return self.view().show_apqns()

    def show_crycb(self) -> str:
        return self.view().show_crycb()

    def show_lszcrypt(self) -> str:
        return self.view().show_lszcrypt()


class VfioAp(MdevType):
    """``/sys/devices/vfio_ap/matrix``, its mdev type and mdevs, on an upstream ApBus."""

    ATTRS = (Attr("features", 0o444),)
    MDEV = VfioMdev

    def __init__(self, bus: ApBus, *, max_instances: int | None = None) -> None:
        if not bus.flavor.masks:
            raise ValueError("the vfio_ap flavor needs a bus with apmask/aqmask")
        super().__init__(bus, max_instances)
        config = bus.config
        # QCI: what the host's AP configuration has; assignments beyond it are allowed
        # (over-provisioning) but filtered out of the guest matrix.
        self.max_adapter_id = config.max_adapter_id
        self.max_domain_id = config.max_domain_id
        self.host_apm = bitmap.from_ids(config.cards)
        self.host_aqm = bitmap.from_ids(config.domains)
        self.host_adm = bitmap.from_ids(config.control_domains or ())
        bus.passthrough_ops = _VfioApOps(self)

    def show_features(self) -> str:
        return f"{FEATURES}\n"

    def remove(self, mdev: VfioMdev) -> None:
        if mdev.uuid in self.guests:
            raise DeviceError(errno.EBUSY, f"remove: mdev {mdev.uuid} is in use by a running "
                              f"guest")
        del self.mdevs[mdev.uuid]
        mdev.alive = False

    # -- the rules ---------------------------------------------------------------------------

    def validate(self, mdev: VfioMdev, attr: str, what: str, apm: int, aqm: int) -> None:
        """``vfio_ap_mdev_validate_masks`` for ``mdev`` taking the matrix apm x aqm."""
        bus = self.bus
        host_apm, host_aqm = apm & bus.apmask, aqm & bus.aqmask
        if host_apm and host_aqm:
            raise DeviceError(errno.EADDRNOTAVAIL, f"{attr}: {what} would give mdev "
                              f"{mdev.uuid} queue {_first_apqn(host_apm, host_aqm)}, which "
                              f"apmask x aqmask reserves for the host")
        held = self.holder(apm, aqm, skip=mdev)
        if held is not None:
            apqn, other = held
            raise DeviceError(errno.EADDRINUSE, f"{attr}: Userspace may not assign queue "
                              f"{apqn} to mdev: already assigned to {other}")

    def holder(self, apm: int, aqm: int, skip: VfioMdev | None = None
               ) -> tuple[str, str] | None:
        """(the first APQN of apm x aqm some mdev holds, its uuid), or None."""
        for other in self.mdevs.values():
            shared_apm, shared_aqm = apm & other.apm, aqm & other.aqm
            if other is not skip and shared_apm and shared_aqm:
                return _first_apqn(shared_apm, shared_aqm), other.uuid
        return None

    def filter_matrix(self, mdev: VfioMdev) -> None:
        """``vfio_ap_mdev_filter_matrix``: the guest gets the configured ids of the matrix,
        minus every adapter with a queue not bound to vfio_ap (an APQN cannot be filtered
        alone)."""
        apm = mdev.apm & self.host_apm
        aqm = mdev.aqm & self.host_aqm
        passthrough = self.bus.passthrough
        domains = list(bitmap.ids(aqm))
        for adapter in bitmap.ids(apm):
            queues = self.bus.cards[adapter].queues
            if any(queues[d].driver is not passthrough for d in domains):
                apm &= ~(1 << adapter)
        mdev.guest_apm, mdev.guest_aqm = apm, aqm

    def filter_cdoms(self, mdev: VfioMdev) -> None:
        """``vfio_ap_mdev_filter_cdoms``: the configured control domains."""
        mdev.guest_adm = mdev.adm & self.host_adm

    def owner(self, adapter: int, domain: int) -> VfioMdev | None:
        return next((m for m in self.mdevs.values() if m.holds(adapter, domain)), None)

    # -- guests ------------------------------------------------------------------------------

    def start_guest(self, uuid: str) -> LiveGuest:
        """QEMU ``-device vfio-ap,sysfsdev=.../<uuid>`` opened the mdev."""
        mdev = self.mdevs.get(uuid.lower())
        if mdev is None:
            raise DeviceError(errno.ENOENT, f"start_guest: no mdev {uuid}")
        if mdev.uuid in self.guests:
            raise DeviceError(errno.EBUSY, f"start_guest: a guest already runs with {mdev.uuid}")
        guest = LiveGuest(self, mdev)
        self.guests[mdev.uuid] = guest
        return guest

    def stop_guest(self, uuid: str) -> None:
        if self.guests.pop(uuid.lower(), None) is None:
            raise DeviceError(errno.ENOENT, f"stop_guest: no guest runs with mdev {uuid}")

    def _restored(self) -> None:
        """Guest matrices are not state: they follow from the matrices and the bindings."""
        for mdev in self.mdevs.values():
            self.filter_matrix(mdev)
            self.filter_cdoms(mdev)


class _VfioApOps(PassthroughOps):
    """What the vfio_ap ``ap_driver`` tells the bus (vfio_ap_drv.c callbacks)."""

    def __init__(self, vfio: VfioAp) -> None:
        self.vfio = vfio

    def status_of(self, queue: Queue) -> str:
        mdev = self.vfio.owner(queue.adapter, queue.domain)
        if mdev is None:
            return "unassigned\n"
        return "in use\n" if mdev.uuid in self.vfio.guests else "assigned\n"

    def in_use(self, apm: int, aqm: int) -> tuple[str, str] | None:
        return self.vfio.holder(apm, aqm)

    def probed(self, queue: Queue) -> None:
        """``vfio_ap_mdev_probe_queue``: the holder's guest matrix is filtered again."""
        mdev = self.vfio.owner(queue.adapter, queue.domain)
        if mdev is not None:
            self.vfio.filter_matrix(mdev)

    def removed(self, queue: Queue) -> None:
        """``vfio_ap_mdev_remove_queue``: the adapter leaves the holder's guest matrix."""
        mdev = self.vfio.owner(queue.adapter, queue.domain)
        if (mdev is not None and mdev.guest_apm >> queue.adapter & 1
                and mdev.guest_aqm >> queue.domain & 1):
            mdev.guest_apm &= ~(1 << queue.adapter)

