"""The virtio TPM device (vdev.tpm.virtio) in front of the real libtpms, as the seed's
driver uses it: one out descriptor with the command, one 4096-byte in descriptor."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from tests.unit.tpm_helpers import ok, require_libtpms, started
from vdev.tpm import commands as cmd
from vdev.tpm.engine import Tpm
from vdev.tpm.errors import TpmStateError
from vdev.tpm.virtio import (
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
    TPM_BUFSIZE,
    VIRTIO_F_VERSION_1,
    VIRTIO_ID_TPM,
    Descriptor,
    VirtioError,
    VirtioTpm,
)

require_libtpms()

READY = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK


@pytest.fixture
def tpm() -> Iterator[Tpm]:
    yield from started(Tpm())


@pytest.fixture
def device(tpm: Tpm) -> VirtioTpm:
    device = VirtioTpm(tpm)
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    device.set_driver_features(1 << VIRTIO_F_VERSION_1)
    device.set_status(READY)
    return device


def chain(command: bytes, capacity: int = TPM_BUFSIZE) -> list[Descriptor]:
    return [Descriptor(writable=False, length=len(command), data=command),
            Descriptor(writable=True, length=capacity)]


def refused(code: int, device: VirtioTpm, descriptors: list[Descriptor]) -> str:
    with pytest.raises(VirtioError) as info:
        device.process(7, descriptors)
    assert info.value.errno == code, info.value
    return info.value.message


def test_identity_and_features(device: VirtioTpm) -> None:
    assert (device.device_id, device.num_queues) == (VIRTIO_ID_TPM, 1) == (31, 1)
    assert device.features_text() == "0" * 32 + "1" + "0" * 31
    with pytest.raises(VirtioError, match="FEATURES_OK is already set"):
        device.set_driver_features(0)
    device.set_status(0)
    with pytest.raises(VirtioError, match=r"bits 0x1 are not offered"):
        device.set_driver_features(1)


def test_request_chain_returns_used_length(device: VirtioTpm) -> None:
    used = device.process(3, chain(cmd.get_random(32)))
    assert used.head == 3
    assert used.length == len(used.response) == cmd.response_size(used.response) == 44
    ok(used.response)


def test_tpm_errors_travel_as_responses(device: VirtioTpm) -> None:
    used = device.process(0, chain(cmd.command(0x1FF)))
    assert used.length == 10
    assert cmd.response_code(used.response) == cmd.TPM_RC_COMMAND_CODE


def test_command_over_4096_bytes_is_refused_before_the_tpm(device: VirtioTpm,
                                                           tpm: Tpm) -> None:
    big = cmd.command(cmd.TPM_CC_PCR_EXTEND, bytes(TPM_BUFSIZE - cmd.HEADER_SIZE + 1))
    message = refused(errno.EINVAL, device, chain(big))
    assert "command of 4097 bytes exceeds TPM_BUFSIZE 4096" in message
    tpm.power_off()  # proves nothing reached the TPM: it would have raised TpmStateError
    refused(errno.EINVAL, device, chain(big))


@pytest.mark.parametrize(("descriptors", "shape"), [
    ([], "empty"),
    ([Descriptor(True, 4096)], "in"),
    ([Descriptor(True, 4096), Descriptor(False, 12, cmd.get_random(8))], "in, out"),
    ([Descriptor(False, 12, cmd.get_random(8))] * 2, "out, out"),
    ([Descriptor(False, 12, cmd.get_random(8)), Descriptor(True, 4096),
      Descriptor(True, 4096)], "out, in, in"),
])
def test_chain_shape_is_checked(device: VirtioTpm, descriptors: list[Descriptor],
                                shape: str) -> None:
    assert f"got [{shape}]" in refused(errno.EINVAL, device, descriptors)


def test_out_descriptor_length_must_match_its_bytes(device: VirtioTpm) -> None:
    bad = [Descriptor(False, 20, cmd.get_random(8)), Descriptor(True, 4096)]
    assert "length 20 carries 12 bytes" in refused(errno.EINVAL, device, bad)


def test_response_that_does_not_fit_is_a_device_error(device: VirtioTpm) -> None:
    message = refused(errno.EPROTO, device, chain(cmd.get_random(32), capacity=43))
    assert "44 bytes does not fit the 43-byte response descriptor" in message
    assert device.status & STATUS_NEEDS_RESET
    assert "needs a reset" in refused(errno.EIO, device, chain(cmd.get_random(8)))
    device.set_status(0)
    device.set_status(READY)
    assert device.process(1, chain(cmd.get_random(32), capacity=44)).length == 44


def test_a_powered_off_tpm_is_the_engines_refusal(device: VirtioTpm, tpm: Tpm) -> None:
    tpm.power_off()
    with pytest.raises(TpmStateError, match="execute: the TPM is powered off"):
        device.process(0, chain(cmd.get_random(8)))
    assert not device.status & STATUS_NEEDS_RESET  # not a device error


def test_requests_need_driver_ok(tpm: Tpm) -> None:
    device = VirtioTpm(tpm)
    assert "has not set DRIVER_OK" in refused(errno.EIO, device, chain(cmd.get_random(8)))


def test_probe_then_transmit_with_a_locality(tpm: Tpm) -> None:
    device = VirtioTpm(tpm)
    device.probe()
    assert device.status == READY
    assert device.driver_features == 1 << VIRTIO_F_VERSION_1
    extend_17 = cmd.pcr_extend(17, {"sha256": bytes(32)})
    # PCR 17 is extended from localities 2-4 only: else TPM_RC_LOCALITY.
    assert cmd.response_code(device.transmit(extend_17, locality=0)) == 0x907
    assert cmd.response_code(device.transmit(extend_17, locality=4)) == 0
    with pytest.raises(VirtioError) as info:
        device.transmit(b"\x80\x01" + bytes(TPM_BUFSIZE))
    assert info.value.errno == errno.EINVAL
