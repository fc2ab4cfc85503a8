"""The guest owner's toolkit: chain verification, GODH certificate, secret table."""

from __future__ import annotations

import struct
import uuid

import pytest

from tests.unit.sev_helpers import started_platform
from vdev.sev import SevError, Status, keys
from vdev.sev import owner as sevowner
from vdev.sev.cert import Algo, Certificate, Usage

CERT = 0x824


def test_chain_of_another_platform_or_vendor_fails() -> None:
    platform, _ = started_platform()
    other, _ = started_platform()
    mine, theirs = platform.pdh_cert_export(), other.pdh_cert_export()
    cases = [
        (theirs.pdh, mine.chain, "PDH is not signed by the PEK"),
        (mine.pdh, theirs.chain[:CERT] + mine.chain[CERT:], "PEK is not signed by the OCA"),
        (mine.pdh, mine.chain[:CERT] + theirs.chain[CERT:], "PEK is not signed by the OCA"),
        (mine.pdh, mine.chain[: 2 * CERT] + theirs.chain[2 * CERT :], "not signed by the CEK"),
    ]
    for pdh, chain, message in cases:
        with pytest.raises(SevError) as err:
            sevowner.verify_chain(pdh, chain)
        assert err.value.status == Status.BAD_SIGNATURE and message in err.value.message
    # Anchored at another "AMD" (a different ASK), the chip's CEK does not verify.
    ask = Certificate.for_key(
        Usage.ASK, Algo.ECDSA_SHA256, keys.new_private_key().public_key(), (0, 0)
    )
    with pytest.raises(SevError) as err:
        sevowner.verify_chain(mine.pdh, mine.chain, ask=ask)
    assert "ASK is not signed by the ARK" in err.value.message


def test_chain_in_the_wrong_order_or_length_is_refused() -> None:
    platform, _ = started_platform()
    export = platform.pdh_cert_export()
    swapped = export.chain[CERT : 2 * CERT] + export.chain[:CERT] + export.chain[2 * CERT :]
    with pytest.raises(SevError) as err:
        sevowner.verify_chain(export.pdh, swapped)
    assert err.value.status == Status.INVALID_CERTIFICATE and "PEK" in err.value.message
    with pytest.raises(SevError) as err:
        sevowner.verify_chain(export.pdh, export.chain[:-1])
    assert err.value.status == Status.INVALID_LENGTH


def test_godh_certificate_is_what_sevctl_sends() -> None:
    key = keys.new_private_key()
    cert = Certificate.from_bytes(sevowner.godh_certificate(key.public_key()))
    assert (cert.usage, cert.algo, cert.api_major, cert.api_minor) == (0x1003, 0x3, 0, 0)
    assert cert.sig1.empty and cert.sig2.empty
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


def test_secret_table_layout() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    table = sevowner.secret_table({first: b"abc", second: b""})
    header = uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b").bytes_le
    expected = (
        header
        + struct.pack("<I", 20 + 23 + 20)
        + first.bytes_le
        + struct.pack("<I", 23)
        + b"abc"
        + second.bytes_le
        + struct.pack("<I", 20)
    )
    assert table == expected.ljust(64, b"\x00") and len(table) % 16 == 0


def test_packaged_secret_decrypts_with_tek_and_is_bound_to_measure() -> None:
    tek, tik, measure = bytes(range(16)), bytes(range(16, 32)), bytes(48)
    packaged = sevowner.package_secret(b"s" * 32, tek, tik, measure, (0, 24), iv=bytes(16))
    assert len(packaged.header) == 52 and packaged.header[:4] == bytes(4)
    assert packaged.trans != b"s" * 32 and len(packaged.trans) == 32
    other = sevowner.package_secret(b"s" * 32, tek, tik, b"\x01" * 48, (0, 24), iv=bytes(16))
    assert other.trans == packaged.trans and other.header != packaged.header
