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
    return f"0x{_reverse(mask):0{MASK_BITS // 4}x}"


ALL = (1 << MASK_BITS) - 1
"""Every id set: the default ``apmask``/``aqmask`` (everything belongs to the host)."""


def _reverse(mask: int) -> int:
    return int(f"{mask:0{MASK_BITS}b}"[::-1], 2)


def parse_hex(text: str) -> int | None:
    """``hex2bitmap`` of ap_bus.c: the absolute mask syntax, or None when it is malformed.

    An optional ``0x`` and/or ``x``, then up to 64 hex digits filling the mask from id 0 (a
    short string is zero-padded on the right: ``0x41`` sets ids 1 and 7), then at most one
    newline and nothing else.
    """
    body = text[1:] if text.startswith("0x") else text
    body = body[1:] if body.startswith("x") else body
    digits = 0
    while digits < len(body) and digits < MASK_BITS // 4 and body[digits] in _HEX_DIGITS:
        digits += 1
    rest = body[digits:]
    if rest not in ("", "\n"):
        return None
    hex_text = body[:digits].ljust(MASK_BITS // 4, "0")
    return _reverse(int(hex_text, 16))


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _strtoul(text: str, start: int) -> tuple[int, int]:
    """``simple_strtoul(str, &end, 0)``: (value, index after the digits); no digit → start."""
    base = 10
    i = start
    if text[i:i + 1] == "0":
        base = 8
        if text[i + 1:i + 2] in ("x", "X") and text[i + 2:i + 3] in _HEX_DIGITS:
            base, i = 16, i + 2
    end = i
    while end < len(text) and text[end] in _HEX_DIGITS and int(text[end], 16) < base:
        end += 1
    return (int(text[i:end], base), end) if end > i else (0, start)


def modify(text: str, mask: int) -> int | None:
    """``modify_bitmap`` of ap_bus.c: the relative syntax, applied to ``mask``; None if bad.

    Terms ``+N``, ``-N``, ``+N-M``, ``-N-M`` (numbers in any C base, N <= M < 256), applied
    left to right; any run of ``,``/newline may follow a term.
    """
    i = 0
    while i < len(text):
        sign = text[i]
        if sign not in "+-":
            return None
        first, end = _strtoul(text, i + 1)
        if end == i + 1 or first >= MASK_BITS:
            return None
        last, i = first, end
        if text[i:i + 1] == "-":
            last, end = _strtoul(text, i + 1)
            if end == i + 1 or first > last or last >= MASK_BITS:
                return None
            i = end
        span = ((1 << (last + 1)) - 1) ^ ((1 << first) - 1)
        mask = mask | span if sign == "+" else mask & ~span
        while text[i:i + 1] in (",", "\n"):
            i += 1
    return mask


def parse_mask(text: str, mask: int) -> int | None:
    """``ap_parse_bitmap_str``: relative to ``mask`` if ``text`` starts with + or -, else
    absolute; None when malformed (the kernel's EINVAL)."""
    if text[:1] in ("+", "-"):
        return modify(text, mask)
    return parse_hex(text)
