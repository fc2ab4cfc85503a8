"""What a write to ``apfs/sev/launch/create`` asks for: one LAUNCH_START.

Owns: telling the two accepted launch descriptions apart, parsing QEMU's ``sev-guest``
property form, and the ``key=value`` field syntax the launch files share
(:func:`parse_fields`, also used for ``secret``).  Mistakes raise ``ValueError`` naming the
key.  Must not know: the firmware (the node layer hands :class:`LaunchRequest` to
:meth:`vdev.sev.guest.Guests.launch_start`), files, FUSE.

Two forms (README, SEV):

1. The seed's ``[sev-launch]`` file, verbatim (:mod:`vdev.sev.launch_config`): recognised by
   its ``[sev-launch]`` header.  The guest gets ``[sev] guest_memory_mib`` of RAM.
2. QEMU's ``sev-guest`` object properties, ``key=value`` separated by commas, blanks or
   newlines: ``policy`` (number, default 0x1 as QEMU's), ``handle`` (number, default 0: a
   new guest; else share that guest's key), ``dh-cert-file`` and ``session-file`` (the
   *contents* of the files QEMU would read: base64 of the GODH certificate and of the
   session blob, what sevctl writes to ``vm_godh.b64`` and ``vm_session.b64``; both or
   neither), and apfs's ``memory`` (the guest's RAM as QEMU's ``-m`` takes it: a number of
   MiB, or with a ``K``/``M``/``G`` suffix).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from vdev.sev.launch_config import GROUP, parse_launch_config

QEMU_KEYS = ("policy", "handle", "dh-cert-file", "session-file", "memory")
QEMU_DEFAULT_POLICY = 0x1
_SEPARATOR = re.compile(r"[,\s]+")
_SIZE = re.compile(r"(\d+)([KMG]?)", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class LaunchRequest:
    """LAUNCH_START's inputs and the guest's RAM size."""

    policy: int
    memory_size: int
    handle: int = 0
    godh_cert: bytes | None = None
    session: bytes | None = None
    nonce: bytes | None = None  # the 2016 draft's (a [sev-launch] file with a DH key)


def parse_launch_request(text: str, default_memory: int) -> LaunchRequest:
    """Parse either form; ``default_memory`` (bytes) is the RAM of a guest that names none."""
    if _is_seed_file(text):
        config = parse_launch_config(text)
        return LaunchRequest(policy=config.policy, memory_size=default_memory,
                             godh_cert=config.godh_cert(), nonce=config.nonce)
    fields = parse_fields(text, QEMU_KEYS, "sev-guest")
    cert = _base64(fields, "dh-cert-file")
    session = _base64(fields, "session-file")
    if (cert is None) != (session is None):
        missing = "session-file" if session is None else "dh-cert-file"
        raise ValueError(f"{missing}: missing (a GODH certificate and a session go together)")
    memory = fields.get("memory")
    return LaunchRequest(
        policy=_number(fields, "policy", QEMU_DEFAULT_POLICY),
        memory_size=default_memory if memory is None else _size(memory),
        handle=_number(fields, "handle", 0),
        godh_cert=cert,
        session=session,
    )


def _is_seed_file(text: str) -> bool:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.replace(" ", "") == f"[{GROUP}]"
    return False


def parse_fields(text: str, keys: tuple[str, ...], what: str) -> dict[str, str]:
    """``key=value`` items separated by commas, blanks or newlines; each key at most once,
    each one of ``keys``."""
    fields: dict[str, str] = {}
    for item in _SEPARATOR.split(text.strip()):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"{item[:40]!r}: not key=value ({what} keys: {', '.join(keys)})")
        if key not in keys:
            raise ValueError(f"{key}: unknown {what} key (known: {', '.join(keys)})")
        if key in fields:
            raise ValueError(f"{key}: given twice")
        fields[key] = value
    return fields


def _number(fields: dict[str, str], key: str, default: int) -> int:
    value = fields.get(key)
    if value is None:
        return default
    try:
        number = int(value, 0)
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not a number (decimal or 0x hex)") from None
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError(f"{key}: {value!r} is not a u32")
    return number


def _size(value: str) -> int:
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"memory: {value!r} is not a size (MiB, or with a K, M or G suffix)")
    return int(match[1]) * _UNITS[match[2].upper()]


def _base64(fields: dict[str, str], key: str) -> bytes | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{key}: {value[:40]!r} is not base64") from None
    if not data:
        raise ValueError(f"{key}: empty")
    return data
