"""The vTPMs in the mount: where their sysfs directories and control files sit.

A guest kernel shows a TPM 2.0 behind a virtio-mmio transport as::

    sys/devices/platform/virtio-mmio.N/virtioN/       device, vendor
        tpm/tpmN/      tpm_version_major, dev, pcr-<bank>/0..23, device -> ../../../virtioN
        tpmrm/tpmrmN/  dev, device -> ../../../virtioN
    sys/class/tpm/tpmN     -> ../../devices/platform/virtio-mmio.N/virtioN/tpm/tpmN
    sys/class/tpmrm/tpmrmN -> ../../devices/platform/virtio-mmio.N/virtioN/tpmrm/tpmrmN

with the virtio bus (drivers/virtio/virtio.c; the driver's name is the seed's module,
``tpm_virtio``)::

    sys/bus/virtio/devices/virtioN -> ../../../devices/platform/virtio-mmio.N/virtioN
    sys/bus/virtio/drivers/tpm_virtio/virtioN -> ../../../../devices/platform/.../virtioN
    virtioN/{features,status,modalias}, virtioN/driver -> the driver, virtioN/subsystem

the character devices ``dev/tpmN`` and ``dev/tpmrmN`` in the mount (regular files that
behave as the devices do, see :class:`apfs.kernfs.Device`), and apfs adds
``apfs/tpm/<name>/`` (the ``[[tpm]]`` table's name): ``power``, ``reset``,
``locality``, ``established``, ``info``, ``cancel``, ``hash_start``, ``hash_data``,
``hash_end``, ``stateblob``.  Every file's content is a method of
:class:`vdev.tpm.vtpm.VTpm` or its virtio device (but the virtio bus's constant formats);
this module knows only names, modes and places.  Directories
take a mapping of the host's vTPMs by chip name (``tpm0`` → VTpm).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from apfs.kernfs import (
    Attr,
    Binary,
    Device,
    DirKind,
    Link,
    Links,
    Path,
    Subdir,
    Subdirs,
    directory,
    ro,
    rw,
    wo,
)
from vdev.tpm.chardev import TpmFile
from vdev.tpm.commands import PCR_COUNT, is_quick
from vdev.tpm.virtio import VIRTIO_ID_TPM
from vdev.tpm.vtpm import PcrBank, VTpm

VIRTIO_MMIO_VENDOR = 0x554D4551
"""The virtio-mmio VendorID register of QEMU's devices ("QEMU"), what ``vendor`` shows."""

def virtio_path(tpm: VTpm) -> Path:
    return ("sys", "devices", "platform", f"virtio-mmio.{tpm.index}", f"virtio{tpm.index}")


def _pcr_file(index: int) -> Attr:
    # Each read is a PCR_Read, which waits while the TPM computes (an RSA key: seconds).
    return ro(str(index), lambda bank: PcrBank.show_pcr(bank, index), queue=_bank_tpm)


def _bank_tpm(bank: PcrBank) -> VTpm:
    return bank.tpm


PCR_BANK = directory("pcr-bank", *(_pcr_file(i) for i in range(PCR_COUNT)))

TPM = directory(
    "tpm",
    ro("tpm_version_major", VTpm.show_tpm_version_major),
    ro("dev", VTpm.show_dev),
    Subdirs(PCR_BANK, lambda tpm: tpm.pcr_banks, stable=True),
    Link("device", virtio_path),
)

TPMRM = directory("tpmrm", ro("dev", VTpm.show_rm_dev), Link("device", virtio_path))

VIRTIO_DRIVER = "tpm_virtio"
"""The seed driver's name: ``.driver.name = KBUILD_MODNAME`` of ``tpm_virtio.c``."""
VIRTIO_BUS: Path = ("sys", "bus", "virtio")


def _virtio_status(tpm: VTpm) -> str:
    """virtio.c ``status_show``: the device status byte as ``0x%08x``."""
    return f"{tpm.virtio.status:#010x}\n"


VIRTIO = directory(
    "virtio",
    ro("device", lambda tpm: f"{VIRTIO_ID_TPM:#06x}\n"),
    ro("vendor", lambda tpm: f"{VIRTIO_MMIO_VENDOR:#06x}\n"),
    ro("status", _virtio_status),
    ro("features", lambda tpm: tpm.virtio.features_text() + "\n"),
    ro("modalias", lambda tpm: f"virtio:d{VIRTIO_ID_TPM:08X}v{VIRTIO_MMIO_VENDOR:08X}\n"),
    Link("driver", lambda tpm: (*VIRTIO_BUS, "drivers", VIRTIO_DRIVER)),
    Link("subsystem", lambda tpm: VIRTIO_BUS),
    Subdir("tpm", directory("tpm", Subdirs(TPM, lambda t: {t.device_name: t}, stable=True))),
    Subdir("tpmrm", directory("tpmrm", Subdirs(TPMRM, lambda t: {t.rm_device_name: t},
                                                stable=True))),
)

PLATFORM = directory(
    "platform",
    Subdirs(directory("virtio-mmio", Subdirs(VIRTIO, lambda t: {f"virtio{t.index}": t},
                                             stable=True)),
            lambda tpms: {f"virtio-mmio.{t.index}": t for t in tpms.values()}, stable=True),
)

CLASS_TPM = directory(
    "tpm", Links(lambda tpms: tpms, lambda t: (*virtio_path(t), "tpm", t.device_name), stable=True))

CLASS_TPMRM = directory(
    "tpmrm",
    Links(lambda tpms: {t.rm_device_name: t for t in tpms.values()},
          lambda t: (*virtio_path(t), "tpmrm", t.rm_device_name), stable=True))

def _virtio_devices(tpms: dict[str, VTpm]) -> dict[str, VTpm]:
    return {f"virtio{t.index}": t for t in tpms.values()}


BUS_VIRTIO = directory(
    "virtio",
    Subdir("devices", directory("devices", Links(_virtio_devices, virtio_path, stable=True))),
    Subdir("drivers", directory("drivers", Subdir(VIRTIO_DRIVER, directory(
        VIRTIO_DRIVER, Links(_virtio_devices, virtio_path, stable=True))))),
)
"""``sys/bus/virtio``: its devices and the TPM driver bound to each."""

def _tpm(tpm: VTpm) -> VTpm:
    return tpm


# Every control that reaches the engine waits for the TPM's running command (an RSA key:
# seconds) in a worker thread, in arrival order; ``locality`` is a plain value and
# ``cancel`` must reach the running command, so those two are served inline.
CONTROL = directory(
    "tpm",
    rw("power", VTpm.show_power, VTpm.store_power, queue=_tpm),
    wo("reset", VTpm.store_reset, queue=_tpm),
    rw("locality", VTpm.show_locality, VTpm.store_locality),
    rw("established", VTpm.show_established, VTpm.store_established, queue=_tpm),
    ro("info", VTpm.show_info, queue=_tpm),
    wo("cancel", VTpm.store_cancel),
    wo("hash_start", VTpm.store_hash_start, queue=_tpm),
    Binary("hash_data", 0o200, write=VTpm.write_hash_data, queue=_tpm),
    wo("hash_end", VTpm.store_hash_end, queue=_tpm),
    Binary("stateblob", 0o600, read=VTpm.read_stateblob, write=VTpm.write_stateblob,
           queue=_tpm),
)

CONTROLS = directory("tpm", Subdirs(CONTROL, lambda tpms: {t.name: t for t in tpms.values()},
                                    stable=True))


class DeviceFile:
    """An open ``dev/tpmN`` or ``dev/tpmrmN`` as the FUSE layer drives it: the file offsets
    FUSE passes are ignored (the kernel's TPM files reset the position at each write; a FUSE
    file cannot, so the device keeps its own cursor)."""

    __slots__ = ("_file",)

    def __init__(self, file: TpmFile) -> None:
        self._file = file

    def read(self, offset: int, size: int) -> bytes:
        return self._file.read(size)

    def write(self, offset: int, data: bytes) -> int:
        return self._file.write(data)

    def quick(self, data: bytes) -> bool:
        return is_quick(data)

    def release(self) -> Callable[[], None] | None:
        return self._file.release()


MAX_DEV_TPMS = DirKind.MAX_FILES // 2
"""``dev/`` shows the device files of a host's first 63 vTPMs (a directory table holds at
most 127 files)."""


def _dev_files(index: int) -> tuple[Device, Device]:
    def tpm(tpms: Mapping[str, VTpm]) -> VTpm:
        return tpms[f"tpm{index}"]

    def present(tpms: Mapping[str, VTpm]) -> bool:
        return f"tpm{index}" in tpms

    tpm0 = Device(f"tpm{index}", lambda tpms, nonblocking: DeviceFile(
        tpm(tpms).open_tpm(nonblocking)), tpm)
    # tpmrm is a stream (tpmrm_open: not seekable, pread is ESPIPE); tpm0 is seekable
    # through FUSE though the kernel's is not (no_llseek): FUSE cannot refuse lseek alone.
    tpmrm0 = Device(f"tpmrm{index}", lambda tpms, nonblocking: DeviceFile(
        tpm(tpms).open_tpmrm(nonblocking)), tpm, seekable=False)
    tpm0.when = tpmrm0.when = present
    return tpm0, tpmrm0


DEV = directory("dev", *(f for i in range(MAX_DEV_TPMS) for f in _dev_files(i)))
"""``MOUNT/dev``: ``tpmN`` and ``tpmrmN`` of each vTPM; takes the vTPMs by chip name."""
