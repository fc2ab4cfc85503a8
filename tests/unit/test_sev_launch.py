"""The whole attested launch, guest owner <-> emulated firmware, in process: chain export and
verification, session, LAUNCH_START, UPDATE_DATA, MEASURE, the owner's verification, the
secret, LAUNCH_FINISH, and what the host and a debugger can see afterwards."""

from __future__ import annotations

import uuid

import pytest

from tests.unit.sev_helpers import SECRET_AREA, launch_to_measure, ovmf_like, started_platform
from vdev.sev import Policy, SevError, Status
from vdev.sev import owner as sevowner

KERNEL = b"MZ\x00\x00bzImage" * 1000
INITRD = b"\x1f\x8binitrd" * 500
CMDLINE = "console=ttyS0 root=/dev/vda1"
SECRET = b"correct horse battery staple, 32+ bytes of disk key!!"


def owner_digest(firmware: bytes, cmdline: str = CMDLINE) -> bytes:
    return sevowner.launch_digest(firmware, KERNEL, INITRD, cmdline)


def verify(launch, digest: bytes, policy: int) -> bool:
    return sevowner.verify_measurement(
        launch.measurement,
        launch.session.tik,
        digest,
        policy,
        launch.platform.api,
        launch.platform.build,
    )


def inject(launch) -> bytes:
    table = sevowner.secret_table({sevowner.DISK_PASSPHRASE_GUID: SECRET})
    packaged = sevowner.package_secret(
        table, launch.session.tek, launch.session.tik, launch.measurement, launch.platform.api
    )
    launch.guests.launch_secret(launch.handle, packaged.header, SECRET_AREA.base, packaged.trans)
    return table


@pytest.mark.parametrize("policy", [0x0, Policy.NODBG])
def test_attested_launch_end_to_end(policy: int) -> None:
    platform, guests = started_platform()
    firmware = ovmf_like(64 * 1024)
    launch = launch_to_measure(platform, guests, policy, firmware, KERNEL, INITRD, CMDLINE)
    assert verify(launch, owner_digest(firmware), policy)

    table = inject(launch)
    guests.launch_finish(launch.handle)
    status = guests.guest_status(launch.handle)
    assert status.state.name == "RUNNING" and status.policy == policy

    # The host sees ciphertext only: never the secret, nor any 16-byte block of it, nor the
    # firmware's plaintext.
    ciphertext = guests.host_read(launch.handle, 0, platform.guests[launch.handle].size)
    assert SECRET not in ciphertext
    for offset in range(len(SECRET) - 15):
        assert SECRET[offset : offset + 16] not in ciphertext
    assert firmware[:4096] not in ciphertext

    # A debugger reads it only when the policy allows debugging.
    if policy & Policy.NODBG:
        with pytest.raises(SevError) as err:
            guests.dbg_decrypt(launch.handle, SECRET_AREA.base, len(table))
        assert err.value.status == Status.POLICY_FAILURE
    else:
        plain = guests.dbg_decrypt(launch.handle, SECRET_AREA.base, len(table))
        assert plain == table
        assert uuid.UUID(bytes_le=plain[:16]) == sevowner.SECRET_TABLE_GUID
        assert SECRET in plain
        base = launch.firmware_base
        assert guests.dbg_decrypt(launch.handle, base, len(firmware)) == firmware


def test_changed_firmware_byte_fails_verification() -> None:
    platform, guests = started_platform()
    firmware = ovmf_like(32 * 1024)
    changed = bytearray(firmware)
    changed[100] ^= 1
    launch = launch_to_measure(platform, guests, 0, bytes(changed), KERNEL, INITRD, CMDLINE)
    assert not verify(launch, owner_digest(firmware), 0)
    assert verify(launch, owner_digest(bytes(changed)), 0)


def test_changed_policy_fails_verification() -> None:
    """A host that launches with another policy than the owner's session is refused at
    LAUNCH_START (POLICY_MAC); and a measurement is never valid for another policy."""
    platform, guests = started_platform()
    firmware = ovmf_like(32 * 1024)
    with pytest.raises(SevError) as err:
        launch_to_measure(platform, guests, 0x0, firmware, KERNEL, session_policy=Policy.NODBG)
    assert err.value.status == Status.POLICY_FAILURE
    assert platform.guests == {}
    launch = launch_to_measure(platform, guests, 0, firmware, KERNEL, INITRD, CMDLINE)
    assert not verify(launch, owner_digest(firmware), Policy.NODBG)


def test_changed_cmdline_fails_verification() -> None:
    platform, guests = started_platform()
    firmware = ovmf_like(32 * 1024)
    launch = launch_to_measure(platform, guests, 0, firmware, KERNEL, INITRD, CMDLINE + " x")
    assert not verify(launch, owner_digest(firmware), 0)


def test_measurement_replayed_from_another_launch_fails() -> None:
    platform, guests = started_platform()
    firmware = ovmf_like(32 * 1024)
    first = launch_to_measure(platform, guests, 0, firmware, KERNEL, INITRD, CMDLINE)
    second = launch_to_measure(platform, guests, 0, firmware, KERNEL, INITRD, CMDLINE)
    assert verify(first, owner_digest(firmware), 0) and verify(second, owner_digest(firmware), 0)
    replayed = type(second)(**{**second.__dict__, "measurement": first.measurement})
    assert not verify(replayed, owner_digest(firmware), 0)


def test_secret_bound_to_another_measurement_is_refused_and_memory_unchanged() -> None:
    platform, guests = started_platform()
    firmware = ovmf_like(16 * 1024)
    launch = launch_to_measure(platform, guests, 0, firmware)
    other = launch_to_measure(platform, guests, 0, firmware)
    packaged = sevowner.package_secret(
        SECRET.ljust(64, b"\x00"),
        launch.session.tek,
        launch.session.tik,
        other.measurement,
        platform.api,
    )
    before = bytes(platform.guests[launch.handle].memory)
    with pytest.raises(SevError) as err:
        guests.launch_secret(launch.handle, packaged.header, SECRET_AREA.base, packaged.trans)
    assert err.value.status == Status.BAD_MEASUREMENT
    assert bytes(platform.guests[launch.handle].memory) == before


def test_secret_header_with_bad_mac_is_refused_and_memory_unchanged() -> None:
    platform, guests = started_platform()
    launch = launch_to_measure(platform, guests, 0, ovmf_like(16 * 1024))
    packaged = sevowner.package_secret(
        SECRET.ljust(64, b"\x00"),
        launch.session.tek,
        launch.session.tik,
        launch.measurement,
        platform.api,
    )
    header = bytearray(packaged.header)
    header[-1] ^= 0x80
    before = bytes(platform.guests[launch.handle].memory)
    with pytest.raises(SevError) as err:
        guests.launch_secret(launch.handle, bytes(header), SECRET_AREA.base, packaged.trans)
    assert err.value.status == Status.BAD_MEASUREMENT
    assert "MAC" in err.value.message
    assert bytes(platform.guests[launch.handle].memory) == before
    # The genuine header still works afterwards: the refusal changed nothing.
    guests.launch_secret(launch.handle, packaged.header, SECRET_AREA.base, packaged.trans)


def test_finish_forgets_transport_keys_and_digest() -> None:
    platform, guests = started_platform()
    launch = launch_to_measure(platform, guests, 0, ovmf_like(16 * 1024))
    guests.launch_finish(launch.handle)
    guest = platform.guests[launch.handle]
    assert (guest.tek, guest.tik, guest.launch_digest, guest.measure) == (None,) * 4
