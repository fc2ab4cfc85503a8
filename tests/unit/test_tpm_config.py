"""The [[tpm]] tables (vdev.tpm.config): defaults, and refusals naming key and value."""

from __future__ import annotations

import tomllib

import pytest

from vdev.tpm.config import DEFAULT_PCR_BANKS, TpmConfig, parse_tpm_tables


def parse(text: str, profiles: bool = False) -> tuple[TpmConfig, ...]:
    return parse_tpm_tables(tomllib.loads(text).get("tpm", []), profiles_supported=profiles)


def test_defaults_and_full_table() -> None:
    assert parse('[[tpm]]\nname = "tpm0"\n') == (TpmConfig("tpm0"),)
    assert TpmConfig("x").pcr_banks == DEFAULT_PCR_BANKS
    (full,) = parse('[[tpm]]\nname = "vm-1"\nversion = 2.0\npcr_banks = ["sha384", "sha1"]\n'
                    'ek_certificate = true\nprofile = "default-v1"\n', profiles=True)
    assert full == TpmConfig("vm-1", "2.0", ("sha1", "sha384"), True, "default-v1")
    assert parse("") == ()


@pytest.mark.parametrize(("text", "message"), [
    ('tpm = "x"', "tpm: expected [[tpm]] tables, got 'x'"),
    ("[[tpm]]\nversion = '2.0'", "tpm[0]: needs a 'name'"),
    ("[[tpm]]\nname = 'a b'", "tpm[0].name: 'a b' is not 1-32 letters"),
    ("[[tpm]]\nname = 'a'\ncolour = 1", "tpm[0]: unknown key 'colour'"),
    ("[[tpm]]\nname = 'a'\nversion = '1.2'", "tpm[0].version: '1.2' is not supported"),
    ("[[tpm]]\nname = 'a'\npcr_banks = ['md5']", "tpm[0].pcr_banks: unknown bank 'md5'"),
    ("[[tpm]]\nname = 'a'\npcr_banks = []", "tpm[0].pcr_banks: [] is not a non-empty list"),
    ("[[tpm]]\nname = 'a'\npcr_banks = ['sha1', 'sha1']", "'sha1' is listed twice"),
    ("[[tpm]]\nname = 'a'\nek_certificate = 'yes'",
     "tpm[0].ek_certificate: 'yes' is not true or false"),
    ("[[tpm]]\nname = 'a'\nprofile = 'default-v1'",
     "tpm[0].profile: 'default-v1' cannot be applied: the installed libtpms has no profiles"),
    ("[[tpm]]\nname = 'a'\n[[tpm]]\nname = 'a'", "tpm[1].name: 'a' is configured twice"),
])
def test_refusals_name_key_and_value(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse(text)
    assert message in str(info.value)
