"""From vdev's attribute tables to kernfs files: the ``DEVICE_ATTR`` step.

A vdev device class lists its files next to its state (``Card.ATTRS``: name, mode, when the
file exists) and implements ``show_<name>``/``store_<name>``, like a kernel driver's
``DEVICE_ATTR_RW(name)``.  This turns such a table into kernfs files, so every file is
declared once, beside the state it shows.
"""

from __future__ import annotations

from collections.abc import Iterable

from apfs.kernfs import Attr
from vdev.ap import bus as apbus
from vdev.ap.bus import Presence


def attribute_files(cls: type, table: Iterable[apbus.Attr]) -> tuple[Attr, ...]:
    """kernfs files for a device class's attribute table (``show_<name>``/``store_<name>``)."""
    return tuple(
        Attr(a.name, a.mode,
             show=getattr(cls, f"show_{a.name}") if a.mode & 0o444 else None,
             store=getattr(cls, f"store_{a.name}") if a.mode & 0o222 else None,
             when=None if a.presence is Presence.ALWAYS else a.present)
        for a in table
    )
