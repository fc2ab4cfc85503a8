"""The SEV platform: certificate format, state machine, key hierarchy, ownership, durable
state."""

from __future__ import annotations

import json
import struct

import pytest

from vdev.sev import PlatformState, SevError, SevPlatform, Status, keys
from vdev.sev.cert import CERT_LEN, Algo, Certificate, Usage
from vdev.sev.guest import Guests
from vdev.sev.owner import verify_chain
from vdev.sev.platform import ALLOWED, GUEST

CERTS = 0x824


def split_chain(chain: bytes) -> list[Certificate]:
    return [Certificate.from_bytes(chain[i : i + CERTS]) for i in range(0, len(chain), CERTS)]


# -- certificate format ------------------------------------------------------------------------


def test_certificate_layout_is_little_endian_p384() -> None:
    key = keys.new_private_key()
    signer = keys.new_private_key()
    cert = Certificate.for_key(Usage.PEK, Algo.ECDSA_SHA256, key.public_key(), (0, 24))
    raw = cert.signed(1, Usage.OCA, signer).to_bytes()
    assert len(raw) == CERT_LEN == 2084
    assert struct.unpack_from("<IBBHII", raw) == (1, 0, 24, 0, 0x1002, 0x2)
    numbers = key.public_key().public_numbers()
    assert struct.unpack_from("<I", raw, 0x10) == (2,)
    assert raw[0x14 : 0x14 + 72] == numbers.x.to_bytes(72, "little")
    assert raw[0x5C : 0x5C + 72] == numbers.y.to_bytes(72, "little")
    assert raw[0xA4:0x414] == bytes(0x414 - 0xA4)
    assert struct.unpack_from("<II", raw, 0x414) == (0x1001, 0x2)
    assert raw[0x414 + 8 + 144 : 0x61C] == bytes(512 - 144)  # r, s: 72 bytes each, then zeros
    assert struct.unpack_from("<II", raw, 0x61C) == (0x1000, 0)  # empty slot
    assert raw[0x624:] == bytes(512)
    assert Certificate.from_bytes(raw).to_bytes() == raw


def test_signature_covers_the_body() -> None:
    signer = keys.new_private_key()
    issuer = Certificate.for_key(Usage.OCA, Algo.ECDSA_SHA256, signer.public_key(), (0, 24))
    cert = Certificate.for_key(
        Usage.PEK, Algo.ECDSA_SHA384, keys.new_private_key().public_key(), (0, 24)
    )
    for algo in (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384):
        signed = cert.signed(1, Usage.OCA, signer, algo)
        assert signed.is_signed_by(issuer)
        raw = bytearray(signed.to_bytes())
        raw[0x20] ^= 1  # a byte of qx
        assert not Certificate.from_bytes(bytes(raw)).is_signed_by(issuer)
    assert not cert.is_signed_by(issuer)


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [(0x0, 2, "version"), (0x8, 0x7777, "usage"), (0xC, 0x1, "pub_key_algo"), (0x10, 1, "curve")],
)
def test_malformed_certificate_is_invalid(offset: int, value: int, field: str) -> None:
    raw = bytearray(keys.make_oca((0, 24)).cert.to_bytes())
    struct.pack_into("<I", raw, offset, value)
    with pytest.raises(SevError) as err:
        Certificate.from_bytes(bytes(raw))
    assert err.value.status == Status.INVALID_CERTIFICATE
    assert field in err.value.message
    with pytest.raises(SevError) as err:
        Certificate.from_bytes(bytes(raw[:-1]))
    assert "2083 bytes" in err.value.message


# -- state machine -----------------------------------------------------------------------------

PLATFORM_COMMANDS = {
    "INIT": lambda p: p.init(),
    "SHUTDOWN": lambda p: p.shutdown(),
    "PLATFORM_RESET": lambda p: p.platform_reset(),
    "PLATFORM_STATUS": lambda p: p.platform_status(),
    "PEK_GEN": lambda p: p.pek_gen(),
    "PEK_CSR": lambda p: p.pek_csr(),
    "PEK_CERT_IMPORT": lambda p: p.pek_cert_import(bytes(CERTS), bytes(CERTS)),
    "PDH_GEN": lambda p: p.pdh_gen(),
    "PDH_CERT_EXPORT": lambda p: p.pdh_cert_export(),
    "GET_ID": lambda p: p.get_id(),
}


def platform_in(state: PlatformState) -> SevPlatform:
    platform = SevPlatform()
    if state != PlatformState.UNINIT:
        platform.init()
    if state == PlatformState.WORKING:
        Guests(platform).launch_start(policy=0, memory_size=4096)
    assert platform.state == state
    return platform


@pytest.mark.parametrize("state", list(PlatformState))
@pytest.mark.parametrize("command", sorted(PLATFORM_COMMANDS))
def test_platform_command_in_wrong_state_is_refused(state: PlatformState, command: str) -> None:
    platform = platform_in(state)
    if command in ALLOWED[state]:
        return  # allowed: covered by the tests of each command
    before = platform.export_state(), platform.state
    with pytest.raises(SevError) as err:
        PLATFORM_COMMANDS[command](platform)
    assert err.value.status == Status.INVALID_PLATFORM_STATE
    assert command in err.value.message and state.name in err.value.message
    assert (platform.export_state(), platform.state) == before


def test_guest_commands_need_init() -> None:
    platform = SevPlatform()
    with pytest.raises(SevError) as err:
        Guests(platform).launch_start(policy=0, memory_size=4096)
    assert err.value.status == Status.INVALID_PLATFORM_STATE
    assert GUEST not in ALLOWED[PlatformState.UNINIT]


def test_init_makes_a_chain_that_verifies_and_status_reports_it() -> None:
    platform = platform_in(PlatformState.INIT)
    export = platform.pdh_cert_export()
    pdh = verify_chain(export.pdh, export.chain)
    assert pdh.usage == Usage.PDH and pdh.algo == Algo.ECDH_SHA256
    pek, oca, cek = split_chain(export.chain)
    assert (pek.usage, oca.usage, cek.usage) == (Usage.PEK, Usage.OCA, Usage.CEK)
    assert (pek.sig1.usage, pek.sig2.usage) == (Usage.OCA, Usage.CEK)
    assert cek.sig1.usage == Usage.ASK and cek.sig2.empty
    status = platform.platform_status()
    assert status.to_bytes() == struct.pack("<BBBIBI", 0, 24, 1, 0x100, 15, 0)
    assert len(status.to_bytes()) == 12 and not status.owner


def test_working_state_follows_guests() -> None:
    platform = platform_in(PlatformState.INIT)
    guests = Guests(platform)
    handle = guests.launch_start(policy=0, memory_size=4096)
    assert platform.state == PlatformState.WORKING
    assert platform.platform_status().guest_count == 1
    guests.decommission(handle)
    assert platform.state == PlatformState.INIT
    guests.launch_start(policy=0, memory_size=4096)
    platform.shutdown()
    assert platform.state == PlatformState.UNINIT and platform.guests == {}


def test_pdh_gen_and_pek_gen_regenerate() -> None:
    platform = platform_in(PlatformState.INIT)
    first = platform.pdh_cert_export()
    platform.pdh_gen()
    second = platform.pdh_cert_export()
    assert second.pdh != first.pdh and second.chain == first.chain
    platform.pek_gen()
    third = platform.pdh_cert_export()
    assert third.pdh != second.pdh and third.chain[: 2 * CERTS] != second.chain[: 2 * CERTS]
    assert third.chain[2 * CERTS :] == second.chain[2 * CERTS :]  # the CEK is the chip's
    verify_chain(third.pdh, third.chain)


def test_platform_reset_wipes_keys_but_not_the_cek() -> None:
    platform = platform_in(PlatformState.INIT)
    before = platform.pdh_cert_export()
    platform.shutdown()
    platform.platform_reset()
    platform.init()
    after = platform.pdh_cert_export()
    assert after.pdh != before.pdh and after.chain[:CERTS] != before.chain[:CERTS]
    assert after.chain[2 * CERTS :] == before.chain[2 * CERTS :]


def test_get_id_is_64_bytes_and_answers_a_short_buffer_with_the_length() -> None:
    platform = SevPlatform(b"chip")
    assert len(platform.get_id()) == 64
    assert platform.get_id() == SevPlatform(b"chip").get_id() != SevPlatform(b"other").get_id()
    with pytest.raises(SevError) as err:
        platform.get_id(0)
    assert err.value.status == Status.INVALID_LENGTH and err.value.needed == 64


# -- ownership ---------------------------------------------------------------------------------


def owner_signed_pek(platform: SevPlatform, oca: keys.KeyPair) -> bytes:
    csr = Certificate.from_bytes(platform.pek_csr())
    assert csr.sig1.empty and csr.sig2.empty
    assert oca.private is not None
    return csr.signed(1, Usage.OCA, oca.private).to_bytes()


def test_pek_cert_import_takes_ownership() -> None:
    platform = platform_in(PlatformState.INIT)
    old = platform.pdh_cert_export()
    oca = keys.make_oca((0, 0))
    platform.pek_cert_import(owner_signed_pek(platform, oca), oca.cert.to_bytes())
    assert platform.platform_status().owner
    export = platform.pdh_cert_export()
    assert export.pdh != old.pdh  # the PDH is regenerated
    pek, chain_oca, _ = split_chain(export.chain)
    assert chain_oca == oca.cert and pek.is_signed_by(oca.cert)
    verify_chain(export.pdh, export.chain)
    with pytest.raises(SevError) as err:
        platform.pek_cert_import(owner_signed_pek(platform, oca), oca.cert.to_bytes())
    assert err.value.status == Status.ALREADY_OWNED
    platform.pek_gen()  # back to self-owned
    assert not platform.platform_status().owner


def test_pek_cert_import_of_a_pek_not_signed_by_the_given_oca_is_refused() -> None:
    platform = platform_in(PlatformState.INIT)
    before = platform.export_state()
    oca, other = keys.make_oca((0, 0)), keys.make_oca((0, 0))
    with pytest.raises(SevError) as err:
        platform.pek_cert_import(owner_signed_pek(platform, other), oca.cert.to_bytes())
    assert err.value.status == Status.BAD_SIGNATURE
    assert "not signed by the OCA" in err.value.message or "by the OCA" in err.value.message
    unsigned = platform.pek_csr()
    with pytest.raises(SevError) as err:
        platform.pek_cert_import(unsigned, oca.cert.to_bytes())
    assert err.value.status == Status.BAD_SIGNATURE
    foreign = Certificate.for_key(
        Usage.PEK, Algo.ECDSA_SHA256, keys.new_private_key().public_key(), (0, 0)
    )
    assert oca.private is not None
    with pytest.raises(SevError) as err:
        platform.pek_cert_import(
            foreign.signed(1, Usage.OCA, oca.private).to_bytes(), oca.cert.to_bytes()
        )
    assert err.value.status == Status.INVALID_CERTIFICATE
    assert platform.export_state() == before and not platform.platform_status().owner


# -- durable state -----------------------------------------------------------------------------


def test_export_restore_keeps_the_pdh_chain_and_ownership_not_guests() -> None:
    platform = platform_in(PlatformState.INIT)
    oca = keys.make_oca((0, 0))
    platform.pek_cert_import(owner_signed_pek(platform, oca), oca.cert.to_bytes())
    Guests(platform).launch_start(policy=0, memory_size=4096)
    before = platform.pdh_cert_export()
    saved = json.loads(json.dumps(platform.export_state()))
    restored = SevPlatform.from_state(saved)
    assert restored.state == PlatformState.UNINIT and restored.guests == {}
    restored.init()
    assert restored.pdh_cert_export() == before
    assert restored.platform_status().owner
    assert restored.get_id() == platform.get_id()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 9}, "format"),
        ({"chip_seed": "zz"}, "chip_seed"),
        ({"pdh": {"private": "00", "cert": "00"}}, "pdh"),
    ],
)
def test_restore_refuses_malformed_state(change: dict, message: str) -> None:
    platform = platform_in(PlatformState.INIT)
    with pytest.raises(ValueError, match=message):
        SevPlatform.from_state({**platform.export_state(), **change})
