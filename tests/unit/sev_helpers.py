"""Shared by the SEV unit tests: an initialized platform, an OVMF-like firmware image, and a
guest owner driving a launch the way QEMU and sevctl do."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vdev.sev import Guests, SevPlatform
from vdev.sev import owner as sevowner
from vdev.sev.kernel_hashes import kernel_hashes_table
from vdev.sev.ovmf import (
    SEV_HASH_TABLE_GUID,
    SEV_SECRET_GUID,
    Area,
    area_entry,
    build_footer_table,
    hash_table_area,
)

PAGE = 4096
HASH_AREA = Area(0x1000, 0x400)  # where the firmware reserves the kernel-hashes table
SECRET_AREA = Area(0x2000, 0xC00)  # where it expects the launch secret


SEED_EXAMPLE = """\
[sev-launch]
flags = "00000000"
policy = "000000"
dh_pub_qx = "0123456789abcdef0123456789abcdef"
dh_pub_qy = "0123456789abcdef0123456789abcdef"
nonce = "0123456789abcdef"
vcpu_count = "1"
vcpu_length = "30"
vcpu_mask = "00ab"
"""
"""Verbatim from seed 001 (QEMU RFC v1 06/22, "A typical SEV config file looks like
this"); its DH key is not a point on P-384."""


def ovmf_like(size: int, seed: bytes = b"") -> bytes:
    """A firmware image of ``size`` bytes (a multiple of 16) whose reset-vector footer
    table carries the SEV hash-table and secret-area entries, as sevctl's test OVMF does."""
    footer = build_footer_table(
        {
            SEV_HASH_TABLE_GUID: area_entry(HASH_AREA.base, HASH_AREA.size),
            SEV_SECRET_GUID: area_entry(SECRET_AREA.base, SECRET_AREA.size),
        }
    )
    body_len = size - len(footer)
    assert body_len >= 0 and size % 16 == 0
    pattern = seed or os.urandom(32)
    body = pattern * (body_len // len(pattern) + 1)
    return body[:body_len] + footer


def started_platform() -> tuple[SevPlatform, Guests]:
    platform = SevPlatform()
    platform.init()
    return platform, Guests(platform)


@dataclass
class Launch:
    """One guest launched from firmware (+ kernel-hashes table) up to LAUNCH_MEASURE."""

    platform: SevPlatform
    guests: Guests
    handle: int
    session: sevowner.OwnerSession
    measurement: bytes
    firmware_base: int


def launch_to_measure(
    platform: SevPlatform,
    guests: Guests,
    policy: int,
    firmware: bytes,
    kernel: bytes | None = None,
    initrd: bytes | None = None,
    cmdline: str | None = None,
    *,
    session_policy: int | None = None,
) -> Launch:
    """Export and verify the chain, build a session, then play QEMU: LAUNCH_START, load the
    firmware at the top of guest memory and the kernel-hashes table at the address the
    firmware's footer table names, LAUNCH_UPDATE_DATA both, LAUNCH_MEASURE."""
    export = platform.pdh_cert_export()
    sevowner.verify_chain(export.pdh, export.chain)
    session = sevowner.build_session(
        export.pdh, policy if session_policy is None else session_policy
    )
    area = hash_table_area(firmware)
    low_end = area.base + area.size if area is not None else 0  # the firmware goes above it
    memory_size = -(-(low_end + len(firmware) + 0x10000) // PAGE) * PAGE
    handle = guests.launch_start(
        policy=policy,
        memory_size=memory_size,
        godh_cert=session.godh_cert,
        session=session.session,
    )
    guests.activate(handle, handle)
    firmware_base = memory_size - len(firmware)
    guests.host_write(handle, firmware_base, firmware)
    guests.launch_update_data(handle, firmware_base, len(firmware))
    if kernel is not None:
        assert area is not None
        table = kernel_hashes_table(kernel, initrd, cmdline)
        guests.host_write(handle, area.base, table)
        guests.launch_update_data(handle, area.base, len(table))
    measurement = guests.launch_measure(handle)
    return Launch(platform, guests, handle, session, measurement, firmware_base)
