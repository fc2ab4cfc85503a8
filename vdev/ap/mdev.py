"""The mdev core (drivers/vfio/mdev) as both AP passthrough flavors use it.

Owns: the mdev type's common files (``create``, ``name``, ``device_api``,
``available_instances``), the UUID rules of ``create`` and ``remove``, the set of mediated
devices of a type and of the guests running on them, and the durable state of those devices
(their UUIDs, in creation order, with their three masks).

Must not know: what an assignment means or which APQNs a guest sees (each flavor's model:
:mod:`vdev.ap.matrix`, :mod:`vdev.ap.vfio_ap`), FUSE.

Theory of operation: a flavor subclasses :class:`MdevType`, names its device class in
``MDEV`` and keeps whatever index it needs current; after a restore the base class has put
the saved masks onto the devices (reusing the objects of UUIDs that survive, so open files of
those stay valid) and calls :meth:`MdevType._restored` for the flavor to rebuild its indexes.
"""

from __future__ import annotations

import errno
import string
from collections.abc import Collection, Iterable
from typing import Any, ClassVar

from vdev import state as check
from vdev.ap import bitmap
from vdev.ap.bus import ApBus, Attr, apqn_name
from vdev.ap.host import HostConfig
from vdev.errors import DeviceError
from vdev.kparse import kstrtoul

TYPE_NAME = "VFIO AP Passthrough Device"
DEVICE_API = "vfio-ap"
UUID_LEN = 36
_UUID_DASHES = (8, 13, 18, 23)
_HEX = frozenset(string.hexdigits)
MDEV_STATE = ("uuid", "adapters", "domains", "control_domains")

Apqn = tuple[int, int]

ASSIGN_ATTRS = tuple(Attr(f"{verb}_{what}", 0o200) for what in ("adapter", "domain",
                     "control_domain") for verb in ("assign", "unassign"))
"""The six write-only files of every AP mdev, in the kernel's order."""


def _parse_uuid(text: str) -> str:
    """mdev core ``create``: 36 or 37 bytes, the first 36 a UUID (``uuid_is_valid``).

    The kernel never looks at the 37th byte, so it need not be a newline.  ``text`` holds one
    character per byte written (latin-1), so its length is the kernel's ``count``.
    """
    if len(text) not in (UUID_LEN, UUID_LEN + 1):
        raise DeviceError(errno.EINVAL, f"create: {text!r} is not a UUID "
                          f"(expected 36 characters and at most one more, e.g. a newline)")
    uuid = text[:UUID_LEN]
    for i, ch in enumerate(uuid):
        if (ch != "-") if i in _UUID_DASHES else (ch not in _HEX):
            raise DeviceError(errno.EINVAL, f"create: {uuid!r} is not a UUID "
                              f"(expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx in hex)")
    return uuid.lower()


def _canonical(uuid: str) -> str | None:
    """The form ``create`` stores ``uuid`` in, or None if ``create`` would refuse it."""
    try:
        return _parse_uuid(uuid)
    except DeviceError:
        return None


def new_uuid(text: str, existing: Collection[str], max_instances: int) -> str:
    """mdev core ``create``: EINVAL bad UUID, EEXIST duplicate, EUSERS none left."""
    uuid = _parse_uuid(text)
    if uuid in existing:
        raise DeviceError(errno.EEXIST, f"create: mdev {uuid} already exists")
    if len(existing) >= max_instances:
        raise DeviceError(errno.EUSERS, f"create: no instances left "
                          f"(all {max_instances} in use)")
    return uuid


def remove_requested(text: str) -> bool:
    """mdev core ``remove``: ``kstrtoul(buf, 0)``, any parse failure EINVAL, 0 = no-op."""
    try:
        return kstrtoul(text, 0, name="remove") != 0
    except DeviceError as exc:
        raise DeviceError(errno.EINVAL, exc.message) from None


Masks = tuple[int, int, int]
"""An mdev's (APM, AQM, ADM)."""


def export_mdevs(mdevs: Iterable[Any]) -> dict[str, Any]:
    """Mediated devices (anything with ``uuid``, ``apm``, ``aqm``, ``adm``) as plain data, in
    the given (creation) order: the ``matrix`` part of a durable state, in both flavors."""
    return {"mdevs": [{"uuid": mdev.uuid, "adapters": list(bitmap.ids(mdev.apm)),
                       "domains": list(bitmap.ids(mdev.aqm)),
                       "control_domains": list(bitmap.ids(mdev.adm))}
                      for mdev in mdevs]}


def check_mdevs(state: Any, config: HostConfig, max_instances: int) -> dict[str, Masks]:
    """Validate what :func:`export_mdevs` made: {uuid: masks}, in order; ValueError naming the
    key and value for a bad UUID, an id above the bus maximum, too many mdevs, or an APQN in
    two of them."""
    mdevs = check.sequence("matrix.mdevs", check.table("matrix", state, ("mdevs",))["mdevs"])
    if len(mdevs) > max_instances:
        raise ValueError(f"matrix.mdevs: {len(mdevs)} mdevs, more than the "
                         f"{max_instances} instances of the type")
    saved: dict[str, Masks] = {}
    owner: dict[Apqn, str] = {}
    for index, item in enumerate(mdevs):
        where = f"matrix.mdevs[{index}]"
        item = check.table(where, item, MDEV_STATE)
        uuid = item["uuid"]
        if not isinstance(uuid, str) or len(uuid) != UUID_LEN or _canonical(uuid) != uuid:
            raise ValueError(f"{where}.uuid: {uuid!r} is not a lower-case UUID")
        if uuid in saved:
            raise ValueError(f"{where}.uuid: mdev {uuid} is listed twice")
        masks = []
        for key, maximum in (("adapters", config.max_adapter_id),
                             ("domains", config.max_domain_id),
                             ("control_domains", config.max_domain_id)):
            ids = check.sequence(f"{where}.{key}", item[key])
            masks.append(bitmap.from_ids(
                check.integer(f"{where}.{key}[{i}]", v, 0, maximum) for i, v in enumerate(ids)))
        apm, aqm, adm = masks
        for adapter in bitmap.ids(apm):
            for domain in bitmap.ids(aqm):
                other = owner.setdefault((adapter, domain), uuid)
                if other != uuid:
                    raise ValueError(f"{where}: queue {apqn_name(adapter, domain)} is "
                                     f"assigned to both {other} and {uuid}")
        saved[uuid] = (apm, aqm, adm)
    return saved


class MdevType:
    """An mdev type on the matrix parent: its devices, the guests on them, their state."""

    TYPE_ATTRS = (
        Attr("create", 0o200),
        Attr("name", 0o444),
        Attr("device_api", 0o444),
        Attr("available_instances", 0o444),
    )
    MDEV: ClassVar[type]
    """The flavor's device class, built as ``MDEV(type, uuid)``."""

    def __init__(self, bus: ApBus, max_instances: int | None) -> None:
        self.bus = bus
        self.max_instances = bus.config.mdev_instances if max_instances is None else max_instances
        self.mdevs: dict[str, Any] = {}
        self.guests: dict[str, Any] = {}

    def show_name(self) -> str:
        return f"{TYPE_NAME}\n"

    def show_device_api(self) -> str:
        return f"{DEVICE_API}\n"

    def show_available_instances(self) -> str:
        return f"{self.max_instances - len(self.mdevs)}\n"

    def store_create(self, text: str) -> None:
        self.create(text)

    def create(self, text: str) -> Any:
        """``uuidgen > create``: EINVAL bad UUID, EEXIST duplicate, EUSERS none left."""
        uuid = new_uuid(text, self.mdevs.keys(), self.max_instances)
        mdev = self.MDEV(self, uuid)
        self.mdevs[uuid] = mdev
        return mdev

    def start_guest(self, uuid: str) -> Any:
        """QEMU opened the mdev ``uuid`` for a guest; returns the guest's view of it."""
        raise NotImplementedError

    def stop_guest(self, uuid: str) -> None:
        raise NotImplementedError

    def stop_all_guests(self) -> None:
        for uuid in list(self.guests):
            self.stop_guest(uuid)

    # -- durable state ---------------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The mediated devices, in creation order, with their assigned ids (plain JSON data).

        Running guests are runtime, not state: they stand for QEMU processes.
        """
        return export_mdevs(self.mdevs.values())

    def check_state(self, state: Any) -> dict[str, Masks]:
        return check_mdevs(state, self.bus.config, self.max_instances)

    def restore_state(self, state: Any) -> None:
        """Make the mdevs exactly those of ``state`` (from :meth:`export_state`), in its order.

        Checked first (ValueError naming the key and value; nothing changes).  An mdev whose
        UUID exists now keeps its object (open files stay valid) and gets the saved masks; the
        others are removed, and a guest running on a removed one stops.  Call after the bus is
        restored: the flavor's indexes are rebuilt against its bindings.
        """
        saved = self.check_state(state)
        for uuid in [u for u in self.guests if u not in saved]:
            self.stop_guest(uuid)
        old = self.mdevs
        self.mdevs = {}
        for uuid, (apm, aqm, adm) in saved.items():
            mdev = old.pop(uuid, None) or self.MDEV(self, uuid)
            mdev.apm, mdev.aqm, mdev.adm = apm, aqm, adm
            self.mdevs[uuid] = mdev
        for mdev in old.values():
            mdev.alive = False
        self._restored()

    def _restored(self) -> None:
        """The masks of :attr:`mdevs` were just replaced: rebuild what depends on them."""
