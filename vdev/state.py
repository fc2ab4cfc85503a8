"""Checks for device state exported as plain JSON data (``export_state``/``restore_state``).

Owns: the type and range rules every model applies to a state it is asked to restore, and
the wording of their errors: each names the key path and the value (``queues.05.0004.online:
'yes' is not true or false``), because a state comes from a file an operator may have to fix.

Must not know: files, formats, checksums (that is the store's job), any particular device.
Errors are ``ValueError``: a bad state is refused before anything changes.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

_EXCERPT = 60
_LISTED_KEYS = 8
"""An unknown-key error lists the expected keys only when they are few (not 65,536 queues)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."


def table(where: str, value: Any, keys: Collection[str]) -> dict[str, Any]:
    """``value`` must be a JSON object with exactly ``keys``."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {_show(value)} is not an object")
    for key in keys:
        if key not in value:
            raise ValueError(f"{where}: missing key {key!r}")
    if len(value) != len(keys):
        unknown = sorted(str(k) for k in value if k not in keys)
        expected = f" (expected: {', '.join(keys)})" if len(keys) <= _LISTED_KEYS else ""
        raise ValueError(f"{where}: unknown key {unknown[0]!r}{expected}")
    return value


def boolean(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {_show(value)} is not true or false")
    return value


def integer(where: str, value: Any, low: int, high: int | None = None) -> int:
    """An integer (not a boolean) within ``low..high`` (no upper bound when ``high`` is None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {_show(value)} is not an integer")
    if value < low or (high is not None and value > high):
        bound = f"{low}.." if high is None else f"{low}..{high}"
        raise ValueError(f"{where}: {value} is outside {bound}")
    return value


def sequence(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: {_show(value)} is not a list")
    return value
