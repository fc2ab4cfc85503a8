"""Kernel input parsing: the same inputs the kernel accepts or refuses, with its errno."""

from __future__ import annotations

import errno

import pytest

from vdev.errors import DeviceError
from vdev.kparse import kstrtobool, kstrtoul, sscanf_int, sysfs_streq_name


@pytest.mark.parametrize(
    ("text", "base", "value"),
    [
        ("5", 0, 5),
        ("5\n", 0, 5),
        ("+5\n", 0, 5),
        ("0x1F\n", 0, 31),
        ("0X1f", 0, 31),
        ("017", 0, 15),
        ("0", 0, 0),
        ("18446744073709551615", 0, 2**64 - 1),
        ("47\n", 16, 0x47),
        ("ab\n", 16, 0xAB),
        ("0xff", 16, 0xFF),
        ("+0XAB", 16, 0xAB),
        ("10", 10, 10),
    ],
)
def test_kstrtoul_accepts(text: str, base: int, value: int) -> None:
    assert kstrtoul(text, base, name="attr") == value


@pytest.mark.parametrize(
    ("text", "base"),
    [
        ("", 0),
        ("\n", 0),
        ("5\n\n", 0),
        (" 5", 0),
        ("5 ", 0),
        ("-5", 0),
        ("++5", 0),
        ("08", 0),  # octal: "0" then garbage
        ("0x", 0),  # "0x" without a hex digit is octal 0 followed by "x"
        ("0x", 16),
        ("0xg", 16),
        ("ab", 0),
        ("5\x00", 0),
        ("٣", 0),  # non-ASCII digits are not digits to the kernel
    ],
)
def test_kstrtoul_refuses_with_einval(text: str, base: int) -> None:
    with pytest.raises(DeviceError) as info:
        kstrtoul(text, base, name="poll_timeout")
    assert info.value.errno == errno.EINVAL
    assert info.value.message.startswith("poll_timeout: ")
    assert repr(text) in info.value.message


@pytest.mark.parametrize(
    "text", ["18446744073709551616", "0x10000000000000000", "99999999999999999999x"]
)
def test_kstrtoul_overflow_is_erange_even_before_garbage(text: str) -> None:
    with pytest.raises(DeviceError) as info:
        kstrtoul(text, 0, name="attr")
    assert info.value.errno == errno.ERANGE


@pytest.mark.parametrize(
    ("text", "base", "value"),
    [
        ("4\n", 0, 4),
        ("0x47", 0, 71),
        ("010", 0, 8),
        ("  12abc", 0, 12),  # leading blanks skipped, trailing garbage ignored
        ("-1", 0, -1),
        ("4294967295", 0, -1),  # truncated to a C int
        ("30\n", 10, 30),
        ("0x10", 10, 0),  # %d reads the 0 and stops
    ],
)
def test_sscanf_int(text: str, base: int, value: int) -> None:
    assert sscanf_int(text, base, name="ap_domain") == value


@pytest.mark.parametrize("text", ["", "\n", "+1", "x1", "-", "- 1"])
def test_sscanf_int_needs_a_leading_number(text: str) -> None:
    with pytest.raises(DeviceError) as info:
        sscanf_int(text, 0, name="ap_domain")
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("y\n", True), ("Yes", True), ("on", True), ("ON\n", True),
     ("0", False), ("n", False), ("No", False), ("off", False), ("of", False)],
)
def test_kstrtobool(text: str, value: bool) -> None:
    assert kstrtobool(text, name="poll_thread") is value


@pytest.mark.parametrize("text", ["", "2", "true", "o", "ox", " 1"])
def test_kstrtobool_refuses(text: str) -> None:
    with pytest.raises(DeviceError) as info:
        kstrtobool(text, name="poll_thread")
    assert info.value.errno == errno.EINVAL


def test_sysfs_streq_name_strips_exactly_one_newline() -> None:
    assert sysfs_streq_name("05.0004\n") == "05.0004"
    assert sysfs_streq_name("05.0004") == "05.0004"
    assert sysfs_streq_name("05.0004\n\n") == "05.0004\n"
