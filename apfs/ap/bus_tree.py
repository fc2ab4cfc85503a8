"""``/sys/bus/ap`` and ``/sys/devices/ap``: the AP bus, its cards, queues and drivers.

The files of each device come from the attribute tables next to the device classes in
:mod:`vdev.ap.bus` (see :mod:`apfs.ap.attrs`); this module only says where the directories
and symlinks are, as drivers/s390/crypto/ap_bus.c lays them out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apfs.ap.attrs import attribute_files
from apfs.kernfs import (
    Link,
    Links,
    Path,
    Subdir,
    Subdirs,
    directory,
)
from vdev.ap.bus import ApBus, Card, Driver, Queue

BUS_AP: Path = ("sys", "bus", "ap")
DEVICES_AP: Path = ("sys", "devices", "ap")

def device_path(device: Card | Queue) -> Path:
    if isinstance(device, Card):
        return (*DEVICES_AP, device.name)
    return (*DEVICES_AP, device.card.name, device.name)


def _driver_path(device: Card | Queue) -> Path | None:
    driver = device.driver
    return None if driver is None else (*BUS_AP, "drivers", driver.name)


def _bus_path(_: Any) -> Path:
    return BUS_AP


QUEUE = directory(
    "ap queue",
    *attribute_files(Queue, Queue.ATTRS),
    Link("driver", _driver_path, conditional=True),
    Link("subsystem", _bus_path),
)

CARD = directory(
    "ap card",
    *attribute_files(Card, Card.ATTRS),
    Link("driver", _driver_path, conditional=True),
    Link("subsystem", _bus_path),
    Subdirs(QUEUE, lambda card: card.queues_by_name, stable=True),
)

DRIVER = directory(
    "ap driver",
    *attribute_files(Driver, ApBus.DRIVER_ATTRS),
    Links(lambda driver: driver.devices, device_path),
)

BUS = directory(
    "ap bus",
    *attribute_files(ApBus, ApBus.ATTRS),
    Subdir("devices", directory("ap bus devices",
                                Links(lambda bus: bus.devices, device_path, stable=True))),
    Subdir("drivers", directory("ap drivers",
                                Subdirs(DRIVER, lambda bus: bus.drivers, stable=True))),
)

DEVICES = directory(
    "ap devices",
    Subdirs(CARD, lambda bus: bus.cards_by_name, stable=True),
)


def bus_dir(get: Callable[[Any], ApBus]) -> Subdir:
    """``sys/bus/ap`` for a root object from which ``get`` finds the bus."""
    return Subdir("ap", BUS, get)


def devices_dir(get: Callable[[Any], ApBus]) -> Subdir:
    """``sys/devices/ap``."""
    return Subdir("ap", DEVICES, get)

