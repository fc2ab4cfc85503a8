"""The virtio TPM device: the device side of the seed 002 guest driver (``tpm_virtio.c``).

Contract (the driver's header comment): one virtqueue; each request is a descriptor chain of
exactly one device-readable descriptor (the TPM command) followed by one device-writable
descriptor (the response buffer, the driver's 4096-byte ``virtqueue_buffer``).  The device
executes the command synchronously, writes the response into the second descriptor and puts
the chain on the used ring with the number of bytes written.

Sans-IO: a chain arrives as :class:`Descriptor` values (the readable one carries the guest's
bytes), :meth:`VirtioTpm.process` returns a :class:`Used` element (head, length, the bytes to
write).  Whoever moves bytes to and from guest memory, or plays the guest (the /dev nodes and
the socket front ends), goes through it.

Refusals: a malformed chain or a command over 4096 bytes is the driver's fault
(:class:`VirtioError`, EINVAL, as the driver itself refuses such a command); a response that
does not fit the writable descriptor is a device error (EPROTO, the errno the driver reports
for an over-long used length): it sets DEVICE_NEEDS_RESET and is never truncated silently.
The engine's own refusals (a powered-off TPM) propagate unchanged: the front end decides
what its guest sees (swtpm answers TPM_RC_FAILURE before CMD_INIT).
VIRTIO_ID_TPM 31 is the seed's number; upstream Linux assigned 31 to the video decoder.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from vdev.errors import DeviceError
from vdev.tpm import _native, commands
from vdev.tpm.engine import TpmEngine

VIRTIO_ID_TPM = 31
TPM_BUFSIZE = 4096
NUM_QUEUES = 1

# Device status bits (virtio 1.1 §2.1).
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 0x40

VIRTIO_F_VERSION_1 = 32
DEVICE_FEATURES = 1 << VIRTIO_F_VERSION_1  # the seed's driver asks for no device feature


class VirtioError(DeviceError):
    """A refused virtqueue request or status change; ``errno`` as the guest driver sees it."""


@dataclass(frozen=True)
class Descriptor:
    """One descriptor of a chain: ``writable`` is VRING_DESC_F_WRITE (device writes into it);
    ``length`` its buffer size; ``data`` the guest's bytes for a readable descriptor."""

    writable: bool
    length: int
    data: bytes = b""


@dataclass(frozen=True)
class Used:
    """A used-ring element: the chain's ``head`` index, the ``length`` written, and the
    ``response`` bytes to copy into the writable descriptor."""

    head: int
    length: int
    response: bytes


class VirtioTpm:
    """A virtio TPM device in front of a TPM engine (in process or in a worker)."""

    device_id = VIRTIO_ID_TPM
    num_queues = NUM_QUEUES

    def __init__(self, tpm: TpmEngine) -> None:
        self.tpm = tpm
        self.ready_cell = _native.Cell(0)
        """1 while :attr:`ready`; read by the fast path without the GIL."""
        self._status = 0
        self.driver_features = 0

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, status: int) -> None:
        self._status = status
        self.ready_cell.value = int(
            status & (STATUS_DRIVER_OK | STATUS_NEEDS_RESET) == STATUS_DRIVER_OK)

    @property
    def device_features(self) -> int:
        return DEVICE_FEATURES

    def features_text(self) -> str:
        """sysfs ``features``: one ``0``/``1`` per feature bit, bit 0 first, 64 bits."""
        return "".join("1" if self.driver_features >> bit & 1 else "0" for bit in range(64))

    def set_driver_features(self, features: int) -> None:
        """The driver's feature acknowledgement (before FEATURES_OK)."""
        unknown = features & ~DEVICE_FEATURES
        if unknown:
            raise VirtioError(errno.EINVAL,
                              f"driver features {features:#x}: bits {unknown:#x} are not offered "
                              f"(device features {DEVICE_FEATURES:#x})")
        if self.status & STATUS_FEATURES_OK:
            raise VirtioError(errno.EBUSY,
                              f"driver features {features:#x}: FEATURES_OK is already set")
        self.driver_features = features

    def set_status(self, status: int) -> None:
        """The driver writes the status byte; 0 resets the device (virtio §2.1.2)."""
        if not 0 <= status <= 0xFF:
            raise VirtioError(errno.EINVAL, f"status {status:#x} is not a byte")
        if status == 0:
            self.reset()
            return
        self.status = status | (self.status & STATUS_NEEDS_RESET)

    def reset(self) -> None:
        self.status = 0
        self.driver_features = 0

    def probe(self) -> None:
        """What the guest's virtio core and driver do at probe (virtio §3.1.1): acknowledge,
        accept VERSION_1 (the seed's driver asks for nothing more), FEATURES_OK, DRIVER_OK."""
        self.reset()
        self.set_status(STATUS_ACKNOWLEDGE)
        self.set_status(self.status | STATUS_DRIVER)
        self.set_driver_features(DEVICE_FEATURES)
        self.set_status(self.status | STATUS_FEATURES_OK)
        self.set_status(self.status | STATUS_DRIVER_OK)

    def transmit(self, command: bytes, locality: int = 0) -> bytes:
        """One command as the guest driver sends it: an out descriptor with the command and
        an in descriptor of the driver's TPM_BUFSIZE buffer; the response it gets back.
        The checks are :meth:`process`'s for that chain, without building it: this is the
        path of every front end's command."""
        return self._serve(0, command, TPM_BUFSIZE, locality)

    def process(self, head: int, chain: Sequence[Descriptor], locality: int = 0) -> Used:
        """Serve one request chain; raise before anything is executed if it is malformed.

        ``locality``: the virtio transport has none (a guest's commands come from locality
        0); the socket front ends that play the guest pass their client's."""
        self._check_chain(head, chain)
        response = self._serve(head, chain[0].data, chain[1].length, locality)
        return Used(head, len(response), response)

    @property
    def ready(self) -> bool:
        """DRIVER_OK is set and no device error asks for a reset: commands are served."""
        return self.ready_cell.value == 1

    def _serve(self, head: int, command: bytes, capacity: int, locality: int) -> bytes:
        """The device's checks around one command of a well-formed chain, and its response."""
        if not self.ready:
            status = self.status
            if not status & STATUS_DRIVER_OK:
                raise VirtioError(errno.EIO, f"chain {head}: the driver has not set DRIVER_OK "
                                             f"(status {status:#x})")
            raise VirtioError(errno.EIO, f"chain {head}: the device needs a reset after an "
                                         "earlier device error")
        if len(command) > TPM_BUFSIZE:
            raise VirtioError(errno.EINVAL,
                              f"chain {head}: command of {len(command)} bytes exceeds "
                              f"TPM_BUFSIZE {TPM_BUFSIZE}")
        return self.check_response(self.tpm.execute(command, locality), capacity, head)

    def check_response(self, response: bytes, capacity: int = TPM_BUFSIZE,
                       head: int = 0) -> bytes:
        """``response`` if the device may put it on the used ring; a response that does not
        fit ``capacity`` or disagrees with its header's size is a device error.  Also what
        follows a command that ran on a fast path (:meth:`vdev.tpm.vtpm.VTpm.finish_fast`)."""
        size = len(response)
        if size > capacity:
            self.status |= STATUS_NEEDS_RESET
            raise VirtioError(errno.EPROTO,
                              f"chain {head}: TPM response of {size} bytes does not fit "
                              f"the {capacity}-byte response descriptor (device error, "
                              "not truncated)")
        if size < commands.HEADER_SIZE or commands.response_size(response) != size:
            self.status |= STATUS_NEEDS_RESET
            raise VirtioError(errno.EPROTO,
                              f"chain {head}: TPM response of {size} bytes does not "
                              "match its header's size field (device error)")
        return response

    @staticmethod
    def _check_chain(head: int, chain: Sequence[Descriptor]) -> None:
        """Refuse a chain that is not one out descriptor with its data then one in."""
        if len(chain) != 2 or chain[0].writable or not chain[1].writable:
            shape = ", ".join("in" if d.writable else "out" for d in chain) or "empty"
            raise VirtioError(errno.EINVAL,
                              f"chain {head}: expected one out descriptor (the command) then "
                              f"one in descriptor (the response buffer), got [{shape}]")
        out = chain[0]
        if len(out.data) != out.length:
            raise VirtioError(errno.EINVAL,
                              f"chain {head}: out descriptor of length {out.length} carries "
                              f"{len(out.data)} bytes")
