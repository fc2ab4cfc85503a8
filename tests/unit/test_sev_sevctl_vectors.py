"""Vectors from a real peer: sevctl's own tests (``measurement build``, ``secret build``),
with its real OVMF footer and SEV-ES VMSA pages (tests/unit/sev_vectors/README.md).  Both the
guest owner's functions and the emulated firmware must reproduce them."""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path

from tests.unit.sev_helpers import launch_to_measure, started_platform
from vdev.sev import Policy
from vdev.sev import owner as sevowner
from vdev.sev.ovmf import hash_table_area, secret_area

DATA = Path(__file__).parent / "sev_vectors"
OVMF = (DATA / "OVMF.amdsev.fd_trimmed").read_bytes()
VMSA0 = (DATA / "vmsa0.bin").read_bytes()
VMSA1 = (DATA / "vmsa1.bin").read_bytes()

# tests/measurementbuild.rs: --api-major 0x01 --api-minor 40 --build-id 40 --policy 0x03
MEASURE_TIK = bytes.fromhex("3569cf61a32a602b87185ac6e0f55913")
MEASURE_NONCE = base64.b64decode("wxP6tRHCFrFQWxsuqZA8QA==")
API, BUILD, POLICY = (1, 40), 40, 0x03
KERNEL, INITRD = b"fake vmlinuz\n", b"fake initrd\n"
CMDLINE = "foo bar baz fake kernel=cmdline"


def measured(digest: bytes, policy: int = POLICY, api=API, build=BUILD, nonce=MEASURE_NONCE):
    measure = sevowner.expected_measurement(MEASURE_TIK, digest, nonce, policy, api, build)
    return base64.b64encode(measure + nonce).decode()


def test_measurement_from_a_raw_launch_digest() -> None:
    digest = base64.b64decode("xkvRAfyaSizgonxAjZIAkR8TmolUabBKQKb6KJCDDSM=")
    assert measured(digest) == "lswbxWxI9gckya16JQvdFtpYmNO4b+3inAPpqsgoBI7DE/q1EcIWsVBbGy6pkDxA"


def test_measurement_from_firmware() -> None:
    expected = "oMDewIouJSpbpNRHj7Mk3p08H2dPZQdsZMU14qIymBnDE/q1EcIWsVBbGy6pkDxA"
    assert measured(sevowner.launch_digest(OVMF)) == expected
    platform, guests = started_platform()
    launch = launch_to_measure(platform, guests, POLICY, OVMF)
    assert measured(platform.guests[launch.handle].launch_digest) == expected


def test_measurement_from_firmware_kernel_initrd_cmdline() -> None:
    expected = "h3auYbWQnVW7EGLWN4Hf9SN0oEYMPU2sK4bLnefWPwvDE/q1EcIWsVBbGy6pkDxA"
    assert measured(sevowner.launch_digest(OVMF, KERNEL, INITRD, CMDLINE)) == expected
    # The emulated firmware, fed as QEMU feeds it (the table at the footer's hash-table area).
    platform, guests = started_platform()
    launch = launch_to_measure(platform, guests, POLICY, OVMF, KERNEL, INITRD, CMDLINE)
    assert measured(platform.guests[launch.handle].launch_digest) == expected


def test_real_ovmf_footer_table() -> None:
    area, secret = hash_table_area(OVMF), secret_area(OVMF)
    assert area is not None and (area.base, area.size) == (0x80CC00, 0x400)
    assert secret is not None and (secret.base, secret.size) == (0x80C000, 0xC00)


def test_sev_es_measurement_with_vmsas() -> None:
    """SEV-ES, 4 vCPUs: LD = sha256(firmware || vmsa0 || vmsa1 x 3), API 1.49 build 6."""
    blob = "/o0nzDKE5XgtVnUZWPhUea/WZYrTKLExR7KCwuMdbActvpWfXTFk21KMZIAAhQny"
    mnonce = base64.b64decode(blob)[32:]
    policy = Policy.NODBG | Policy.ES
    platform, guests = started_platform()
    handle = guests.launch_start(policy=policy, memory_size=0x20000)
    guests.host_write(handle, 0x10000, OVMF)
    guests.launch_update_data(handle, 0x10000, len(OVMF))
    for cpu, vmsa in enumerate((VMSA0, VMSA1, VMSA1, VMSA1)):
        guests.host_write(handle, cpu * 0x1000, vmsa)
        guests.launch_update_vmsa(handle, cpu * 0x1000)
    guests.launch_measure(handle)
    digest = platform.guests[handle].launch_digest
    assert digest == hashlib.sha256(OVMF + VMSA0 + VMSA1 * 3).digest()
    assert measured(digest, policy, (1, 49), 6, mnonce) == blob


# tests/secretbuild.rs
SECRET_TEK = bytes.fromhex("52a869b79ab9c13bb6a92b0561619cb3")
SECRET_TIK = bytes.fromhex("c6d5a9956133050912b24bbe5c372686")
SECRET_MEASURE = base64.b64decode(
    "TLeA7607lZQntLjRY1/i+sbtdSZ+75zxpz4Px9hzpBLwItF5Q2o4prA++3ZZv9ZS"
)
SECRET_IV = base64.b64decode("rFR07U3TLH2YnsUj2SVZ7A==")
SECRET1 = (uuid.UUID("736869e5-84f0-4973-92ec-06879ce3da0b"), b"MY-LUKS-PASSPHRASE")
SECRET2 = (uuid.UUID("736869e5-aaaa-4973-92ec-06879ce3da0b"), b"SOME OTHER SECRET")


def built(*entries: tuple[uuid.UUID, bytes]) -> tuple[str, str]:
    packaged = sevowner.package_secret(
        sevowner.secret_table(dict(entries)),
        SECRET_TEK,
        SECRET_TIK,
        SECRET_MEASURE,
        (0, 24),
        iv=SECRET_IV,
    )
    return (base64.b64encode(packaged.header).decode(), base64.b64encode(packaged.trans).decode())


def test_secret_build_one_secret() -> None:
    assert built(SECRET1) == (
        "AAAAAKxUdO1N0yx9mJ7FI9klWey8FSzeYQ4X8K71VzNKLU/KQsIsQxLjtbhaPUewqshX5Q==",
        "0U3e5PcXv0UW+H4tSBFKOdCYfKE1+j38Bc2fuO16mYiyI+sWx7INfn+lgYj56GL12yyinDa+lVfCCwD/2w5cPA==",
    )


def test_secret_build_two_secrets() -> None:
    assert built(SECRET1, SECRET2) == (
        "AAAAAKxUdO1N0yx9mJ7FI9klWeyZ3r0dOEKHUOhIRqzGYYvTJgdMtBPL1nK6GD9aGET7Ng==",
        "0U3e5PcXv0UW+H4tSBFKObWYfKE1+j38Bc2fuO16mYiyI+sWx7INfn+lgYj56GL12yyinDa+lVfCC+WWs332lpLNUX1Z"
        "I3YK7vYgtys4X+uGxEIlkIQ90v8/w8ZFmQMe",
    )
