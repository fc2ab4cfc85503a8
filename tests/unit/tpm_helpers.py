"""Shared by the vTPM unit tests: skip without libtpms0, a started TPM, PCR helpers."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator

import pytest

from vdev.errors import DeviceError
from vdev.tpm import commands
from vdev.tpm.config import TpmConfig
from vdev.tpm.engine import TpmEngine
from vdev.tpm.errors import TpmUnavailable
from vdev.tpm.libtpms import libtpms
from vdev.tpm.vtpm import VTpm, open_engine


def require_libtpms() -> None:
    """Skip the calling test module, naming the reason, when libtpms0 is not installed."""
    try:
        libtpms()
    except TpmUnavailable as exc:
        pytest.skip(f"libtpms0 is not installed ({exc}); scripts/setup.sh installs it",
                    allow_module_level=True)


def ok(response: bytes) -> bytes:
    """The response, after checking that it succeeded."""
    rc = commands.response_code(response)
    assert rc == commands.TPM_RC_SUCCESS, f"TPM response code {rc:#x}"
    return response


def started(tpm: TpmEngine) -> Iterator[TpmEngine]:
    """Power on, Startup(CLEAR), hand it out, close it."""
    try:
        tpm.power_on()
        ok(tpm.execute(commands.startup()))
        yield tpm
    finally:
        tpm.close()


def pcr(tpm: TpmEngine, bank: str, index: int) -> bytes:
    return commands.parse_pcr_read(ok(tpm.execute(commands.pcr_read(bank, [index]))))[0]


def extended(bank: str, old: bytes, digest: bytes) -> bytes:
    """What PCR_Extend makes of ``old``: H(old || digest) in the bank's hash."""
    return hashlib.new(bank, old + digest).digest()


def cancelled_rsa_primary(tpm: TpmEngine) -> int:
    """Run CreatePrimary RSA-3072 (≥ 0.1 s of prime search) in a thread, cancelling every
    5 ms until it returns, and give its response code.  A cancel that arrives before the
    command starts is forgotten by libtpms, hence the repetition; no timing is asserted."""
    responses: list[bytes] = []
    thread = threading.Thread(
        target=lambda: responses.append(tpm.execute(commands.create_primary("rsa3072"))))
    thread.start()
    while thread.is_alive():
        tpm.cancel()
        thread.join(0.005)
    return commands.response_code(responses[0])


def booted(config: TpmConfig) -> VTpm:
    """A vTPM of ``config``, booted as at mount; closed again if its boot fails."""
    tpm = VTpm(config, 0, open_engine())
    try:
        tpm.boot()
    except BaseException:
        tpm.close()
        raise
    return tpm


def refused(call: Callable[..., object], *args: object) -> DeviceError:
    """The DeviceError ``call(*args)`` raises."""
    with pytest.raises(DeviceError) as caught:
        call(*args)
    return caught.value
