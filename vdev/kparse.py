"""Kernel input parsing for sysfs ``store()`` emulation, shared by every device.

Owns: the exact acceptance rules of the kernel helpers that attribute stores use
(``kstrtoul``/``kstrtoull`` from lib/kstrtox.c, ``kstrtobool``, ``sscanf("%i")``/``"%d"`` from
lib/vsprintf.c, ``sysfs_streq`` from lib/string.c), turned into Python values or
:class:`~vdev.errors.DeviceError` with the kernel's errno.

Must not know: which device or file is being written (callers pass ``name`` only so the error
message can say which attribute refused the value), FUSE, trio or files.

Why exactness matters: userspace tools probe these files with inputs such as ``"0x10\\n"``,
``"+5"`` or ``"1 "``; a lenient parser would accept what the real kernel refuses and tools
tested against apfs would then break on real hardware.
"""

from __future__ import annotations

import errno

from vdev.errors import DeviceError

ULONG_MAX = (1 << 64) - 1
_INT_BITS = 32

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _digit_value(ch: str) -> int:
    """Value of one digit character in any base up to 36 (99 = not a digit)."""
    index = _DIGITS.find(ch.lower()) if ch.isascii() and len(ch) == 1 else -1
    return index if index >= 0 else 99


def _fixup_radix(text: str, base: int) -> tuple[str, int]:
    """``_parse_integer_fixup_radix``: auto-detect the base and skip a ``0x`` prefix.

    Base 0 picks hex only when ``0x`` is followed by a hex digit (``"0x"`` alone is octal 0
    followed by garbage); base 16 skips ``0x`` unconditionally, exactly like the kernel.
    """
    if base == 0:
        if text[:1] != "0":
            base = 10
        elif text[1:2].lower() == "x" and _digit_value(text[2:3]) < 16:
            base = 16
        else:
            base = 8
    if base == 16 and text[:1] == "0" and text[1:2].lower() == "x":
        text = text[2:]
    return text, base


def _parse_digits(text: str, base: int) -> tuple[int, int, bool]:
    """``_parse_integer``: (value mod 2**64, digits consumed, overflowed)."""
    value = 0
    overflow = False
    count = 0
    for ch in text:
        digit = _digit_value(ch)
        if digit >= base:
            break
        value = value * base + digit
        if value > ULONG_MAX:
            overflow = True
            value &= ULONG_MAX
        count += 1
    return value, count, overflow


def kstrtoul(text: str, base: int = 0, *, name: str) -> int:
    """Parse like the kernel's ``kstrtoul(buf, base, &val)`` on a 64-bit machine.

    Accepted: optional ``+``, digits of ``base`` (0 = auto: ``0x`` hex, leading ``0`` octal,
    else decimal; 16 also takes an optional ``0x``), then at most one ``\\n`` and nothing else.
    Raises ``ERANGE`` when the number does not fit 64 bits (checked before trailing garbage,
    as the kernel does), ``EINVAL`` for everything else.
    """
    body = text[1:] if text[:1] == "+" else text
    digits, real_base = _fixup_radix(body, base)
    value, count, overflow = _parse_digits(digits, real_base)
    rule = _base_rule(base)
    if overflow:
        raise DeviceError(errno.ERANGE, f"{name}: {text!r} does not fit in 64 bits ({rule})")
    rest = digits[count:]
    if count == 0 or rest not in ("", "\n"):
        raise DeviceError(errno.EINVAL, f"{name}: {text!r} is not a number ({rule})")
    return value


def _base_rule(base: int) -> str:
    if base == 0:
        what = "decimal, 0x-prefixed hex or 0-prefixed octal"
    elif base == 16:
        what = "hexadecimal digits with an optional 0x"
    else:
        what = f"base-{base} digits"
    return f"expected an optional '+', {what} and at most one trailing newline"


def sscanf_int(text: str, base: int = 0, *, name: str) -> int:
    """Parse like ``sscanf(buf, "%i", &int)`` (base 0) or ``"%d"`` (base 10) in the kernel.

    Much looser than kstrto*: leading white space is skipped, only ``-`` (not ``+``) may
    precede the first digit, and anything after the digits is ignored (``"1abc"`` reads 1).
    The value is truncated to a C ``int``, as the kernel stores it.  No digit → ``EINVAL``.
    Bus attributes ``ap_domain``, ``config_time`` and the zcrypt ``online`` files use it.
    """
    body = text.lstrip(" \t\n\v\f\r")
    negative = body[:1] == "-"
    if negative:
        body = body[1:]
    first = _digit_value(body[:1])
    if first >= (10 if base in (0, 10) else base):
        kind = "%i" if base == 0 else "%d"
        raise DeviceError(
            errno.EINVAL,
            f"{name}: {text!r} does not start with a number (kernel sscanf {kind})",
        )
    digits, real_base = _fixup_radix(body, base)
    value, _count, _overflow = _parse_digits(digits, real_base)
    if negative:
        value = -value
    value &= (1 << _INT_BITS) - 1
    if value >= 1 << (_INT_BITS - 1):
        value -= 1 << _INT_BITS
    return value


def kstrtobool(text: str, *, name: str) -> bool:
    """Parse like the kernel's ``kstrtobool``: only the first one or two characters count.

    ``y``/``Y``/``1`` → True, ``n``/``N``/``0`` → False, ``o``/``O`` followed by ``n``/``N`` →
    True or by ``f``/``F`` → False (so ``"of"`` and ``"onward"`` are accepted, as in the
    kernel); anything else, including the empty string, is ``EINVAL``.
    """
    first, second = text[:1], text[1:2].lower()
    if first in ("y", "Y", "1"):
        return True
    if first in ("n", "N", "0"):
        return False
    if first in ("o", "O") and second in ("n", "f"):
        return second == "n"
    raise DeviceError(
        errno.EINVAL,
        f"{name}: {text!r} is not a boolean (kstrtobool: y/Y/1/on or n/N/0/off)",
    )


def sysfs_streq_name(text: str) -> str:
    """The device name a driver-core ``bind``/``unbind`` write refers to.

    ``sysfs_streq`` treats exactly one trailing newline as the end of the string, so
    ``"05.0004\\n"`` names ``05.0004`` while ``"05.0004\\n\\n"`` or ``" 05.0004"`` name nothing.
    """
    return text[:-1] if text.endswith("\n") else text
