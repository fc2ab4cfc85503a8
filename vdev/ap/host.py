"""The host LPAR's AP configuration: which cards and domains exist and how they start bound.

Owns: :class:`HostConfig` (validated, immutable), its TOML format and the default host of the
seed document.  This is what the HMC activation profile and the boot-time AP bus scan decide;
nothing in it changes while the model runs.

Must not know: bus state machines, drivers' behaviour, mdevs, FUSE.  Configuration mistakes
raise ``ValueError`` (they are operator errors at start-up, not kernel errnos).

TOML format (ids are hex strings like the seed's ``05.00ab``, with optional ``0x``; TOML
integers are taken as written, so ``id = 5`` and ``id = "05"`` are the same card)::

    [host]
    domains = ["04", "47", "ab", "ff"]   # usage domains (AQM); queues exist for card x domain
    # control_domains = ["04", "47"]     # ADM; default: same as domains
    # flavor = "ap_matrix"               # or "vfio_ap" (upstream); apfs mount --flavor wins
    # max_adapter_id = "ff"              # ap_max_adapter_id (QCI Na); default 0xff
    # max_domain_id = "ff"               # ap_max_domain_id (QCI Nd); default 0xff
    #                                    # without APXA in features: 0x3f and 0x0f, fixed
    # mdev_instances = 65536             # available_instances of the mdev type at boot
    # apmask = "-0x5"                    # vfio_ap only: initial /sys/bus/ap/apmask and
    # aqmask = "-4,-0xab"                # aqmask, as the ap.apmask= kernel parameter takes
    #                                    # them (absolute 0x... or +N,-M relative to all ones)
    # ap_domain = "04"                   # default domain; default: lowest usage domain
    # interrupts = true                  # ap_interrupts
    # features = ["APSC", "APXA", "QACT", "RC8A"]

    [[card]]
    id = "05"
    type = "CEX5C"                       # a key of vdev.ap.cardtypes.CARD_TYPES
    # config = true                      # false: card deconfigured (config file shows 0)
    # chkstop = false                    # true: card check-stopped

    [[card]]
    id = "06"
    type = "CEX5A"

    [bindings]           # optional; default: every card and queue to its type's host driver
    "05.0004" = "vfio_ap_matrix"         # a queue reserved for guests at boot
    "card06" = ""                        # "" = not bound to any driver

In the ``vfio_ap`` flavor the masks decide where queues start (inside apmask x aqmask on
``cex4queue``, outside on ``vfio_ap``); ``[bindings]`` may only leave a device unbound there.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vdev.ap import bitmap
from vdev.ap.cardtypes import CARD_TYPES

MAX_ID = 0xFF
FLAVORS = ("ap_matrix", "vfio_ap")
MDEV_INSTANCES = 65536
"""How many mediated devices the passthrough driver allows (its ``available_instances``)."""
NO_APXA_MAX_ADAPTER_ID = 63
NO_APXA_MAX_DOMAIN_ID = 15
"""Without the APXA facility the AP instructions address 64 adapters and 16 domains."""
DEFAULT_FEATURES = ("APSC", "APXA", "QACT", "RC8A")
KNOWN_FEATURES = ("APSC", "APXA", "QACT", "RC8A", "APSB")

DEFAULT_HOST_TOML = """\
# The host of the seed document: a CEX5 coprocessor (05) and a CEX5 accelerator (06),
# usage domains 0x04, 0x47, 0xab and 0xff; every card and queue bound to its host driver
# (cex4card / cex4queue) at boot.
[host]
domains = ["04", "47", "ab", "ff"]

[[card]]
id = "05"
type = "CEX5C"

[[card]]
id = "06"
type = "CEX5A"
"""


@dataclass(frozen=True)
class HostConfig:
    """A validated host configuration; every field is already in its final form.

    ``bindings`` maps a device name (``card05``, ``05.0004``) to the driver it starts bound to
    (``""`` = unbound); devices not listed start on their type's host driver.  Whether a
    driver name exists and matches the device is checked by the bus, which knows its drivers.
    """

    cards: dict[int, str]
    domains: tuple[int, ...]
    control_domains: tuple[int, ...] | None = None
    max_adapter_id: int | None = None
    """Default 0xff with APXA, 63 without (then nothing else is allowed)."""
    max_domain_id: int | None = None
    """Default 0xff with APXA, 15 without (then nothing else is allowed)."""
    ap_domain: int | None = None
    interrupts: bool = True
    features: tuple[str, ...] = DEFAULT_FEATURES
    deconfigured: frozenset[int] = frozenset()
    chkstopped: frozenset[int] = frozenset()
    bindings: dict[str, str] = field(default_factory=dict)
    flavor: str = "ap_matrix"
    mdev_instances: int = MDEV_INSTANCES
    apmask: int = bitmap.ALL
    aqmask: int = bitmap.ALL

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"host.flavor: {self.flavor!r} is not a flavor "
                             f"(known: {', '.join(FLAVORS)})")
        if self.flavor != "vfio_ap" and (self.apmask, self.aqmask) != (bitmap.ALL, bitmap.ALL):
            raise ValueError(f"host.apmask/aqmask: only the vfio_ap flavor has them "
                             f"(this host is {self.flavor})")
        apxa = "APXA" in self.features
        for key, value, no_apxa in (
                ("max_adapter_id", self.max_adapter_id, NO_APXA_MAX_ADAPTER_ID),
                ("max_domain_id", self.max_domain_id, NO_APXA_MAX_DOMAIN_ID)):
            if value is None:
                value = MAX_ID if apxa else no_apxa
            elif not 0 <= value <= MAX_ID:
                raise ValueError(f"host.{key}: {value:#x} is outside 0x00..0xff")
            elif not apxa and value != no_apxa:
                raise ValueError(f"host.{key}: {value:#04x} needs the APXA feature (without "
                                 f"it the maximum is {no_apxa:#04x})")
            object.__setattr__(self, key, value)
        for adapter, type_name in self.cards.items():
            _check_id(f"card id {adapter:#04x}", adapter, self.max_adapter_id)
            if type_name not in CARD_TYPES:
                raise ValueError(
                    f"card {adapter:02x}: unknown type {type_name!r} "
                    f"(known: {', '.join(CARD_TYPES)})"
                )
        object.__setattr__(self, "cards", dict(sorted(self.cards.items())))
        domains = _sorted_unique("host.domains", self.domains, self.max_domain_id)
        object.__setattr__(self, "domains", domains)
        control = domains if self.control_domains is None else self.control_domains
        object.__setattr__(self, "control_domains",
                           _sorted_unique("host.control_domains", control, self.max_domain_id))
        if self.ap_domain is None:
            object.__setattr__(self, "ap_domain", domains[0] if domains else -1)
        elif self.ap_domain != -1 and self.ap_domain not in domains:
            raise ValueError(f"host.ap_domain: {self.ap_domain:#04x} is not a usage domain")
        for feature in self.features:
            if feature not in KNOWN_FEATURES:
                raise ValueError(f"host.features: unknown feature {feature!r} "
                                 f"(known: {' '.join(KNOWN_FEATURES)})")
        for key, ids in (("deconfigured", self.deconfigured), ("chkstopped", self.chkstopped)):
            for adapter in ids:
                if adapter not in self.cards:
                    raise ValueError(f"{key}: card {adapter:02x} is not configured")

    @classmethod
    def from_toml(cls, text: str, flavor: str | None = None) -> HostConfig:
        """Parse the TOML format of the module docstring; ``ValueError`` names key and value.

        ``flavor`` (``apfs mount --flavor``) replaces the file's ``host.flavor``.
        """
        return cls.from_document(parse_toml(text), flavor)

    @classmethod
    def from_document(cls, doc: dict[str, Any], flavor: str | None = None) -> HostConfig:
        """As :meth:`from_toml`, from the parsed document (whose other devices' tables,
        such as ``[[tpm]]``, the caller has taken out)."""
        _only_keys("top level", doc, ("host", "card", "bindings"))
        host = doc.get("host", {})
        _only_keys("[host]", host, ("domains", "control_domains", "max_adapter_id",
                                    "max_domain_id", "ap_domain", "interrupts", "features",
                                    "flavor", "mdev_instances", "apmask", "aqmask"))
        cards: dict[int, str] = {}
        deconfigured: set[int] = set()
        chkstopped: set[int] = set()
        for index, card in enumerate(doc.get("card", [])):
            where = f"card[{index}]"
            _only_keys(where, card, ("id", "type", "config", "chkstop"))
            if "id" not in card or "type" not in card:
                raise ValueError(f"{where}: needs both 'id' and 'type'")
            adapter = _parse_id(f"{where}.id", card["id"])
            if adapter in cards:
                raise ValueError(f"{where}.id: card {adapter:02x} is configured twice")
            cards[adapter] = str(card["type"])
            if not _parse_bool(f"{where}.config", card.get("config", True)):
                deconfigured.add(adapter)
            if _parse_bool(f"{where}.chkstop", card.get("chkstop", False)):
                chkstopped.add(adapter)
        bindings = doc.get("bindings", {})
        for device, driver in bindings.items():
            if not isinstance(driver, str):
                raise ValueError(f"bindings.{device}: {driver!r} is not a driver name string")
        control = host.get("control_domains")
        ap_domain = host.get("ap_domain")
        features = host.get("features", list(DEFAULT_FEATURES))
        if not isinstance(features, list):
            raise ValueError(f"host.features: {features!r} is not a list of feature names")
        max_adapter = host.get("max_adapter_id")
        max_domain = host.get("max_domain_id")
        return cls(
            cards=cards,
            domains=tuple(_parse_ids("host.domains", host.get("domains", []))),
            control_domains=None if control is None else tuple(
                _parse_ids("host.control_domains", control)),
            max_adapter_id=None if max_adapter is None else _parse_id("host.max_adapter_id",
                                                                      max_adapter),
            max_domain_id=None if max_domain is None else _parse_id("host.max_domain_id",
                                                                    max_domain),
            ap_domain=None if ap_domain is None else _parse_id("host.ap_domain", ap_domain),
            interrupts=_parse_bool("host.interrupts", host.get("interrupts", True)),
            features=tuple(features),
            deconfigured=frozenset(deconfigured),
            chkstopped=frozenset(chkstopped),
            bindings=dict(bindings),
            flavor=flavor or str(host.get("flavor", "ap_matrix")),
            mdev_instances=_parse_count("host.mdev_instances",
                                        host.get("mdev_instances", MDEV_INSTANCES)),
            apmask=_parse_mask("host.apmask", host.get("apmask")),
            aqmask=_parse_mask("host.aqmask", host.get("aqmask")),
        )

    @classmethod
    def grid(cls, n_adapters: int, n_domains: int, type: str = "CEX5C") -> HostConfig:
        """An ``n_adapters`` x ``n_domains`` host (ids from 0) of one card type, for benchmarks."""
        return cls(cards=dict.fromkeys(range(n_adapters), type), domains=tuple(range(n_domains)))


def parse_toml(text: str) -> dict[str, Any]:
    """The TOML document; ``ValueError`` saying where it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"host configuration is not valid TOML: {exc}") from exc


def _check_id(key: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{key}: {value:#04x} is above the maximum {maximum:#04x}"
                         if value > maximum else f"{key}: {value} is negative")


def _sorted_unique(key: str, values: Iterable[int], maximum: int) -> tuple[int, ...]:
    seen: set[int] = set()
    for value in values:
        _check_id(key, value, maximum)
        if value in seen:
            raise ValueError(f"{key}: {value:#04x} is listed twice")
        seen.add(value)
    return tuple(sorted(seen))


def _parse_id(key: str, value: Any) -> int:
    """A TOML id: a hex string (optional ``0x``) or a non-negative integer, at most 0xff."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{key}: {value!r} is neither a hex string nor an integer")
    if isinstance(value, str):
        digits = value[2:] if value[:2].lower() == "0x" else value
        try:
            value = int(digits, 16) if digits.isascii() and digits.isalnum() else -1
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{key}: {digits!r} is not a hexadecimal id") from None
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"{key}: {value:#x} is outside 0x00..0xff")
    return value


def _parse_count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MDEV_INSTANCES:
        raise ValueError(f"{key}: {value!r} is not a number from 0 to {MDEV_INSTANCES}")
    return value


def _parse_mask(key: str, value: Any) -> int:
    """An initial apmask/aqmask, in the syntax of the ``ap.apmask=`` kernel parameter."""
    if value is None:
        return bitmap.ALL
    mask = bitmap.parse_mask(value, bitmap.ALL) if isinstance(value, str) else None
    if mask is None:
        raise ValueError(f"{key}: {value!r} is not a mask ('0x' and up to 64 hex digits, or "
                         f"'+N', '-N', '+N-M', '-N-M' terms separated by commas)")
    return mask


def _parse_ids(key: str, values: Any) -> list[int]:
    if not isinstance(values, list):
        raise ValueError(f"{key}: {values!r} is not a list of ids")
    return [_parse_id(f"{key}[{i}]", v) for i, v in enumerate(values)]


def _parse_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}: {value!r} is not true or false")
    return value


def _only_keys(where: str, table: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table, got {table!r}")
    for key in table:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")
