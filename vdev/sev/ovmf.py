"""The OVMF reset-vector footer table: where a firmware image says its SEV areas are.

Owns: parsing the GUIDed table QEMU (``pc_system_ovmf_table_find``) and sev-snp-measure read
at the end of an OVMF image, and the two SEV entries the launch uses: the kernel-hashes table
area and the secret area.  Must not know: measurements, guests, files.

Format: the footer is 32 bytes before the image's end: ``u16 total_len | GUID
96b582de-1fb2-45f7-baea-a366c55a082d``.  The table is the ``total_len - 18`` bytes just
before the footer, read backwards; each entry is ``data | u16 len (with its 18-byte
trailer) | GUID``.  An image without the footer GUID has no table (Debian's OVMF builds).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_HASH_TABLE_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_SECRET_GUID = uuid.UUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")
ENTRY_TRAILER = 18  # u16 length + GUID
FOOTER_OFFSET = 32  # the footer entry ends this many bytes before the image's end
HASH_TABLE_MIN = 176  # QEMU: the area must hold the padded kernel-hashes table


@dataclass(frozen=True)
class Area:
    """A ``{u32 base, u32 size}`` entry: a guest physical range the firmware reserved."""

    base: int
    size: int


def footer_table(image: bytes) -> dict[uuid.UUID, bytes]:
    """GUID → entry data; empty if the image has no footer table.  A malformed table raises
    ``ValueError`` naming the entry."""
    end = len(image) - FOOTER_OFFSET
    if end - ENTRY_TRAILER < 0:
        return {}
    total, guid = struct.unpack_from("<H16s", image, end - ENTRY_TRAILER)
    if uuid.UUID(bytes_le=guid) != FOOTER_GUID:
        return {}
    table_len = total - ENTRY_TRAILER
    start = end - ENTRY_TRAILER - table_len
    if table_len < 0 or start < 0:
        raise ValueError(f"OVMF footer table: length {total} does not fit the image")
    table = image[start : end - ENTRY_TRAILER]
    entries: dict[uuid.UUID, bytes] = {}
    while len(table) >= ENTRY_TRAILER:
        size, guid = struct.unpack_from("<H16s", table, len(table) - ENTRY_TRAILER)
        entry_guid = uuid.UUID(bytes_le=guid)
        if not ENTRY_TRAILER <= size <= len(table):
            raise ValueError(f"OVMF footer table: entry {entry_guid} has bad length {size}")
        entries[entry_guid] = table[len(table) - size : len(table) - ENTRY_TRAILER]
        table = table[: len(table) - size]
    return entries


def _area(image: bytes, guid: uuid.UUID) -> Area | None:
    data = footer_table(image).get(guid)
    if data is None or len(data) < 8:
        return None
    base, size = struct.unpack_from("<II", data)
    return Area(base, size) if base else None


def hash_table_area(image: bytes) -> Area | None:
    """Where QEMU writes the kernel-hashes table (None: the image cannot measure a kernel).
    QEMU also refuses an area smaller than the table; so does this."""
    area = _area(image, SEV_HASH_TABLE_GUID)
    return area if area is not None and area.size >= HASH_TABLE_MIN else None


def secret_area(image: bytes) -> Area | None:
    """Where the firmware expects the launch secret (QEMU's default ``gpa``)."""
    return _area(image, SEV_SECRET_GUID)


def build_footer_table(entries: dict[uuid.UUID, bytes]) -> bytes:
    """The bytes an image ends with so that :func:`footer_table` (and QEMU, sev-snp-measure)
    find ``entries``: the table, the footer entry, then 32 bytes (the reset vector's place)."""
    table = b"".join(
        data + struct.pack("<H", len(data) + ENTRY_TRAILER) + guid.bytes_le
        for guid, data in entries.items()
    )
    footer = struct.pack("<H", len(table) + ENTRY_TRAILER) + FOOTER_GUID.bytes_le
    return table + footer + bytes(FOOTER_OFFSET)


def area_entry(base: int, size: int) -> bytes:
    """An entry's data for a ``{u32 base, u32 size}`` area."""
    return struct.pack("<II", base, size)
