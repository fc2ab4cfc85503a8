"""The ``[sev]`` table of the host TOML: whether a host has the SEV firmware and which one.

Owns: :class:`SevConfig` (validated, immutable) and :func:`parse_sev_table`, which takes the
already-parsed value of the ``sev`` key; :func:`apfs.host.load_config` takes it out of the
host TOML.  Mistakes raise ``ValueError`` naming the key and value, as ``vdev.tpm.config``
does.  Must not know: the firmware's commands, files, FUSE.

Format (every key optional; a host TOML without ``[sev]`` has no SEV at all: no
``sys/module/kvm_amd``, no ``apfs/sev``)::

    [sev]
    enabled = true          # false: kvm_amd shows sev=N, sev_es=N and apfs/sev is absent
    api = "0.24"            # firmware API version MAJOR.MINOR (PLATFORM_STATUS, MEASURE)
    build = 15              # firmware build id, 0-255
    sockets = 1             # GET_ID returns 64 bytes per socket, 1 or 2
    es = true               # SEV-ES: kvm_amd's sev_es=Y and INIT with CONFIG_ES
    guest_memory_mib = 64   # RAM of a launched guest when its description names none
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vdev.sev.platform import API_VERSION, BUILD

KEYS = ("enabled", "api", "build", "sockets", "es", "guest_memory_mib")
MAX_SOCKETS = 2  # the deprecated GET_ID's socket1[64] | socket2[64]
MAX_GUEST_MEMORY_MIB = 1 << 20  # 1 TiB, the firmware model's limit
_API = re.compile(r"(\d{1,3})\.(\d{1,3})")


@dataclass(frozen=True)
class SevConfig:
    """One host's SEV firmware."""

    enabled: bool = True
    api: tuple[int, int] = API_VERSION
    build: int = BUILD
    sockets: int = 1
    es: bool = True
    guest_memory_mib: int = 64


def parse_sev_table(table: Any) -> SevConfig:
    """Validate the ``sev`` key's value (a table)."""
    if not isinstance(table, dict):
        raise ValueError(f"sev: expected a [sev] table, got {table!r}")
    for key in table:
        if key not in KEYS:
            raise ValueError(f"sev: unknown key {key!r} (allowed: {', '.join(KEYS)})")
    enabled = _bool(table, "enabled", True)
    es = _bool(table, "es", True)
    api_text = table.get("api", f"{API_VERSION[0]}.{API_VERSION[1]}")
    match = _API.fullmatch(api_text) if isinstance(api_text, str) else None
    if match is None or max(int(match[1]), int(match[2])) > 255:
        raise ValueError(f"sev.api: {api_text!r} is not \"MAJOR.MINOR\" (each 0-255)")
    return SevConfig(
        enabled=enabled,
        api=(int(match[1]), int(match[2])),
        build=_int(table, "build", BUILD, 0, 255),
        sockets=_int(table, "sockets", 1, 1, MAX_SOCKETS),
        es=es,
        guest_memory_mib=_int(table, "guest_memory_mib", 64, 1, MAX_GUEST_MEMORY_MIB),
    )


def _bool(table: dict[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"sev.{key}: {value!r} is not true or false")
    return value


def _int(table: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"sev.{key}: {value!r} is not an integer from {low} to {high}")
    return value
