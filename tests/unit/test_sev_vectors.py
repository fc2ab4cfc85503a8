"""The spec's test vectors (shared/spec/sev.md, "Test vectors"): KDF, session wrap,
measurement; and the firmware and owner sides agreeing on each formula."""

from __future__ import annotations

import hashlib

from vdev.sev import session as proto
from vdev.sev.crypto import hmac_sha256, kdf
from vdev.sev.owner import expected_measurement, verify_measurement

ZERO16 = bytes(16)


def test_kdf_vector() -> None:
    master = kdf(ZERO16, b"sev-master-secret", ZERO16)
    assert master.hex() == "ab4d269fcc62bedb4511d56c386ce706"


def test_session_wrap_vector() -> None:
    wrap = proto.derive_wrap_keys(ZERO16, ZERO16)
    blob = proto.wrap_session(wrap, proto.TransportKeys(ZERO16, ZERO16), ZERO16, ZERO16, 0)
    assert blob.wrap_tk.hex() == (
        "2137bc7f9bb8bd7c3e55a576a15d3454b3856b8ba27afadf46dcfee9f02c02c4"
    )
    assert blob.wrap_mac.hex() == (
        "3176c0752738bd9d5e86689534020f528c088f16238826b000b327dee6aeed7d"
    )
    assert blob.policy_mac.hex() == (
        "aa7855e13839dd767cd5da7c1ff5036540c9264b7a803029315e55375287b4af"
    )
    # The firmware's side of the same blob: MAC checks and unwrapping.
    parsed = proto.SessionBlob.from_bytes(blob.to_bytes())
    assert len(blob.to_bytes()) == proto.SESSION_LEN
    assert proto.wrap_mac(wrap, parsed) == parsed.wrap_mac
    assert proto.unwrap_session(wrap, parsed) == proto.TransportKeys(ZERO16, ZERO16)


MNONCE = bytes.fromhex("4fbe0bedbad6c86ae8f68971d103e554")
TIK = bytes.fromhex("66320db73158a35a255d051758e95ed4")
MEASURE = "6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea"


def test_measurement_vector() -> None:
    digest = hashlib.sha256(b"").digest()
    assert proto.measure(TIK, (0, 0x12), 0x0F, 0, digest, MNONCE).hex() == MEASURE
    assert expected_measurement(TIK, digest, MNONCE, 0, (0, 0x12), 0x0F).hex() == MEASURE
    reply = bytes.fromhex(MEASURE) + MNONCE
    assert verify_measurement(reply, TIK, digest, 0, (0, 0x12), 0x0F)
    assert not verify_measurement(reply, TIK, digest, 1, (0, 0x12), 0x0F)
    assert not verify_measurement(reply, TIK, digest, 0, (0, 0x12), 0x10)
    assert not verify_measurement(reply[:47], TIK, digest, 0, (0, 0x12), 0x0F)


def test_measurement_before_api_0_17_has_no_prefix() -> None:
    digest = hashlib.sha256(b"").digest()
    old = proto.measure(TIK, (0, 16), 0x0F, 0, digest, MNONCE)
    assert old == hmac_sha256(TIK, bytes((0, 16, 0x0F)), bytes(4), digest, MNONCE)
