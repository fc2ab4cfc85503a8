"""SEV guest contexts: the launch state machine, handles, policy, sessions, guest memory."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable

import pytest

from tests.unit.sev_helpers import started_platform
from vdev.errors import DeviceError
from vdev.sev import GuestState, Policy, SevError, SevPlatform, Status
from vdev.sev import owner as sevowner
from vdev.sev.guest import ALLOWED, COMMANDS, Guests

MEMORY = 64 * 1024
ZERO52 = bytes(52)

COMMAND_CALLS: dict[str, Callable[[Guests, int], object]] = {
    "LAUNCH_UPDATE_DATA": lambda g, h: g.launch_update_data(h, 0, 16),
    "LAUNCH_UPDATE_VMSA": lambda g, h: g.launch_update_vmsa(h, 0x1000),
    "LAUNCH_MEASURE": lambda g, h: g.launch_measure(h),
    "LAUNCH_SECRET": lambda g, h: g.launch_secret(h, ZERO52, 0, bytes(16)),
    "LAUNCH_FINISH": lambda g, h: g.launch_finish(h),
    "GUEST_STATUS": lambda g, h: g.guest_status(h),
    "ACTIVATE": lambda g, h: g.activate(h, 100),
    "DEACTIVATE": lambda g, h: g.deactivate(h),
    "DECOMMISSION": lambda g, h: g.decommission(h),
    "DBG_DECRYPT": lambda g, h: g.dbg_decrypt(h, 0, 16),
    "DBG_ENCRYPT": lambda g, h: g.dbg_encrypt(h, 0, bytes(16)),
}


def test_every_implemented_guest_command_is_exercised() -> None:
    assert set(COMMAND_CALLS) | {"LAUNCH_START"} == COMMANDS


def guest_in(state: GuestState, policy: int = Policy.ES) -> tuple[SevPlatform, Guests, int]:
    platform, guests = started_platform()
    handle = guests.launch_start(policy=policy, memory_size=MEMORY)
    if state in (GuestState.LSECRET, GuestState.RUNNING):
        guests.launch_measure(handle)
    if state == GuestState.RUNNING:
        guests.launch_finish(handle)
    assert guests.guest_status(handle).state == state
    return platform, guests, handle


def snapshot(platform: SevPlatform, handle: int) -> tuple:
    guest = platform.guests[handle]
    digest = None if guest.digest_ctx is None else guest.digest_ctx.copy().finalize()
    return guest.state, bytes(guest.memory), digest, guest.asid, guest.tek, guest.tik


@pytest.mark.parametrize("state", [GuestState.LUPDATE, GuestState.LSECRET, GuestState.RUNNING])
@pytest.mark.parametrize("command", sorted(COMMAND_CALLS))
def test_guest_command_in_wrong_state(state: GuestState, command: str) -> None:
    platform, guests, handle = guest_in(state)
    if command in ALLOWED[state]:
        try:
            COMMAND_CALLS[command](guests, handle)
        except SevError as err:  # allowed, but refused for its input (a zero secret MAC)
            assert err.status == Status.BAD_MEASUREMENT
        return
    before = snapshot(platform, handle)
    with pytest.raises(SevError) as err:
        COMMAND_CALLS[command](guests, handle)
    assert err.value.status == Status.INVALID_GUEST_STATE
    assert command in err.value.message and state.name in err.value.message
    assert snapshot(platform, handle) == before


@pytest.mark.parametrize("command", sorted(COMMAND_CALLS))
def test_unknown_handle_is_invalid_guest(command: str) -> None:
    _, guests, handle = guest_in(GuestState.LUPDATE)
    with pytest.raises(SevError) as err:
        COMMAND_CALLS[command](guests, handle + 7)
    assert err.value.status == Status.INVALID_GUEST
    assert str(handle + 7) in err.value.message


def test_unknown_handle_for_sharing_and_host_access_is_invalid_guest() -> None:
    _, guests = started_platform()
    for call in (
        lambda: guests.launch_start(policy=0, memory_size=MEMORY, handle=42),
        lambda: guests.host_read(42, 0, 16),
        lambda: guests.host_write(42, 0, b"x"),
    ):
        with pytest.raises(SevError) as err:
            call()
        assert err.value.status == Status.INVALID_GUEST


@pytest.mark.parametrize("command", sorted(COMMAND_CALLS))
def test_guest_commands_after_shutdown_are_invalid_platform_state(command: str) -> None:
    platform, guests, handle = guest_in(GuestState.LUPDATE)
    platform.shutdown()
    with pytest.raises(SevError) as err:
        COMMAND_CALLS[command](guests, handle)
    assert err.value.status == Status.INVALID_PLATFORM_STATE


# -- policy --------------------------------------------------------------------------------


def test_nodbg_refuses_debug_and_changes_nothing() -> None:
    platform, guests, handle = guest_in(GuestState.RUNNING, Policy.NODBG)
    before = snapshot(platform, handle)
    for command in ("DBG_DECRYPT", "DBG_ENCRYPT"):
        with pytest.raises(SevError) as err:
            COMMAND_CALLS[command](guests, handle)
        assert err.value.status == Status.POLICY_FAILURE and "NODBG" in err.value.message
    assert snapshot(platform, handle) == before


def test_debug_round_trip_without_nodbg() -> None:
    _, guests, handle = guest_in(GuestState.RUNNING, 0)
    guests.dbg_encrypt(handle, 0x100, b"guest data 16 B!" * 4)
    assert guests.dbg_decrypt(handle, 0x110, 32) == b"guest data 16 B!" * 2
    assert b"guest data" not in guests.host_read(handle, 0, MEMORY)


def test_key_sharing_shares_the_vek() -> None:
    _, guests = started_platform()
    first = guests.launch_start(policy=0, memory_size=MEMORY)
    second = guests.launch_start(policy=0, memory_size=MEMORY, handle=first)
    third = guests.launch_start(policy=0, memory_size=MEMORY)
    for handle in (first, second, third):
        guests.host_write(handle, 0x40, b"same plaintext!!")
        guests.launch_update_data(handle, 0x40, 16)
    read = [guests.host_read(h, 0x40, 16) for h in (first, second, third)]
    assert read[0] == read[1] != read[2]


@pytest.mark.parametrize(
    ("source_policy", "policy", "reason"),
    [
        (Policy.NOKS, Policy.NOKS, "NOKS"),
        (0, Policy.NOKS, "NOKS"),
        (0, Policy.NODBG, "policy"),
    ],
)
def test_noks_and_policy_mismatch_refuse_key_sharing(
    source_policy: int, policy: int, reason: str
) -> None:
    platform, guests = started_platform()
    source = guests.launch_start(policy=source_policy, memory_size=MEMORY)
    with pytest.raises(SevError) as err:
        guests.launch_start(policy=policy, memory_size=MEMORY, handle=source)
    assert err.value.status == Status.POLICY_FAILURE and reason in err.value.message
    assert list(platform.guests) == [source]


@pytest.mark.parametrize(
    ("major", "minor", "ok"), [(0, 24, True), (0, 25, False), (1, 0, False), (0, 0, True)]
)
def test_policy_api_version_check(major: int, minor: int, ok: bool) -> None:
    platform, guests = started_platform()
    policy = (major << 16) | (minor << 24)
    if ok:
        guests.launch_start(policy=policy, memory_size=MEMORY)
        return
    with pytest.raises(SevError) as err:
        guests.launch_start(policy=policy, memory_size=MEMORY)
    assert err.value.status == Status.POLICY_FAILURE
    assert f"API {major}.{minor}" in err.value.message
    assert platform.guests == {}


def test_es_policy_needs_a_platform_initialized_for_es() -> None:
    platform = SevPlatform(config_es=False)
    platform.init()
    with pytest.raises(SevError) as err:
        Guests(platform).launch_start(policy=Policy.ES, memory_size=MEMORY)
    assert err.value.status == Status.POLICY_FAILURE and "CONFIG_ES" in err.value.message


# -- sessions ------------------------------------------------------------------------------


def session_for(platform: SevPlatform, policy: int = 0) -> sevowner.OwnerSession:
    return sevowner.build_session(platform.pdh_cert_export().pdh, policy)


def flipped(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1
    return bytes(out)


@pytest.mark.parametrize("offset", [0, 20, 70])  # NONCE, WRAP_TK, WRAP_MAC
def test_session_with_bad_wrap_mac_is_refused(offset: int) -> None:
    platform, guests = started_platform()
    session = session_for(platform)
    with pytest.raises(SevError) as err:
        guests.launch_start(
            policy=0,
            memory_size=MEMORY,
            godh_cert=session.godh_cert,
            session=flipped(session.session, offset),
        )
    assert err.value.status == Status.BAD_MEASUREMENT and "WRAP_MAC" in err.value.message
    assert platform.guests == {}


def test_session_with_another_wrap_iv_unwraps_wrong_keys_and_is_refused() -> None:
    """WRAP_MAC covers WRAP_TK only: a changed IV unwraps another TIK, whose POLICY_MAC
    then fails."""
    platform, guests = started_platform()
    session = session_for(platform)
    with pytest.raises(SevError) as err:
        guests.launch_start(
            policy=0,
            memory_size=MEMORY,
            godh_cert=session.godh_cert,
            session=flipped(session.session, 50),
        )
    assert err.value.status == Status.POLICY_FAILURE
    assert platform.guests == {}


def test_session_policy_mac_over_another_policy_is_refused() -> None:
    platform, guests = started_platform()
    session = session_for(platform, policy=Policy.NODBG | Policy.NOKS)
    with pytest.raises(SevError) as err:
        guests.launch_start(
            policy=Policy.NODBG,
            memory_size=MEMORY,
            godh_cert=session.godh_cert,
            session=session.session,
        )
    assert err.value.status == Status.POLICY_FAILURE and "POLICY_MAC" in err.value.message
    guests.launch_start(
        policy=Policy.NODBG | Policy.NOKS,
        memory_size=MEMORY,
        godh_cert=session.godh_cert,
        session=session.session,
    )


def test_session_for_another_platforms_pdh_is_refused() -> None:
    _, guests = started_platform()
    other, _ = started_platform()
    session = session_for(other)
    with pytest.raises(SevError) as err:
        guests.launch_start(
            policy=0, memory_size=MEMORY, godh_cert=session.godh_cert, session=session.session
        )
    assert err.value.status == Status.BAD_MEASUREMENT


def test_session_keys_reach_the_guest() -> None:
    platform, guests = started_platform()
    session = session_for(platform)
    handle = guests.launch_start(
        policy=0, memory_size=MEMORY, godh_cert=session.godh_cert, session=session.session
    )
    guest = platform.guests[handle]
    assert (guest.tek, guest.tik) == (session.tek, session.tik)


@pytest.mark.parametrize(
    ("godh", "session", "status"),
    [
        (b"x" * 0x824, bytes(0x80), Status.INVALID_CERTIFICATE),
        ("pek", bytes(0x80), Status.INVALID_CERTIFICATE),
        ("godh", bytes(0x7F), Status.INVALID_LENGTH),
        (None, bytes(0x80), Status.INVALID_PARAM),
        ("godh", None, Status.INVALID_PARAM),
    ],
)
def test_malformed_launch_start_inputs(godh, session, status: Status) -> None:
    platform, guests = started_platform()
    good = session_for(platform)
    certs = {"godh": good.godh_cert, "pek": platform.pdh_cert_export().chain[:0x824]}
    with pytest.raises(SevError) as err:
        guests.launch_start(
            policy=0, memory_size=MEMORY, godh_cert=certs.get(godh, godh), session=session
        )
    assert err.value.status == status
    assert platform.guests == {}


def test_firmware_chosen_keys_without_a_session() -> None:
    platform, guests = started_platform()
    handle = guests.launch_start(policy=0, memory_size=MEMORY)
    assert len(guests.launch_measure(handle)) == 48
    assert len(platform.guests[handle].tik) == 16


# -- guest memory ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "length", "status"),
    [
        (8, 16, Status.INVALID_ADDRESS),
        (0, 8, Status.INVALID_LENGTH),
        (0, 0, Status.INVALID_LENGTH),
        (MEMORY - 16, 32, Status.INVALID_ADDRESS),
        (-16, 16, Status.INVALID_ADDRESS),
    ],
)
def test_update_data_range_rules(address: int, length: int, status: Status) -> None:
    platform, guests, handle = guest_in(GuestState.LUPDATE)
    before = snapshot(platform, handle)
    with pytest.raises(SevError) as err:
        guests.launch_update_data(handle, address, length)
    assert err.value.status == status
    assert snapshot(platform, handle) == before


def test_update_data_encrypts_with_an_address_tweak_and_measures_plaintext() -> None:
    platform, guests, handle = guest_in(GuestState.LUPDATE, 0)
    block = b"sixteen byte blk"
    guests.host_write(handle, 0x0, block * 2)
    guests.host_write(handle, 0x1000, block)
    guests.launch_update_data(handle, 0x0, 32)
    guests.launch_update_data(handle, 0x1000, 16)
    cipher = guests.host_read(handle, 0, 32) + guests.host_read(handle, 0x1000, 16)
    assert len({cipher[0:16], cipher[16:32], cipher[32:48]}) == 3
    assert block not in cipher
    guests.launch_measure(handle)
    assert platform.guests[handle].launch_digest == hashlib.sha256(block * 3).digest()
    assert guests.dbg_decrypt(handle, 0x10, 16) == block


def test_vmsa_is_measured_after_the_data_for_es_guests() -> None:
    platform, guests, handle = guest_in(GuestState.LUPDATE, Policy.ES)
    guests.host_write(handle, 0, b"F" * 4096)
    guests.host_write(handle, 0x2000, b"V" * 4096)
    guests.launch_update_data(handle, 0, 4096)
    guests.launch_update_vmsa(handle, 0x2000)
    guests.launch_measure(handle)
    expected = hashlib.sha256(b"F" * 4096 + b"V" * 4096).digest()
    assert platform.guests[handle].launch_digest == expected
    _, guests2, plain = guest_in(GuestState.LUPDATE, 0)
    with pytest.raises(SevError) as err:
        guests2.launch_update_vmsa(plain, 0x2000)
    assert err.value.status == Status.POLICY_FAILURE
    _, guests3, es = guest_in(GuestState.LUPDATE, Policy.ES)
    with pytest.raises(SevError) as err:
        guests3.launch_update_vmsa(es, 0x10)
    assert err.value.status == Status.INVALID_ADDRESS and "page" in err.value.message


def test_host_write_beyond_memory_is_refused() -> None:
    _, guests, handle = guest_in(GuestState.LUPDATE)
    with pytest.raises(DeviceError) as err:
        guests.host_write(handle, MEMORY - 1, b"ab")
    assert err.value.errno == errno.EFBIG and "beyond" in err.value.message
    assert guests.host_read(handle, MEMORY - 4, 100) == bytes(4)


# -- activation ------------------------------------------------------------------------------


def test_activate_deactivate_decommission() -> None:
    platform, guests = started_platform()
    first = guests.launch_start(policy=0, memory_size=MEMORY)
    second = guests.launch_start(policy=0, memory_size=MEMORY)
    for asid, status in ((0, Status.INVALID_ASID), (510, Status.INVALID_ASID)):
        with pytest.raises(SevError) as err:
            guests.activate(first, asid)
        assert err.value.status == status
    guests.activate(first, 5)
    with pytest.raises(SevError) as err:
        guests.activate(second, 5)
    assert err.value.status == Status.ASID_OWNED
    with pytest.raises(SevError) as err:
        guests.decommission(first)
    assert err.value.status == Status.ACTIVE
    assert guests.guest_status(first).asid == 5
    guests.deactivate(first)
    guests.decommission(first)
    guests.decommission(second)
    assert platform.guests == {} and platform.state.name == "INIT"
