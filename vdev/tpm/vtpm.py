"""One configured vTPM as a host shows it: its engine, its boot, its files' contents.

Owns: :class:`VTpm` (the engine of one ``[[tpm]]`` table, the locality its mount-side
commands use, the PCR banks its driver found at probe) and :class:`PcrBank`.  The
``show_<name>``/``store_<name>`` methods are the contents of the TPM's sysfs files
(drivers/char/tpm/tpm-sysfs.c) and of its apfs control files; where those files sit is
:mod:`apfs.tpm.tree`'s business.

Must not know: FUSE, paths in the mount, trio.  Refusals raise
:class:`~vdev.errors.DeviceError` before changing anything, as every apfs node does.

Theory of operation: at mount the platform powers the TPM on and its firmware sends
TPM2_Startup(CLEAR), as a booted guest's would; the guest kernel's driver then reads the
allocated PCR banks once (``tpm2_get_pcr_allocation``) and makes one ``pcr-<bank>``
directory per bank, fixed until the next probe.  ``echo 1 > power`` and ``echo 1 > reset``
repeat that boot (Startup included); ``echo 0 > power`` cuts the power, after which the
guest's driver times out on every command.
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

from vdev.errors import DeviceError
from vdev.kparse import kstrtobool, kstrtoul
from vdev.tpm import commands
from vdev.tpm.chardev import TpmChip, TpmFile
from vdev.tpm.config import DEFAULT_PCR_BANKS, TpmConfig
from vdev.tpm.engine import FifoLock, Tpm, TpmEngine, check_locality
from vdev.tpm.errors import TpmInUse, TpmLibraryError, TpmStateError
from vdev.tpm.provision import allocate_pcr_banks
from vdev.tpm.space import TPM_PT_TOTAL_COMMANDS, CommandTable, Space
from vdev.tpm.virtio import VirtioTpm
from vdev.tpm.worker import TpmWorker

TPM_MAJOR_MINOR = "10:224"
"""``dev`` of tpm0: the first chip takes the misc device's major 10, minor 224
(TPM_MINOR), so that /dev/tpm0 keeps its historical number."""
TPM_DYNAMIC_MAJOR = 253
"""The major ``alloc_chrdev_region`` gives the tpm class (dynamic; 253 on the usual x86
kernel): further chips are ``253:N`` and the resource managers ``253:65536+N``."""
TPM_NUM_DEVICES = 65536
BOOT_LOCALITY = 0
"""Where the firmware's Startup and the driver's probe come from: a PC's BIOS and OS run at
locality 0 (Startup is refused from localities 1 and 2, TPM_RC_LOCALITY)."""
TPM_BAD_LOCALITY = 0x3D
"""The TPM_RESULT libtpms answers when the established flag is reset from locality < 3."""

_T = TypeVar("_T")
Send = Callable[[bytes], bytes]


def open_engine() -> TpmEngine:
    """A new TPM: in this process while it has none (libtpms keeps one TPM per process),
    else in a worker process with the same API."""
    try:
        return Tpm()
    except TpmInUse:
        return TpmWorker()


class PcrBank(NamedTuple):
    """One ``pcr-<bank>`` directory: 24 files, each a PCR_Read of one PCR of the bank."""

    tpm: VTpm
    bank: str

    def show_pcr(self, index: int) -> str:
        return self.tpm.pcr_value(self.bank, index)


class VTpm:
    """The vTPM of one ``[[tpm]]`` table; ``index`` is its chip number (``tpm<index>``)."""

    def __init__(self, config: TpmConfig, index: int, engine: TpmEngine) -> None:
        self.config = config
        self.index = index
        self.engine = engine
        self.virtio = VirtioTpm(engine)
        """The transport every command of a front end goes through (:meth:`transmit`)."""
        self.locality = 0
        """The locality of what the mount sends this TPM on a guest's behalf (PCR reads,
        resetting the established flag); 0 as for an OS."""
        self.pcr_banks: dict[str, PcrBank] = {}
        """``pcr-<bank>`` → bank, as the guest driver found them at probe."""
        self.command_table = CommandTable({})
        """TPMA_CC of the commands the TPM listed at probe (what ``tpmrm`` accepts)."""
        self.chip = TpmChip(f"/dev/{self.device_name}")
        self._chip_lock = FifoLock()
        """The kernel's ``tpm_mutex``: one command, or one resource-manager sequence, at a
        time, in arrival order (:meth:`transmit`, :meth:`exclusive`)."""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def device_name(self) -> str:
        return f"tpm{self.index}"

    @property
    def rm_device_name(self) -> str:
        """Its resource manager's name (``tpmrm<index>``)."""
        return f"tpmrm{self.index}"

    def boot(self) -> None:
        """Manufacture (PCR banks of the configuration), power on, Startup(CLEAR), probe.

        Raises :class:`~vdev.tpm.errors.TpmError` naming what failed."""
        if self.config.pcr_banks != DEFAULT_PCR_BANKS:
            allocate_pcr_banks(self.engine, list(self.config.pcr_banks))
        self._power_on()
        self.virtio.probe()
        response = self._expect("GetCapability(PCRS)",
                                commands.get_capability(commands.TPM_CAP_PCRS, 0, 1))
        self.pcr_banks = {f"pcr-{bank}": PcrBank(self, bank)
                          for bank in commands.parse_pcr_allocation(response)}
        response = self._expect("GetCapability(PT_TOTAL_COMMANDS)", commands.get_capability(
            commands.TPM_CAP_TPM_PROPERTIES, TPM_PT_TOTAL_COMMANDS, 1))
        total = int.from_bytes(response[-4:], "big")
        self.command_table = CommandTable.parse(
            self._expect("GetCapability(COMMANDS)", CommandTable.probe_commands(total)))

    def close(self) -> None:
        self.engine.close()

    def transmit(self, command: bytes, locality: int | None = None) -> bytes:
        """One TPM command from a front end (/dev nodes, sockets, sysfs reads) through the
        virtio device; ``locality`` defaults to this vTPM's (``apfs/tpm/<name>/locality``).

        Blocks while the TPM computes (seconds for an RSA key): callers on an event loop run
        it in a thread.  Commands of all callers are served one at a time, in arrival order.
        Raises :class:`~vdev.tpm.virtio.VirtioError` for a refused request and
        :class:`~vdev.tpm.errors.TpmStateError` while the TPM is powered off."""
        with self._chip_lock:
            return self._send(command, locality)

    @property
    def busy(self) -> bool:
        """A command or a sequence is running or waiting: :meth:`transmit` would wait."""
        return self._chip_lock.busy

    def exclusive(self, sequence: Callable[[Send], _T], locality: int | None = None) -> _T:
        """Run ``sequence(send)`` while no other command of any front end runs: ``send``
        transmits one command as :meth:`transmit` does.  For the resource manager's
        load-execute-save sequence, which another opener must never see half-done (the
        kernel holds ``tpm_mutex`` across it).  Waits its turn in arrival order, like
        :meth:`transmit`; ``send`` must not be used after ``sequence`` returns."""
        with self._chip_lock:
            return sequence(lambda command: self._send(command, locality))

    def _send(self, command: bytes, locality: int | None) -> bytes:
        """One command through the virtio device; the caller holds the chip lock."""
        return self.virtio.transmit(command, self.locality if locality is None else locality)

    def _power_on(self) -> None:
        self.engine.power_on()
        self._startup()

    def _startup(self) -> None:
        """What the firmware of a booting guest sends first."""
        self._expect("Startup(CLEAR)", commands.startup(commands.TPM_SU_CLEAR))

    def _expect(self, what: str, command: bytes) -> bytes:
        """A boot-time command that must succeed, sent from the boot locality."""
        response = self.engine.execute(command, BOOT_LOCALITY)
        rc = commands.response_code(response)
        if rc != commands.TPM_RC_SUCCESS:
            raise DeviceError(errno.EIO, f"{self.name}: {what} failed with TPM response "
                                         f"code {rc:#x}")
        return response

    # -- /dev/tpm<N>, /dev/tpmrm<N> (tpm-dev.c, tpmrm-dev.c) ----------------------------

    def open_tpm(self, nonblocking: bool = False) -> TpmFile:
        """``/dev/tpm<N>``: exclusive (EBUSY for a second opener); commands go straight to
        the TPM."""
        self.chip.claim()
        return TpmFile(self.chip.name, self.transmit, nonblocking=nonblocking,
                       on_close=self.chip.unclaim)

    def open_tpmrm(self, nonblocking: bool = False) -> TpmFile:
        """``/dev/tpmrm<N>``: any number of openers, each with its own :class:`Space`."""
        node = f"/dev/{self.rm_device_name}"
        space = Space(node, self.command_table)

        def execute(command: bytes) -> bytes:
            return self.exclusive(lambda send: space.execute(command, send))

        def close() -> None:
            with contextlib.suppress(TpmStateError):  # powered off: it holds no session
                self.exclusive(space.close)

        return TpmFile(node, execute, nonblocking=nonblocking, flush=close)

    # -- sysfs (tpm-sysfs.c, tpm-chip.c) -------------------------------------------------

    def pcr_value(self, bank: str, index: int) -> str:
        """``pcr_value_show``: the digest in upper-case hex and a newline."""
        try:
            response = self.transmit(commands.pcr_read(bank, [index]))
        except TpmStateError:
            # A powered-off TPM never answers: the guest's driver gives up with ETIMEDOUT.
            raise DeviceError(errno.ETIMEDOUT,
                              f"{self.device_name}: PCR_Read of {bank} PCR {index}: the TPM "
                              f"is powered off (write 1 to its power control file)") from None
        try:
            digests = commands.parse_pcr_read(response)
        except ValueError as exc:
            raise DeviceError(errno.EIO, f"{self.device_name}: {exc}") from None
        if len(digests) != 1:
            raise DeviceError(errno.EFAULT, f"{self.device_name}: PCR_Read of {bank} PCR "
                                            f"{index} returned {len(digests)} digests")
        return digests[0].hex().upper() + "\n"

    def show_tpm_version_major(self) -> str:
        return "2\n"  # libtpms serves TPM 2.0 only (config.VERSIONS)

    def show_dev(self) -> str:
        if self.index == 0:
            return TPM_MAJOR_MINOR + "\n"
        return f"{TPM_DYNAMIC_MAJOR}:{self.index}\n"

    def show_rm_dev(self) -> str:
        """``dev`` of ``tpmrm<index>``."""
        return f"{TPM_DYNAMIC_MAJOR}:{TPM_NUM_DEVICES + self.index}\n"

    # -- apfs control files ------------------------------------------------------------

    def show_power(self) -> str:
        return f"{int(self.engine.powered)}\n"

    def store_power(self, text: str) -> None:
        """``1``: power on and Startup(CLEAR) as firmware would; ``0``: power off.  Either
        is a no-op when the TPM is in that state already (like mssim's POWER_ON)."""
        on = kstrtobool(text, name="power")
        if on == self.engine.powered:
            return
        if on:
            self._power_on()
        else:
            self.engine.power_off()

    @contextlib.contextmanager
    def _powered(self, what: str) -> Iterator[None]:
        """A control that needs a powered TPM: ENODEV otherwise, as for an offline device."""
        try:
            yield
        except TpmStateError:
            if self.engine.powered:
                raise
            raise DeviceError(errno.ENODEV, f"{what}: {self.name} is powered off "
                                            "(echo 1 > power first)") from None

    def store_reset(self, text: str) -> None:
        """``1``: platform reset (_TPM_Init) and the firmware's Startup(CLEAR) again."""
        if kstrtobool(text, name="reset"):
            with self._powered("reset"):
                self.engine.reset()
            self._startup()

    def show_locality(self) -> str:
        return f"{self.locality}\n"

    def store_locality(self, text: str) -> None:
        locality = kstrtoul(text, 0, name="locality")
        check_locality(locality)
        self.locality = locality

    def show_established(self) -> str:
        with self._powered("established"):
            return f"{int(self.engine.established())}\n"

    def store_established(self, text: str) -> None:
        """``0`` clears the TPM-established flag; the TPM allows it from locality 3 or 4."""
        if kstrtobool(text, name="established"):
            raise DeviceError(errno.EINVAL, f"established: {text.strip()!r}: only a hash "
                                            "start sets the flag; write 0 to reset it")
        try:
            with self._powered("established"):
                self.engine.reset_established(self.locality)
        except TpmLibraryError as exc:
            if exc.rc != TPM_BAD_LOCALITY:
                raise
            raise DeviceError(errno.EPERM, f"established: resetting the flag needs locality "
                                           f"3 or 4, this TPM's locality is {self.locality} "
                                           f"(echo 3 > locality)") from None

    def show_info(self) -> str:
        """libtpms's version and TPMLIB_GetInfo, with this vTPM's configuration, as JSON."""
        info = {"name": self.name, "device": self.device_name,
                "pcr_banks": [bank.bank for bank in self.pcr_banks.values()],
                "process": "in process" if isinstance(self.engine, Tpm) else "worker",
                **self.engine.info()}
        return json.dumps(info, indent=1) + "\n"
