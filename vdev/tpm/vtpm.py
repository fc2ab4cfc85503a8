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

Durability: every engine call of a front end or a control goes through :meth:`VTpm.durable`,
which holds this vTPM's queue from the call until the permanent blob libtpms stored during
it (if any) has gone through :attr:`VTpm.persist` (``--state``): no response leaves before
the state it implies is saved.  ``cancel`` alone bypasses the queue (it must reach the
running command).
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

from vdev.errors import DeviceError
from vdev.kparse import kstrtobool, kstrtoul
from vdev.sealed import SealError, header_length
from vdev.tpm import commands, stateblob
from vdev.tpm.chardev import TpmChip, TpmFile
from vdev.tpm.config import DEFAULT_PCR_BANKS, TpmConfig
from vdev.tpm.engine import FifoLock, Tpm, TpmEngine, TpmState, check_locality
from vdev.tpm.errors import TpmInUse, TpmLibraryError, TpmStateError
from vdev.tpm.fastpath import FastPath
from vdev.tpm.provision import allocate_pcr_banks, provision_ek_certificate
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

T = TypeVar("T")
Send = Callable[[bytes], bytes]
Persist = Callable[[bytes], None]
"""Saves a new permanent blob durably before returning, or raises DeviceError (EIO)."""


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


class _Durable:
    """A context that holds ``lock`` and, at its end, saves what the calls in it changed."""

    __slots__ = ("_lock", "_save")

    def __init__(self, lock: FifoLock, save: Callable[[], None]) -> None:
        self._lock = lock
        self._save = save

    def __enter__(self) -> None:
        self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            self._save()
        finally:
            self._lock.__exit__()


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
        self.persist: Persist | None = None
        """Set by a host with ``--state``: every new permanent blob goes through it before
        the response of the call that made it is passed on (:meth:`durable`)."""
        self._lock = FifoLock()
        """The kernel's ``tpm_mutex``: one command, or one resource-manager sequence, at a
        time, in arrival order; held from an engine call to the save of what it changed, so
        no response (of any caller) is passed on before the permanent state it implies is
        durable (:meth:`durable`, :meth:`transmit`, :meth:`exclusive`)."""
        self._durable = _Durable(self._lock, self._save_permanent)
        """``with self._durable:`` is :meth:`durable` without a closure per call (the path of
        every command)."""
        self._boot_state: TpmState | None = None
        """The permanent state right after :meth:`boot`: what ``apfs/reset`` goes back to."""
        self._import = bytearray()
        """The part of a state blob written to ``stateblob`` so far."""

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

    def boot(self, saved: TpmState | None = None) -> None:
        """Start the TPM as the platform's firmware does, then probe it as the guest's driver.

        Without ``saved``: manufacture (PCR banks of the configuration, the EK certificate),
        power on, Startup(CLEAR).  With ``saved`` (``--state``): start from it, power on and
        Startup(STATE), which resumes what a Shutdown(STATE) saved; the TPM refuses it after
        any other shutdown, and then gets Startup(CLEAR) (PCRs reset), as firmware falls
        back to a cold boot.  Manufacturing choices apply to a new TPM only.

        Raises :class:`~vdev.tpm.errors.TpmError` naming what failed."""
        with self._lock:
            try:
                if saved is not None:
                    self.engine.set_state(saved)
                else:
                    self._manufacture()
                self._power_on(resume=saved is not None)
            finally:
                self._save_permanent()
            self._boot_state = TpmState(self.engine.get_state().permanent)
            self._probe()

    def _manufacture(self) -> None:
        if self.config.pcr_banks != DEFAULT_PCR_BANKS:
            allocate_pcr_banks(self.engine, list(self.config.pcr_banks))
        if self.config.ek_certificate:
            provision_ek_certificate(self.engine)

    def _probe(self) -> None:
        """The guest driver's probe: virtio handshake, then the allocated PCR banks."""
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
        :class:`~vdev.tpm.errors.TpmStateError` while the TPM is powered off.

        With ``--state`` a command that changed the permanent state (NV, hierarchies,
        persistent objects) returns only once that state is saved; if saving fails its
        response is withheld (DeviceError EIO naming the file), though the TPM keeps the
        change and a later save includes it: acknowledged implies durable."""
        with self._durable:
            return self._send(command, locality)

    @property
    def busy(self) -> bool:
        """A command or a sequence is running or waiting: :meth:`transmit` would wait."""
        return self._lock.busy

    def exclusive(self, sequence: Callable[[Send], T], locality: int | None = None) -> T:
        """Run ``sequence(send)`` while no other command of any front end runs: ``send``
        transmits one command as :meth:`transmit` does.  For the resource manager's
        load-execute-save sequence, which another opener must never see half-done (the
        kernel holds ``tpm_mutex`` across it).  Waits its turn in arrival order, like
        :meth:`transmit`, and is durable like it; ``send`` must not be used after
        ``sequence`` returns."""
        return self.durable(lambda: sequence(lambda command: self._send(command, locality)))

    def fast_path(self) -> FastPath | None:
        """How C runs :meth:`transmit` at locality 0 (:class:`~vdev.tpm.fastpath.FastPath`):
        this vTPM's lock first, the virtio device ready; the response checks and the save
        are :meth:`_finish_fast`'s.  None for a TPM in a worker process."""
        if not isinstance(self.engine, Tpm):
            return None
        return self.engine.fast_path().behind(lock=self._lock.native,
                                              gate=((self.virtio.ready_cell, 1),),
                                              finish=self._finish_fast)

    def _finish_fast(self, _request: bytes, response: bytes) -> bytes:
        """The rest of a :meth:`transmit` whose command ran on the fast path, which still
        holds this vTPM's lock: the device's response checks and the save, then release."""
        try:
            return self.virtio.check_response(response)
        finally:
            self._durable.__exit__()

    def _send(self, command: bytes, locality: int | None) -> bytes:
        """One command through the virtio device; the caller holds the lock."""
        return self.virtio.transmit(command, self.locality if locality is None else locality)

    # -- durability ----------------------------------------------------------------------

    def durable(self, call: Callable[[], T]) -> T:
        """Run ``call`` on the engine, then save the permanent state if it changed, before
        returning its result; calls of all callers run one at a time, in arrival order.

        Front ends that drive the engine directly (swtpm's CMD_INIT, CMD_HASH_*, mssim's
        POWER_ON) wrap the call in this, so what they acknowledge is durable as well."""
        with self._durable:
            return call()

    def _save_permanent(self) -> None:
        blob = self.engine.take_permanent()
        if blob is not None and self.persist is not None:
            self.persist(blob)

    def _power_on(self, resume: bool = False) -> None:
        self.engine.power_on()
        self._startup(resume)

    def _startup(self, resume: bool = False) -> None:
        """What the firmware of a booting guest sends first: Startup(CLEAR) on a cold boot;
        on a resume Startup(STATE), or Startup(CLEAR) when the TPM refuses it (no state was
        saved by a Shutdown(STATE)).  A TPM that resumed from an imported volatile blob is
        started already (TPM_RC_INITIALIZE): nothing to send."""
        if resume:
            rc = commands.response_code(self.engine.execute(
                commands.startup(commands.TPM_SU_STATE), BOOT_LOCALITY))
            if rc in (commands.TPM_RC_SUCCESS, commands.TPM_RC_INITIALIZE):
                return
        response = self.engine.execute(commands.startup(commands.TPM_SU_CLEAR), BOOT_LOCALITY)
        rc = commands.response_code(response)
        if rc not in (commands.TPM_RC_SUCCESS, commands.TPM_RC_INITIALIZE):
            raise DeviceError(errno.EIO, f"{self.name}: Startup(CLEAR) failed with TPM "
                                         f"response code {rc:#x}")

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
        self.durable(self._power_on if on else self.engine.power_off)

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
                self.durable(lambda: (self.engine.reset(), self._startup()))

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
                self.durable(lambda: self.engine.reset_established(self.locality))
        except TpmLibraryError as exc:
            if exc.rc != TPM_BAD_LOCALITY:
                raise
            raise DeviceError(errno.EPERM, f"established: resetting the flag needs locality "
                                           f"3 or 4, this TPM's locality is {self.locality} "
                                           f"(echo 3 > locality)") from None

    def show_info(self) -> str:
        """libtpms's version and TPMLIB_GetInfo, with this vTPM's configuration and the TPM's
        fixed properties (GetCapability), as JSON."""
        info = {"name": self.name, "device": self.device_name,
                "pcr_banks": [bank.bank for bank in self.pcr_banks.values()],
                "process": "in process" if isinstance(self.engine, Tpm) else "worker",
                "tpm_properties": self._tpm_properties(),
                **self.engine.info()}
        return json.dumps(info, indent=1) + "\n"

    def _tpm_properties(self) -> dict[str, object] | str:
        """What ``tpm2_getcap properties-fixed`` shows of who made the TPM, or why not."""
        try:
            response = self.transmit(commands.get_capability(
                commands.TPM_CAP_TPM_PROPERTIES, commands.TPM_PT_FIXED, commands.PT_FIXED_COUNT))
            props = commands.parse_tpm_properties(response)
        except TpmStateError:
            return "unavailable: the TPM is powered off"
        except ValueError as exc:
            return f"unavailable: {exc}"
        return commands.describe_fixed_properties(props)

    # -- control files of this part: cancel, hash, stateblob; apfs/reset -----------------

    def store_cancel(self, text: str) -> None:
        """``1``: TPMLIB_CancelCommand: the running command (a key generation) ends early
        with TPM_RC_CANCELED.  Never waits for the command queue: it must reach the command
        that holds it.  A cancel with no command running is forgotten, as in libtpms."""
        if kstrtobool(text, name="cancel"):
            if not self.engine.powered:
                raise DeviceError(errno.ENODEV, f"cancel: {self.name} is powered off "
                                                "(echo 1 > power first)")
            self.engine.cancel()

    def store_hash_start(self, text: str) -> None:
        """``1``: _TPM_Hash_Start from locality 4 (sets the TPM-established flag)."""
        if kstrtobool(text, name="hash_start"):
            self._hash("hash_start", self.engine.hash_start)

    def write_hash_data(self, _offset: int, data: bytes) -> None:
        """Each write() is one _TPM_Hash_Data of its bytes (binary, any length)."""
        self._hash("hash_data", lambda: self.engine.hash_data(data))

    def store_hash_end(self, text: str) -> None:
        """``1``: _TPM_Hash_End: after Startup, PCR 17 is reset and extended with the
        sequence's digest (DRTM); before Startup the digest goes to PCR 0 (H-CRTM)."""
        if kstrtobool(text, name="hash_end"):
            self._hash("hash_end", self.engine.hash_end)

    def _hash(self, what: str, call: Callable[[], None]) -> None:
        try:
            with self._powered(what):
                self.durable(call)
        except TpmLibraryError as exc:
            # libtpms refuses data or an end without a start (TPM_FAIL).
            raise DeviceError(errno.EINVAL, f"{what}: the TPM refused it ({exc.message}); "
                                            "a sequence is hash_start, hash_data..., "
                                            "hash_end") from None

    def read_stateblob(self) -> bytes:
        """The TPM's state blobs in :mod:`vdev.tpm.stateblob`'s format: the live state
        (volatile included) while powered, else the stored permanent state."""
        with self._lock:
            return stateblob.encode(self.engine.get_state())

    def write_stateblob(self, offset: int, data: bytes) -> None:
        """Import a blob (``cat blob > stateblob``) into the powered-off TPM, written in
        one sequential pass: it takes effect at the write() that completes it (the header
        says its length) and then starts at the next ``echo 1 > power``; a refused blob
        changes nothing.  With ``--state`` it is saved before that write() returns."""
        if self.engine.powered:
            raise DeviceError(errno.EBUSY, f"stateblob: {self.name} is powered on; a state "
                                           "blob is imported into a powered-off TPM "
                                           "(echo 0 > power first)")
        if offset == 0:
            self._import.clear()
        elif offset != len(self._import):
            self._import.clear()
            raise DeviceError(errno.EINVAL, f"stateblob: write at offset {offset}, not "
                                            "where the blob so far ends: write it in one "
                                            "sequential pass from offset 0")
        self._import += data
        if len(self._import) > stateblob.MAX_SIZE:
            self._import.clear()
            raise DeviceError(errno.EFBIG, f"stateblob: more than {stateblob.MAX_SIZE} bytes")
        total = header_length(self._import)
        if total is None and b"\n" not in self._import and len(self._import) < 256:
            return  # the header line is not complete yet
        if total is not None and len(self._import) < total:
            return
        raw = bytes(self._import)
        self._import.clear()
        try:
            state = stateblob.decode("stateblob", raw)
        except SealError as exc:
            raise DeviceError(errno.EINVAL, str(exc)) from None
        try:
            self.import_state(state)
        except TpmLibraryError as exc:
            raise DeviceError(errno.EINVAL, f"stateblob: libtpms refused the blob: "
                                            f"{exc.message}") from None

    def import_state(self, state: TpmState) -> None:
        """Give the powered-off TPM ``state`` (libtpms checks it first; a refused blob,
        TpmLibraryError, changes nothing) and, with ``--state``, save it before returning.
        For every importer: the ``stateblob`` file, swtpm's CMD_SET_STATEBLOB."""
        with self._lock:
            self.engine.set_state(state)
            if self.persist is not None:
                self.persist(state.permanent)

    def rewind(self) -> None:
        """``apfs/reset``: back to the TPM this mount booted (seeds, NV, persistent objects
        as right after boot; with ``--state``, as loaded), powered on, Startup(CLEAR),
        TPM-established flag clear, locality 0: each test of a mounted fixture starts from
        the same TPM."""
        assert self._boot_state is not None, "boot() first"
        boot_state = self._boot_state
        with self._lock:
            try:
                if self.engine.powered:
                    self.engine.power_off()
                self.engine.set_state(boot_state)
                self._power_on()
                # Clear, as at boot: libtpms keeps the flag in a process global, outside
                # the state blobs; locality 3 may reset it.
                self.engine.reset_established(3)
            finally:
                self._save_permanent()
        self.locality = 0
