"""256-bit AP masks (APM, AQM, ADM) as Python ints.

Owns: the conversion between "bit *n* of the int is id *n*" (what the model computes with)
and the s390 "inv bit" order the kernel prints, where id 0 is the most significant bit of the
leftmost hex digit (adapters 5 and 6 → ``0x06`` followed by 62 zeros).

Must not know: what the ids mean (adapters, domains), devices, FUSE.

Why plain ints: set algebra on masks (``apm & other.apm``) is one big-int operation, and a
256-bit int is far cheaper than a 256-element set when thousands of mdevs exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

MASK_BITS = 256


def from_ids(ids: Iterable[int]) -> int:
    """The mask with exactly the bits of ``ids`` set."""
    mask = 0
    for i in ids:
        mask |= 1 << i
    return mask


def ids(mask: int) -> Iterator[int]:
    """The set bits of ``mask``, ascending."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def to_sysfs(mask: int) -> str:
    """``0x`` + 64 hex digits in inv-bit order, no newline (the kernel's ``%*phN`` style)."""
    inverted = int(f"{mask:0{MASK_BITS}b}"[::-1], 2)
    return f"0x{inverted:0{MASK_BITS // 4}x}"
