"""The s390 AP bus: card and queue devices, their drivers, and the bus attributes.

Owns: the device objects (:class:`Card`, :class:`Queue`), driver-core bind/unbind semantics
(drivers/base/bus.c), every ``/sys/bus/ap`` attribute, every card and queue attribute
(ap_card.c, ap_queue.c, zcrypt_card.c, zcrypt_queue.c).

Must not know: mediated devices, guests or assignment rules (a passthrough flavor such as
:mod:`vdev.ap.matrix` or :mod:`vdev.ap.vfio_ap` plugs in through :attr:`ApBus.passthrough_ops`,
the callbacks a passthrough ``ap_driver`` gives the bus), FUSE, trio, files.

Theory of operation: the bus is built once from a :class:`~vdev.ap.host.HostConfig` and never
gains or loses devices (no hot plug).  What changes is which driver each device is bound to and
a handful of flags and counters.  Every attribute is a ``show_<name>()`` method returning the
complete file text, and writable ones a ``store_<name>(text)`` method that returns None or
raises :class:`~vdev.errors.DeviceError` before changing anything.  The ``*_ATTRS`` tables
next to each class list the files with their modes and when they exist, so a file system can
walk the declarations instead of knowing AP details.

Which files exist depends on the binding, as in the kernel where the zcrypt driver adds them:
a card or queue bound to a host driver (cex4card, cex4queue, ...) has ``type``/``online``/
``load``; a queue bound to the passthrough driver has ``status`` instead
(:meth:`Attr.present`).

Durable state: :meth:`ApBus.export_state` gives everything a write can change (settings,
each device's driver, flags and counters) as plain JSON data, and :meth:`ApBus.restore_state`
puts it back onto the same device and driver objects, so a file system that caches them keeps
working across a restore.

Upstream kernels (the ``vfio_ap`` flavor, :attr:`BusFlavor.masks`) split the APQNs between
the host and guests with ``/sys/bus/ap/apmask`` x ``aqmask`` (``ap_perms``): a queue inside
both masks may only be bound to a default (host) driver, one outside only to ``vfio_ap``.
After a mask change every queue whose side flipped is re-probed (``ap_bus_revise_bindings``);
returning APQNs to the host while an mdev holds them is refused with EBUSY, asked through the
passthrough driver's ``in_use`` callback.

Scale: 256 adapters x 256 domains are 65,536 queues; devices use ``__slots__``, lookups are
dict hits, and no store scans more than one card's queues, except a mask write, which visits
the queues of the ids it changes.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from vdev import state as check
from vdev.ap import bitmap
from vdev.ap.cardtypes import CARD_TYPES, CardType
from vdev.ap.host import KNOWN_FEATURES, HostConfig
from vdev.errors import DeviceError
from vdev.kparse import kstrtobool, kstrtoul, sscanf_int, sysfs_streq_name

CONFIG_TIME_MIN, CONFIG_TIME_MAX = 5, 120
DEFAULT_CONFIG_TIME = 30
DEFAULT_POLL_TIMEOUT_NS = 250_000
MAX_POLL_TIMEOUT_NS = 120_000_000_000
UEVENT_ACTIONS = ("add", "remove", "change", "move", "online", "offline", "bind", "unbind")


class Presence(enum.Enum):
    """When an attribute file exists on a device."""

    ALWAYS = "always"
    HOST = "bound to a host (zcrypt) driver"
    PASSTHROUGH = "bound to the passthrough driver"
    MASKS = "on kernels with apmask/aqmask"


class Attr(NamedTuple):
    """One sysfs file: its name (``show_<name>``/``store_<name>``), mode and existence rule."""

    name: str
    mode: int
    presence: Presence = Presence.ALWAYS

    def present(self, device: Card | Queue | ApBus) -> bool:
        """Whether the file exists on ``device`` under its current binding (or bus flavor)."""
        if self.presence is Presence.ALWAYS:
            return True
        if self.presence is Presence.MASKS:
            return isinstance(device, ApBus) and device.flavor.masks
        if isinstance(device, ApBus):
            return False
        if self.presence is Presence.HOST:
            return device.has_host_attrs
        return device.has_status


@dataclass(frozen=True)
class BusFlavor:
    """What differs between kernels on the same bus model.

    ``already_bound_errno``: ``bind`` of a bound device fails with ENODEV before Linux 5.15 and
    EBUSY from 5.15 on.  ``card_types``: the types this kernel's host drivers know.
    ``masks``: the bus has ``apmask``/``aqmask`` (Linux >= 4.19), which decide the driver a
    queue may be bound to and the domains ``ap_domain`` accepts.  ``dash_when_uninitiated``:
    a queue no host driver has initialised shows ``request_count`` ``-`` (mainline).
    """

    passthrough_driver: str
    already_bound_errno: int
    card_types: frozenset[str]
    masks: bool = False
    dash_when_uninitiated: bool = False


AP_MATRIX_FLAVOR = BusFlavor(
    passthrough_driver="vfio_ap_matrix",
    already_bound_errno=errno.ENODEV,
    card_types=frozenset(CARD_TYPES),
)

VFIO_AP_FLAVOR = BusFlavor(
    passthrough_driver="vfio_ap",
    already_bound_errno=errno.EBUSY,
    # Upstream's zcrypt and vfio_ap drivers only take CEX4 and newer (hwtype >= 10).
    card_types=frozenset(name for name, t in CARD_TYPES.items() if t.hwtype >= 10),
    masks=True,
    dash_when_uninitiated=True,
)


def apqn_name(adapter: int, domain: int) -> str:
    """The queue device name, ``xx.yyyy`` in lower-case hex (``05.0047``)."""
    return f"{adapter:02x}.{domain:04x}"


def _int_line(value: int) -> str:
    return f"{value}\n"


def _zero_or_one(text: str, name: str) -> bool:
    """The zcrypt/ap ``sscanf(buf, "%d\\n", &v)`` + ``v < 0 || v > 1`` rule."""
    value = sscanf_int(text, 10, name=name)
    if value not in (0, 1):
        raise DeviceError(errno.EINVAL, f"{name}: {value} is neither 0 nor 1")
    return value == 1


class Driver:
    """An AP device driver: which devices it can handle and which are bound to it now.

    ``devices`` maps name → bound device (O(1) bind/unbind): the symlinks of
    ``/sys/bus/ap/drivers/<name>/``.
    """

    __slots__ = ("bus", "devices", "kind", "name", "passthrough", "types")

    def __init__(self, name: str, kind: type[Card] | type[Queue], types: frozenset[str],
                 *, passthrough: bool = False) -> None:
        self.bus: ApBus | None = None  # set when the bus registers the driver
        self.name = name
        self.kind = kind
        self.types = types
        self.passthrough = passthrough
        self.devices: dict[str, Card | Queue] = {}

    def store_bind(self, text: str) -> None:
        """``/sys/bus/ap/drivers/<name>/bind``."""
        assert self.bus is not None
        self.bus.bind(self.name, text)

    def store_unbind(self, text: str) -> None:
        """``/sys/bus/ap/drivers/<name>/unbind``."""
        assert self.bus is not None
        self.bus.unbind(self.name, text)

    def matches(self, device: Card | Queue) -> bool:
        """``ap_bus_match``: the driver's id table lists the device's kind and type."""
        return isinstance(device, self.kind) and device.type.name in self.types

    def _attach(self, device: Card | Queue) -> None:
        self.devices[device.name] = device
        device.driver = self

    def _detach(self, device: Card | Queue) -> None:
        del self.devices[device.name]
        device.driver = None


class Card:
    """An AP adapter (``/sys/devices/ap/cardXX``); its queues are child devices."""

    ATTRS = (
        Attr("hwtype", 0o444),
        Attr("raw_hwtype", 0o444),
        Attr("depth", 0o444),
        Attr("ap_functions", 0o444),
        Attr("request_count", 0o644),
        Attr("requestq_count", 0o444),
        Attr("pendingq_count", 0o444),
        Attr("modalias", 0o444),
        Attr("config", 0o644),
        Attr("chkstop", 0o444),
        Attr("max_msg_size", 0o444),
        Attr("type", 0o444, Presence.HOST),
        Attr("online", 0o644, Presence.HOST),
        Attr("load", 0o444, Presence.HOST),
    )
    has_status = False
    """Cards are never bound to the passthrough driver, which takes queues only."""

    __slots__ = ("bus", "chkstop", "config", "driver", "id", "name", "online", "queues",
                 "queues_by_name", "request_count", "type")

    def __init__(self, bus: ApBus, adapter: int, card_type: CardType, *, config: bool,
                 chkstop: bool) -> None:
        self.bus = bus
        self.id = adapter
        self.name = f"card{adapter:02x}"
        self.type = card_type
        self.config = config
        self.chkstop = chkstop
        self.online = True
        self.request_count = 0
        self.driver: Driver | None = None
        self.queues: dict[int, Queue] = {}
        self.queues_by_name: dict[str, Queue] = {}

    @property
    def has_host_attrs(self) -> bool:
        """Bound to a card driver (only host drivers bind cards): type/online/load exist."""
        return self.driver is not None

    def show_hwtype(self) -> str:
        return _int_line(self.type.hwtype)

    def show_raw_hwtype(self) -> str:
        return _int_line(self.type.raw_hwtype)

    def show_depth(self) -> str:
        return _int_line(self.type.depth)

    def show_ap_functions(self) -> str:
        return f"0x{self.type.functions:08X}\n"

    def show_request_count(self) -> str:
        return _int_line(self.request_count)

    def store_request_count(self, text: str) -> None:
        """Any write zeroes the card's counter and those of all its queues."""
        self.request_count = 0
        for queue in self.queues.values():
            queue.request_count = 0

    def show_requestq_count(self) -> str:
        return _int_line(sum(q.requestq_count for q in self.queues.values()))

    def show_pendingq_count(self) -> str:
        return _int_line(sum(q.pendingq_count for q in self.queues.values()))

    def show_modalias(self) -> str:
        return f"ap:t{self.type.hwtype:02X}\n"

    def show_config(self) -> str:
        return _int_line(int(self.config))

    def store_config(self, text: str) -> None:
        """SCLP (de)configure the adapter; its queues follow (they read the card's state)."""
        self.config = _zero_or_one(text, "config")

    def show_chkstop(self) -> str:
        return _int_line(int(self.chkstop))

    def show_max_msg_size(self) -> str:
        return _int_line(self.type.max_msg_size)

    def show_type(self) -> str:
        return f"{self.type.name}\n"

    def show_online(self) -> str:
        return _int_line(int(self.usable and self.online))

    def store_online(self, text: str) -> None:
        """zcrypt card online: 0/1; a deconfigured or check-stopped card cannot go online.

        The new state is forced onto every queue bound to a host driver, as
        ``zcrypt_card_online_store`` does.
        """
        online = _zero_or_one(text, "online")
        if online and not self.usable:
            raise DeviceError(errno.ENODEV, f"online: {self.name} cannot go online while "
                              f"{self.unusable_reason}")
        self.online = online
        for queue in self.queues.values():
            if queue.has_host_attrs:
                queue.set_online(online)

    def show_load(self) -> str:
        return "0\n"

    @property
    def usable(self) -> bool:
        return self.config and not self.chkstop

    @property
    def unusable_reason(self) -> str:
        return "it is check-stopped" if self.chkstop else "it is deconfigured (config is 0)"


class Queue:
    """An AP queue (``/sys/devices/ap/cardXX/XX.YYYY``), the APQN (adapter, domain)."""

    ATTRS = (
        Attr("request_count", 0o644),
        Attr("requestq_count", 0o444),
        Attr("pendingq_count", 0o444),
        Attr("reset", 0o644),
        Attr("interrupt", 0o444),
        Attr("config", 0o444),
        Attr("chkstop", 0o444),
        Attr("ap_functions", 0o444),
        Attr("online", 0o644, Presence.HOST),
        Attr("load", 0o444, Presence.HOST),
        Attr("status", 0o444, Presence.PASSTHROUGH),
    )

    __slots__ = ("card", "domain", "driver", "name", "online", "pendingq_count",
                 "request_count", "requestq_count")

    def __init__(self, card: Card, domain: int) -> None:
        self.card = card
        self.domain = domain
        self.name = apqn_name(card.id, domain)
        self.online = True
        self.request_count = 0
        self.requestq_count = 0
        self.pendingq_count = 0
        self.driver: Driver | None = None

    @property
    def adapter(self) -> int:
        return self.card.id

    @property
    def type(self) -> CardType:
        return self.card.type

    @property
    def has_host_attrs(self) -> bool:
        """Bound to a host queue driver: ``online`` and ``load`` exist."""
        return self.driver is not None and not self.driver.passthrough

    @property
    def has_status(self) -> bool:
        """Bound to the passthrough driver: ``status`` exists (and ``online`` does not)."""
        return self.driver is not None and self.driver.passthrough

    def show_request_count(self) -> str:
        if self.card.bus.flavor.dash_when_uninitiated and not self.has_host_attrs:
            return "-\n"
        return _int_line(self.request_count)

    def store_request_count(self, text: str) -> None:
        """Any write zeroes the counter."""
        self.request_count = 0

    def show_requestq_count(self) -> str:
        return _int_line(self.requestq_count)

    def show_pendingq_count(self) -> str:
        return _int_line(self.pendingq_count)

    def show_reset(self) -> str:
        """Resets complete synchronously in the model, so no reset is ever in progress."""
        return "No Reset Timer set.\n"

    def store_reset(self, text: str) -> None:
        """Any write flushes the queue (requests in flight are dropped) and resets it."""
        self.flush()

    def flush(self) -> None:
        """Drop the requests in flight, as a reset, going offline or an unbind does."""
        self.requestq_count = 0
        self.pendingq_count = 0

    def set_online(self, online: bool) -> None:
        self.online = online
        if not online:
            self.flush()

    def show_interrupt(self) -> str:
        """Interrupts are enabled by the host driver's state machine, if the bus has them."""
        if self.card.bus.interrupts and self.has_host_attrs:
            return "Interrupts enabled.\n"
        return "Interrupts disabled.\n"

    def show_config(self) -> str:
        return _int_line(int(self.card.config))

    def show_chkstop(self) -> str:
        return _int_line(int(self.card.chkstop))

    def show_ap_functions(self) -> str:
        return self.card.show_ap_functions()

    def show_online(self) -> str:
        return _int_line(int(self.card.usable and self.online))

    def store_online(self, text: str) -> None:
        """zcrypt queue online: 0/1; needs a usable card, and an online card driver instance."""
        online = _zero_or_one(text, "online")
        card = self.card
        if online and not card.usable:
            raise DeviceError(errno.ENODEV, f"online: {self.name} cannot go online while "
                              f"{card.name} {card.unusable_reason.removeprefix('it ')}")
        if online and card.has_host_attrs and not card.online:
            raise DeviceError(errno.EINVAL, f"online: {self.name} cannot go online while "
                              f"{card.name} is offline")
        self.set_online(online)

    def show_load(self) -> str:
        return "0\n"

    def show_status(self) -> str:
        """Passthrough queue status (``in use``/``assigned``/``unassigned``) from the flavor."""
        return self.card.bus.passthrough_ops.status_of(self)


FIELDS: dict[type, tuple[str, ...]] = {
    Card: ("config", "online", "request_count"),
    Queue: ("online", "request_count", "requestq_count", "pendingq_count"),
}
"""A device's durable state besides its driver: the attributes writes change."""
BUS_STATE = ("ap_domain", "config_time", "poll_thread", "poll_timeout", "scans",
             "drivers_autoprobe", "apmask", "aqmask", "cards", "queues")



class PassthroughOps:
    """The callbacks of the passthrough ``ap_driver`` (no mdevs: every queue unassigned).

    A flavor model replaces :attr:`ApBus.passthrough_ops` with its own implementation.
    """

    def status_of(self, queue: Queue) -> str:
        """The queue's ``status`` file."""
        return "unassigned\n"

    def in_use(self, apm: int, aqm: int) -> tuple[str, str] | None:
        """``ap_driver->in_use``: (an APQN of apm x aqm an mdev holds, that mdev), or None."""
        return None

    def probed(self, queue: Queue) -> None:
        """The queue was just bound to the passthrough driver."""

    def removed(self, queue: Queue) -> None:
        """The queue is leaving the passthrough driver."""


class ApBus:
    """``/sys/bus/ap`` with its devices and drivers, built from a host configuration."""

    ATTRS = (
        Attr("ap_domain", 0o644),
        Attr("ap_control_domain_mask", 0o444),
        Attr("ap_usage_domain_mask", 0o444),
        Attr("ap_adapter_mask", 0o444),
        Attr("config_time", 0o644),
        Attr("poll_thread", 0o644),
        Attr("ap_interrupts", 0o444),
        Attr("poll_timeout", 0o644),
        Attr("ap_max_domain_id", 0o444),
        Attr("ap_max_adapter_id", 0o444),
        Attr("scans", 0o644),
        Attr("bindings", 0o444),
        Attr("features", 0o444),
        Attr("apmask", 0o644, Presence.MASKS),
        Attr("aqmask", 0o644, Presence.MASKS),
        Attr("drivers_probe", 0o200),
        Attr("drivers_autoprobe", 0o644),
        Attr("uevent", 0o200),
    )
    DRIVER_ATTRS = (Attr("bind", 0o200), Attr("unbind", 0o200))

    def __init__(self, config: HostConfig, flavor: BusFlavor = AP_MATRIX_FLAVOR) -> None:
        self.config = config
        self.flavor = flavor
        # Replaced by the passthrough flavor (ApMatrix, VfioAp): queue status, in_use, probes.
        self.passthrough_ops = PassthroughOps()
        # ap_perms: the APQNs reserved for the host's default drivers (all, unless masks).
        self.apmask = config.apmask
        self.aqmask = config.aqmask
        self.ap_domain: int = -1 if config.ap_domain is None else config.ap_domain
        self.interrupts = config.interrupts
        self.config_time = DEFAULT_CONFIG_TIME
        self.poll_thread = False
        self.poll_timeout = DEFAULT_POLL_TIMEOUT_NS
        self.scans = 1
        self.drivers_autoprobe = True
        self.drivers = self._make_drivers(flavor, config)
        for driver in self.drivers.values():
            driver.bus = self
        self.passthrough = self.drivers[flavor.passthrough_driver]
        self.cards: dict[int, Card] = {}
        self.cards_by_name: dict[str, Card] = {}
        # Every device by name (``/sys/bus/ap/devices``): cards and queues, in build order.
        self.devices: dict[str, Card | Queue] = {}
        self._bound_queues = 0
        self._n_queues = 0
        self._build(config)

    @staticmethod
    def _make_drivers(flavor: BusFlavor, config: HostConfig) -> dict[str, Driver]:
        for adapter, type_name in config.cards.items():
            if type_name not in flavor.card_types:
                raise ValueError(f"card {adapter:02x}: type {type_name} is not supported by "
                                 f"this kernel's AP drivers")
        card_drivers: dict[str, set[str]] = {}
        queue_drivers: dict[str, set[str]] = {}
        for name in flavor.card_types:
            card_type = CARD_TYPES[name]
            card_drivers.setdefault(card_type.card_driver, set()).add(name)
            queue_drivers.setdefault(card_type.queue_driver, set()).add(name)
        drivers = [Driver(n, Card, frozenset(t)) for n, t in card_drivers.items()]
        drivers += [Driver(n, Queue, frozenset(t)) for n, t in queue_drivers.items()]
        drivers.append(Driver(flavor.passthrough_driver, Queue, flavor.card_types,
                              passthrough=True))
        return {d.name: d for d in sorted(drivers, key=lambda d: d.name)}

    def _build(self, config: HostConfig) -> None:
        bindings = config.bindings
        unknown = set(bindings)
        for adapter, type_name in config.cards.items():
            card_type = CARD_TYPES[type_name]
            card = Card(self, adapter, card_type, config=adapter not in config.deconfigured,
                        chkstop=adapter in config.chkstopped)
            self.cards[adapter] = card
            self.cards_by_name[card.name] = card
            self.devices[card.name] = card
            unknown.discard(card.name)
            self._initial_bind(card, self._initial_driver_name(card))
            for domain in config.domains:
                queue = Queue(card, domain)
                card.queues[domain] = queue
                card.queues_by_name[queue.name] = queue
                self.devices[queue.name] = queue
                self._n_queues += 1
                unknown.discard(queue.name)
                self._initial_bind(queue, self._initial_driver_name(queue))
        if unknown:
            raise ValueError(f"bindings: no such device {sorted(unknown)[0]!r} on this host")

    def _initial_driver_name(self, device: Card | Queue) -> str:
        """The configured boot binding: ``[bindings]``, else the driver a probe picks."""
        return self.config.bindings.get(device.name, self._probe_driver(device).name)

    def _probe_driver(self, device: Card | Queue) -> Driver:
        """The driver an automatic probe binds ``device`` to: its type's host driver, or for
        a queue outside apmask x aqmask the passthrough driver."""
        if isinstance(device, Card):
            return self.drivers[device.type.card_driver]
        if self.flavor.masks and not self.host_owns(device):
            return self.passthrough
        return self.drivers[device.type.queue_driver]

    def host_owns(self, queue: Queue) -> bool:
        """``ap_perms``: the APQN is in apmask x aqmask, reserved for the default drivers."""
        return bool(self.apmask >> queue.adapter & 1 and self.aqmask >> queue.domain & 1)

    def _initial_bind(self, device: Card | Queue, driver_name: str) -> None:
        if not driver_name:
            return
        driver = self.drivers.get(driver_name)
        if driver is None:
            raise ValueError(f"bindings.{device.name}: unknown driver {driver_name!r} "
                             f"(known: {', '.join(self.drivers)})")
        if not driver.matches(device):
            raise ValueError(f"bindings.{device.name}: {driver_name} does not handle "
                             f"{_describe(device)}")
        refusal = self._probe_refusal(driver, device)
        if refusal:
            raise ValueError(f"bindings.{device.name}: {refusal}")
        self._attach(driver, device)

    # -- structure -------------------------------------------------------------------------

    def queue(self, adapter: int, domain: int) -> Queue | None:
        card = self.cards.get(adapter)
        return None if card is None else card.queues.get(domain)

    def bind(self, driver_name: str, text: str) -> None:
        """``echo NAME > /sys/bus/ap/drivers/<driver_name>/bind``.

        ENODEV for an unknown device or one the driver does not handle; a device that is
        already bound fails with the flavor's errno (ENODEV before Linux 5.15, EBUSY after).
        """
        driver = self.drivers[driver_name]
        device = self._lookup("bind", text)
        if not driver.matches(device):
            raise DeviceError(errno.ENODEV,
                              f"bind: {driver.name} does not handle {_describe(device)}")
        if device.driver is not None:
            raise DeviceError(self.flavor.already_bound_errno,
                              f"bind: {device.name} is already bound to {device.driver.name}")
        refusal = self._probe_refusal(driver, device)
        if refusal:
            raise DeviceError(errno.ENODEV, f"bind: {refusal}")
        self._attach(driver, device)

    def _probe_refusal(self, driver: Driver, device: Card | Queue) -> str | None:
        """Why ``ap_device_probe`` rejects the pair: a queue's side of apmask x aqmask must
        match the driver's (default drivers take host APQNs, vfio_ap the others)."""
        if not self.flavor.masks or not isinstance(device, Queue):
            return None
        host = self.host_owns(device)
        if host != driver.passthrough:
            return None
        if host:
            return (f"{device.name} is inside apmask x aqmask (reserved for the host): "
                    f"{driver.name} may not take it")
        return (f"{device.name} is outside apmask x aqmask (reserved for guests): only "
                f"{self.passthrough.name} may take it")

    def unbind(self, driver_name: str, text: str) -> None:
        """``echo NAME > /sys/bus/ap/drivers/<driver_name>/unbind``; ENODEV unless bound here."""
        driver = self.drivers[driver_name]
        device = self._lookup("unbind", text)
        if device.driver is not driver:
            bound = "not bound" if device.driver is None else f"bound to {device.driver.name}"
            raise DeviceError(errno.ENODEV,
                              f"unbind: {device.name} is {bound}, not to {driver.name}")
        self._detach(device)

    def _detach(self, device: Card | Queue) -> None:
        """Remove: the passthrough driver lets go of its queue first, a host driver's requests
        in flight are dropped."""
        driver = device.driver
        assert driver is not None
        if driver.passthrough and isinstance(device, Queue):
            self.passthrough_ops.removed(device)
        driver._detach(device)
        if isinstance(device, Queue):
            self._bound_queues -= 1
            device.flush()

    def _lookup(self, attr: str, text: str) -> Card | Queue:
        name = sysfs_streq_name(text)
        device = self.devices.get(name)
        if device is None:
            raise DeviceError(errno.ENODEV, f"{attr}: no device named {name!r} on the ap bus")
        return device

    def _attach(self, driver: Driver, device: Card | Queue) -> None:
        """Probe: a host driver creates a fresh zcrypt instance, which starts online."""
        driver._attach(device)
        if isinstance(device, Queue):
            self._bound_queues += 1
        if not driver.passthrough:
            device.online = True
        elif isinstance(device, Queue):
            self.passthrough_ops.probed(device)

    # -- durable state ---------------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """Everything a write can change, as plain JSON data (the input of restore_state).

        ``cards``/``queues`` list only the devices that differ from their configured initial
        state (bound as configured, online, counters 0, ``config`` as configured), each with
        its whole record: driver (``""`` = unbound), flags and counters.  That keeps the
        state of a large host small and its export proportional to a scan, not to a document
        of every device.  What the configuration fixes (devices, types, chkstop) is not state.
        """
        cards = {card.name: record for card in self.cards.values()
                 if (record := _record(card)) != self._initial_record(card)}
        queues = {}
        bindings = self.config.bindings
        for card in self.cards.values():
            default = self.drivers[card.type.queue_driver]
            for queue in card.queues.values():
                # A conservative filter first (it is most of a large host's export time):
                # unbound by [bindings], on its type's driver, online, no counts = initial.
                if queue.driver is default and queue.online and not (
                        queue.request_count or queue.requestq_count or queue.pendingq_count
                        or queue.name in bindings):
                    continue
                if (record := _record(queue)) != self._initial_record(queue):
                    queues[queue.name] = record
        return {
            "ap_domain": self.ap_domain,
            "config_time": self.config_time,
            "poll_thread": self.poll_thread,
            "poll_timeout": self.poll_timeout,
            "scans": self.scans,
            "drivers_autoprobe": self.drivers_autoprobe,
            "apmask": self.apmask,
            "aqmask": self.aqmask,
            "cards": cards,
            "queues": queues,
        }

    def restore_state(self, state: Any) -> None:
        """Put the bus into ``state`` (from :meth:`export_state` of a bus of the same config).

        The whole state is checked first (:meth:`check_state`): a missing, unknown or invalid
        key raises ValueError naming it, and nothing changes.  Devices and drivers stay the
        same objects; only bindings, flags and counters change (no probe: ``online`` is
        restored as saved).  Devices the state does not list return to their initial state.
        """
        settings, saved = self.check_state(state)
        for name, value in settings.items():
            setattr(self, name, value)
        for device in self.devices.values():
            record = saved.get(device.name) or self._initial_record(device)
            driver = self.drivers.get(record["driver"])  # "" (unbound) is no driver's name
            if device.driver is not driver:
                if device.driver is not None:
                    device.driver._detach(device)
                if driver is not None:
                    driver._attach(device)
            for name in FIELDS[type(device)]:
                setattr(device, name, record[name])
        self._bound_queues = sum(
            1 for card in self.cards.values() for q in card.queues.values() if q.driver)

    def check_state(self, state: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Validate ``state`` for :meth:`restore_state`: (settings, {device name: record})."""
        state = check.table("bus", state, BUS_STATE)
        full = (1 << 256) - 1
        apmask = check.integer("bus.apmask", state["apmask"], 0, full)
        aqmask = check.integer("bus.aqmask", state["aqmask"], 0, full)
        if not self.flavor.masks and (apmask, aqmask) != (self.apmask, self.aqmask):
            raise ValueError("bus.apmask/aqmask: this flavor's bus has no masks to change")
        # Not checked against aqmask: a mask write may take the default domain away from the
        # host afterwards, and the kernel leaves ap_domain as it is.
        ap_domain = check.integer("bus.ap_domain", state["ap_domain"], -1,
                                  self.config.max_domain_id)
        settings = {
            "apmask": apmask,
            "aqmask": aqmask,
            "ap_domain": ap_domain,
            "config_time": check.integer("bus.config_time", state["config_time"],
                                         CONFIG_TIME_MIN, CONFIG_TIME_MAX),
            "poll_thread": check.boolean("bus.poll_thread", state["poll_thread"]),
            "poll_timeout": check.integer("bus.poll_timeout", state["poll_timeout"], 0,
                                          MAX_POLL_TIMEOUT_NS),
            "scans": check.integer("bus.scans", state["scans"], 1),
            "drivers_autoprobe": check.boolean("bus.drivers_autoprobe",
                                               state["drivers_autoprobe"]),
        }
        saved: dict[str, dict[str, Any]] = {}
        for group, kind in (("cards", Card), ("queues", Queue)):
            for name, record in check.mapping(f"bus.{group}", state[group]).items():
                where = f"bus.{group}.{name}"
                device = self.devices.get(name)
                if not isinstance(device, kind):
                    raise ValueError(f"{where}: no such {group[:-1]} on this host")
                check.table(where, record, ("driver", *FIELDS[kind]))
                self._checked_driver(f"{where}.driver", device, record["driver"])
                for key in FIELDS[kind]:
                    if key in ("config", "online"):
                        check.boolean(f"{where}.{key}", record[key])
                    else:
                        check.integer(f"{where}.{key}", record[key], 0)
                saved[name] = record
        return settings, saved

    def _checked_driver(self, where: str, device: Card | Queue, name: Any) -> Driver | None:
        if name == "":
            return None
        driver = self.drivers.get(name) if isinstance(name, str) else None
        if driver is None:
            raise ValueError(f"{where}: {name!r} is not a driver of this bus "
                             f"(known: {', '.join(self.drivers)})")
        if not driver.matches(device):
            raise ValueError(f"{where}: {name} does not handle {_describe(device)}")
        return driver

    def _initial_record(self, device: Card | Queue) -> dict[str, Any]:
        """What :meth:`export_state` leaves out: the device as the configuration boots it."""
        if isinstance(device, Card):
            return {"driver": self._initial_driver_name(device),
                    "config": device.id not in self.config.deconfigured,
                    "online": True, "request_count": 0}
        return {"driver": self._initial_driver_name(device), "online": True,
                "request_count": 0, "requestq_count": 0, "pendingq_count": 0}

    # -- bus attributes --------------------------------------------------------------------

    def show_ap_domain(self) -> str:
        return _int_line(self.ap_domain)

    def store_ap_domain(self, text: str) -> None:
        """``sscanf("%i")``; within ap_max_domain_id and, where the bus has one, in aqmask.

        The kernel does not look at the usage domain mask: a domain the host cannot use is
        accepted (lszcrypt then warns that the default domain is not available).
        """
        domain = sscanf_int(text, 0, name="ap_domain")
        if domain < 0 or domain > self.config.max_domain_id:
            raise DeviceError(errno.EINVAL, f"ap_domain: {domain} is outside 0.."
                              f"{self.config.max_domain_id} (ap_max_domain_id)")
        if not self.aqmask >> domain & 1:
            raise DeviceError(errno.EINVAL, f"ap_domain: {domain:#04x} is not in aqmask "
                              f"(reserved for guests)")
        self.ap_domain = domain

    def show_ap_control_domain_mask(self) -> str:
        return bitmap.to_sysfs(bitmap.from_ids(self.config.control_domains)) + "\n"

    def show_ap_usage_domain_mask(self) -> str:
        return bitmap.to_sysfs(bitmap.from_ids(self.config.domains)) + "\n"

    def show_ap_adapter_mask(self) -> str:
        return bitmap.to_sysfs(bitmap.from_ids(self.cards)) + "\n"

    def show_ap_interrupts(self) -> str:
        return _int_line(int(self.interrupts))

    def show_config_time(self) -> str:
        return _int_line(self.config_time)

    def store_config_time(self, text: str) -> None:
        value = sscanf_int(text, 10, name="config_time")
        if not CONFIG_TIME_MIN <= value <= CONFIG_TIME_MAX:
            raise DeviceError(errno.EINVAL, f"config_time: {value} is outside "
                              f"{CONFIG_TIME_MIN}..{CONFIG_TIME_MAX} seconds")
        self.config_time = value

    def show_poll_thread(self) -> str:
        return _int_line(int(self.poll_thread))

    def store_poll_thread(self, text: str) -> None:
        self.poll_thread = kstrtobool(text, name="poll_thread")

    def show_poll_timeout(self) -> str:
        return _int_line(self.poll_timeout)

    def store_poll_timeout(self, text: str) -> None:
        value = kstrtoul(text, 0, name="poll_timeout")
        if value > MAX_POLL_TIMEOUT_NS:
            raise DeviceError(errno.EINVAL, f"poll_timeout: {value} ns is above the maximum "
                              f"{MAX_POLL_TIMEOUT_NS} ns (120 s)")
        self.poll_timeout = value

    def show_ap_max_domain_id(self) -> str:
        return _int_line(self.config.max_domain_id)

    def show_ap_max_adapter_id(self) -> str:
        return _int_line(self.config.max_adapter_id)

    def show_scans(self) -> str:
        return _int_line(self.scans)

    def store_scans(self, text: str) -> None:
        """Any write forces a bus rescan; the configuration is static, so only the count moves."""
        self.scans += 1

    def show_bindings(self) -> str:
        """Bound queues / all queues, ``(complete)`` once every queue has a driver."""
        done = " (complete)" if self._bound_queues == self._n_queues else ""
        return f"{self._bound_queues}/{self._n_queues}{done}\n"

    def show_features(self) -> str:
        return " ".join(f for f in KNOWN_FEATURES if f in self.config.features) + "\n"

    def store_drivers_probe(self, text: str) -> None:
        """Attach an unbound device to the first driver whose probe takes it.

        Like ``bus_rescan_devices_helper``: an unknown name is ENODEV, a bound device is
        left alone, and success is reported either way.
        """
        device = self._lookup("drivers_probe", text)
        if device.driver is None:
            self._attach(self._probe_driver(device), device)

    # -- apmask / aqmask (upstream) ----------------------------------------------------------

    def show_apmask(self) -> str:
        return bitmap.to_sysfs(self.apmask) + "\n"

    def store_apmask(self, text: str) -> None:
        """``echo -0x5 > apmask``: take adapter 5 from the host, or give ids back with ``+``."""
        self._set_masks("apmask", self._parse_mask("apmask", text, self.apmask), self.aqmask)

    def show_aqmask(self) -> str:
        return bitmap.to_sysfs(self.aqmask) + "\n"

    def store_aqmask(self, text: str) -> None:
        """``echo -4,-0xab > aqmask``: take domains 4 and 0xab from the host."""
        self._set_masks("aqmask", self.apmask, self._parse_mask("aqmask", text, self.aqmask))

    @staticmethod
    def _parse_mask(attr: str, text: str, current: int) -> int:
        mask = bitmap.parse_mask(text, current)
        if mask is None:
            raise DeviceError(errno.EINVAL, f"{attr}: {text!r} is neither an absolute mask "
                              f"('0x' and up to 64 hex digits) nor relative terms ('+N', "
                              f"'-N', '+N-M', '-N-M' with N <= M < 256, comma-separated)")
        return mask

    def _set_masks(self, attr: str, apmask: int, aqmask: int) -> None:
        """``apmask_commit``/``aqmask_commit`` + ``ap_bus_revise_bindings``.

        APQNs newly given back to the host (new apmask bits x aqmask, or apmask x new aqmask
        bits) must not belong to an mdev: EBUSY, nothing changes.  Then each queue whose side
        flipped is re-probed: removed from its driver and bound to the one the masks dictate.
        """
        returned_apm = apmask & ~self.apmask
        returned_aqm = aqmask & ~self.aqmask
        checks = ((returned_apm, self.aqmask), (self.apmask, returned_aqm))
        for apm, aqm in checks:
            held = self.passthrough_ops.in_use(apm, aqm) if apm and aqm else None
            if held is not None:
                raise DeviceError(errno.EBUSY, f"{attr}: Can not reserve queue {held[0]} for "
                                  f"host driver: in use by mdev {held[1]}")
        old_apm, old_aqm = self.apmask, self.aqmask
        self.apmask, self.aqmask = apmask, aqmask
        for queue in self._queues_of(apmask ^ old_apm, aqmask ^ old_aqm):
            was_host = old_apm >> queue.adapter & 1 and old_aqm >> queue.domain & 1
            if self.host_owns(queue) != bool(was_host):
                if queue.driver is not None:
                    self._detach(queue)
                self._attach(self._probe_driver(queue), queue)

    def _queues_of(self, apm: int, aqm: int) -> Iterator[Queue]:
        """The queues of the adapters in ``apm`` and of the domains in ``aqm``."""
        domains = list(bitmap.ids(aqm))
        for card in self.cards.values():
            if apm >> card.id & 1:
                yield from card.queues.values()
            else:
                yield from (card.queues[d] for d in domains if d in card.queues)

    def show_drivers_autoprobe(self) -> str:
        return _int_line(int(self.drivers_autoprobe))

    def store_drivers_autoprobe(self, text: str) -> None:
        """Only affects devices added later; the model's bus never gains devices."""
        self.drivers_autoprobe = kstrtobool(text, name="drivers_autoprobe")

    def store_uevent(self, text: str) -> None:
        """Synthetic uevent: the action must be a kobject action name (arguments not checked).

        The model has no uevent listeners, so a valid write has no effect.
        """
        body = text[:-1] if text.endswith("\n") else text
        action = body.split(" ", 1)[0]
        if action not in UEVENT_ACTIONS:
            raise DeviceError(errno.EINVAL, f"uevent: {action!r} is not a uevent action "
                              f"({', '.join(UEVENT_ACTIONS)})")


def _record(device: Card | Queue) -> dict[str, Any]:
    """A device's state record: its driver's name (``""`` = unbound) and :data:`FIELDS`."""
    record: dict[str, Any] = {"driver": "" if device.driver is None else device.driver.name}
    for name in FIELDS[type(device)]:
        record[name] = getattr(device, name)
    return record


def _describe(device: Card | Queue) -> str:
    kind = "card" if isinstance(device, Card) else "queue"
    return f"{device.name} (a {device.type.name} {kind})"
