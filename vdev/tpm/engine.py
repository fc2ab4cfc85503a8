"""The vTPM engine: a TPM 2.0 (libtpms) with power, locality, measurements and state blobs.

Owns: :class:`Tpm` (the in-process TPM), :class:`TpmState` (its permanent and volatile
blobs) and :class:`TpmEngine` (the API shared with :class:`vdev.tpm.worker.TpmWorker`).

libtpms keeps its TPM in global variables, so a process holds at most one :class:`Tpm` at a
time: a second one is refused with :class:`TpmInUse` until the first is closed.  A host with
several vTPMs runs the others in worker processes (same API).

Commands are served one at a time in arrival order (a FIFO lock); :meth:`Tpm.cancel` does not
wait for it, since its purpose is to reach a command that is running.  Calls block while the
TPM computes (RSA key generation takes up to seconds): an event loop runs them in a thread;
ctypes releases the GIL meanwhile.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from vdev.errors import WouldWait
from vdev.inline import waiting_forbidden
from vdev.tpm import _native
from vdev.tpm import libtpms as lt
from vdev.tpm.errors import TpmError, TpmInUse, TpmStateError
from vdev.tpm.fastpath import FastPath

MAX_LOCALITY = 4
# Locality of the hash start/data/end signals: the TCG PC client assigns them to locality 4
# (the CPU's DRTM), which is also what lets _TPM_Hash_End extend PCR 17.
HASH_LOCALITY = 4


@dataclass(frozen=True)
class TpmState:
    """A TPM's state blobs as libtpms marshals them (swtpm's ``permall``/``volatilestate``).

    ``permanent``: seeds, hierarchy auth, NV indices, persistent objects, and the saved state
    of a Shutdown(STATE).  ``volatile``: PCRs, loaded objects and sessions of the running TPM
    (empty when the TPM is powered off: a power cycle loses them, as on hardware).
    """

    permanent: bytes
    volatile: bytes = b""


class TpmEngine(Protocol):
    """What every TPM backend offers; the front ends and the virtio device use only this."""

    @property
    def powered(self) -> bool: ...
    def power_on(self) -> None: ...
    def power_off(self) -> None: ...
    def reset(self) -> None: ...
    def execute(self, command: bytes, locality: int = 0) -> bytes: ...
    def cancel(self) -> None: ...
    def buffer_size(self, wanted: int = 0) -> tuple[int, int, int]: ...
    def hash_start(self) -> None: ...
    def hash_data(self, data: bytes) -> None: ...
    def hash_end(self) -> None: ...
    def established(self) -> bool: ...
    def reset_established(self, locality: int) -> None: ...
    def get_state(self) -> TpmState: ...
    def set_state(self, state: TpmState) -> None: ...
    def take_permanent(self) -> bytes | None: ...
    def info(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class FifoLock:
    """A lock granted in the order it was asked for (``threading.Lock`` promises no order).

    ``native`` is the C ticket lock (``vdev/tpm/_native.c``) that a command served in C
    (``apfs.tpm._pump``) takes too, without the GIL.  A caller that may not wait
    (:mod:`vdev.inline`) gets :class:`~vdev.errors.WouldWait` instead of a place in line.
    """

    __slots__ = ("native",)

    def __init__(self) -> None:
        self.native = _native.FifoLock()

    def __enter__(self) -> None:
        native = self.native
        if native.try_acquire():
            return
        if waiting_forbidden():
            raise WouldWait("the TPM is serving another caller")
        native.acquire()

    @property
    def busy(self) -> bool:
        """Held (or handed over to a waiter) right now: a caller would wait."""
        return self.native.busy

    def __exit__(self, *exc: object) -> None:
        self.native.release()


_owner_lock = threading.Lock()
_owner: Tpm | None = None


def check_locality(locality: int) -> None:
    if not 0 <= locality <= MAX_LOCALITY:
        raise TpmError(errno.EINVAL,
                       f"locality {locality} is outside 0..{MAX_LOCALITY}")


class Tpm:
    """The process's TPM 2.0, powered off until :meth:`power_on` (libtpms ``MainInit``).

    ``state``: start from these blobs (as :meth:`set_state`); without it the first power-on
    manufactures a new TPM (fresh seeds).  Nothing is written to disk: the blobs live in
    memory and leave only through :meth:`get_state`.
    """

    def __init__(self, state: TpmState | None = None) -> None:
        global _owner
        self._lib = lt.libtpms()
        with _owner_lock:
            if _owner is not None:
                raise TpmInUse(
                    "libtpms keeps one TPM per process and this process already has one: "
                    "close it, or run this TPM in a worker process (vdev.tpm.worker.TpmWorker)")
            _owner = self
        self._lock = FifoLock()
        self.powered_cell = _native.Cell(0)
        """1 while powered on; read by the fast path (:meth:`fast_path`) without the GIL."""
        self._lib.blobs.clear()
        self._stores_taken = self._lib.permanent_stores
        try:
            # libtpms keeps the TPM-established flag in a global that outlives the previous
            # TPM of this process; a new TPM starts with it clear, as a new swtpm process
            # does (a volatile blob restores its own value at power-on).  Locality 3 may.
            self._lib.locality = 3
            self._lib.reset_established()
            # The I/O buffer size is such a global too; back to libtpms's maximum.
            self._lib.set_buffer_size(self._lib.set_buffer_size(0)[2])
            if state is not None:
                self.set_state(state)
        except TpmError:
            self.close()  # give the process's libtpms back: this TPM never existed
            raise

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def powered(self) -> bool:
        return self.powered_cell.value == 1

    @powered.setter
    def powered(self, value: bool) -> None:
        self.powered_cell.value = int(value)

    def _require_power(self, what: str) -> None:
        if not self.powered:
            raise TpmStateError(f"{what}: the TPM is powered off (power it on first)")

    # -- power ---------------------------------------------------------------------------

    def power_on(self) -> None:
        """Power on (``_TPM_Init``): the TPM then waits for TPM2_Startup."""
        with self._lock:
            if self.powered:
                raise TpmStateError("power on: the TPM is already powered on")
            self._init()

    def _init(self) -> None:
        try:
            self._lib.main_init()
        except TpmError:
            self._lib.terminate()
            raise
        # A volatile blob resumes one power-on only (like a resume image); a later power
        # cycle starts from the permanent state, as swtpm deletes its volatilestate file.
        self._lib.blobs.pop(lt.BLOB_VOLATILE, None)
        self.powered = True

    def power_off(self) -> None:
        """Power off: volatile state (PCRs, sessions, loaded objects) is lost; permanent
        state, including what a Shutdown(STATE) saved, is kept."""
        with self._lock:
            self._require_power("power off")
            self._lib.terminate()
            self.powered = False

    def reset(self) -> None:
        """Reset (``_TPM_Init`` while powered): as a power cycle; Startup is needed again."""
        with self._lock:
            self._require_power("reset")
            self._lib.terminate()
            self.powered = False
            self._init()

    # -- commands ------------------------------------------------------------------------

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        """Run one TPM command from ``locality``; TPM errors come back as responses."""
        check_locality(locality)
        with self._lock:
            self._require_power("execute")
            self._lib.locality = locality
            return self._lib.process(bytes(command))

    def fast_path(self) -> FastPath:
        """How C runs :meth:`execute` at locality 0: this TPM's lock, powered on, the
        library's locality 0 (no locality callback registered)."""
        lib = self._lib
        return FastPath(lib.process_address, (self._lock.native,),
                        ((self.powered_cell, 1), (lib.locality_cell, 0)), lib.stores_cell)

    def cancel(self) -> None:
        """Ask the running command (if any) to stop early (TPM_RC_CANCELED); never waits."""
        self._lib.cancel()

    def buffer_size(self, wanted: int = 0) -> tuple[int, int, int]:
        """The TPM's I/O buffer size as ``(size, minimum, maximum)`` (swtpm's
        CMD_SET_BUFFERSIZE): 0 only asks; another value, clamped by libtpms to
        minimum..maximum, is set, which is allowed while powered off only."""
        with self._lock:
            if wanted and self.powered:
                raise TpmStateError(f"buffer size {wanted}: the TPM is powered on "
                                    "(power it off first)")
            return self._lib.set_buffer_size(wanted)

    # -- locality-4 measurements (TCG PC client: _TPM_Hash_Start/Data/End) --------------

    def hash_start(self) -> None:
        """Begin a measurement sequence; sets the TPM-established flag."""
        self._signal("hash start", self._lib.hash_start)

    def hash_data(self, data: bytes) -> None:
        self._signal("hash data", lambda: self._lib.hash_data(bytes(data)))

    def hash_end(self) -> None:
        """Complete it: after Startup PCR 17 is reset and extended with the digest (DRTM);
        before Startup the digest goes to PCR 0 (H-CRTM)."""
        self._signal("hash end", self._lib.hash_end)

    def _signal(self, what: str, call: Any) -> None:
        with self._lock:
            self._require_power(what)
            self._lib.locality = HASH_LOCALITY
            call()

    def established(self) -> bool:
        """The TPM-established flag (set by a hash start, kept across power cycles)."""
        with self._lock:
            self._require_power("read the established flag")
            return self._lib.established()

    def reset_established(self, locality: int) -> None:
        """Clear the established flag; libtpms allows it from locality 3 or 4 only
        (TpmLibraryError with TPM_BAD_LOCALITY 0x3d otherwise)."""
        check_locality(locality)
        with self._lock:
            self._require_power("reset the established flag")
            self._lib.locality = locality
            self._lib.reset_established()

    # -- state ---------------------------------------------------------------------------

    def get_state(self) -> TpmState:
        """The blobs: marshalled from the running TPM, or the stored ones when powered off."""
        with self._lock:
            return TpmState(self._lib.get_state(lt.STATE_PERMANENT),
                            self._lib.get_state(lt.STATE_VOLATILE))

    def set_state(self, state: TpmState) -> None:
        """Replace the TPM's state (powered off only); the next power-on starts from it.
        libtpms checks both blobs first: a refused blob changes nothing."""
        with self._lock:
            if self.powered:
                raise TpmStateError("set state: the TPM is powered on (power it off first)")
            if not state.permanent:
                raise TpmError(errno.EINVAL, "set state: the permanent state blob is empty")
            # The volatile blob is checked against the permanent one just set (libtpms reads
            # it from its cache of accepted blobs).
            try:
                self._lib.set_state(lt.STATE_PERMANENT, state.permanent)
                if state.volatile:
                    self._lib.set_state(lt.STATE_VOLATILE, state.volatile)
            finally:
                self._forget_cached_state()
            self._lib.blobs.clear()
            self._lib.blobs[lt.BLOB_PERMANENT] = state.permanent
            if state.volatile:
                self._lib.blobs[lt.BLOB_VOLATILE] = state.volatile

    def take_permanent(self) -> bytes | None:
        """The permanent blob if libtpms stored a new one since the last call, else None.

        libtpms stores ``permall`` during the command (or signal, or power-on) that changed
        it, so a caller that takes it right after that call and saves it before passing the
        response on acknowledges only what is durable (:meth:`vdev.tpm.vtpm.VTpm.transmit`).
        """
        if self._lib.permanent_stores == self._stores_taken:
            # Most commands store nothing: answered without the lock (a store racing with
            # this read belongs to a call whose own caller takes it afterwards).
            return None
        with self._lock:
            if self._lib.permanent_stores == self._stores_taken:
                return None
            self._stores_taken = self._lib.permanent_stores
            return self._lib.blobs.get(lt.BLOB_PERMANENT)

    def _forget_cached_state(self) -> None:
        """libtpms keeps a copy of every blob TPMLIB_SetState accepted for the next MainInit;
        the blobs dict is our one source, so drop that copy.  Setting NULL would mean "start
        empty", but a refused blob makes libtpms forget every cached one."""
        try:
            self._lib.set_state(lt.STATE_PERMANENT, b"")
        except TpmError:
            return
        raise TpmError(errno.EIO, "libtpms accepted an empty permanent state blob")

    def info(self) -> dict[str, Any]:
        """libtpms's version and TPMLIB_GetInfo (specification, attributes, features)."""
        with self._lock:
            info = self._lib.info()
            info["libtpms"] = {"version": self._lib.version(),
                               "profiles": self._lib.has("TPMLIB_SetProfile")}
            return info

    def close(self) -> None:
        """Power off if needed and give the process's libtpms back; idempotent."""
        global _owner
        with _owner_lock:
            if _owner is not self:
                return
            with self._lock:
                if self.powered:
                    self._lib.terminate()
                    self.powered = False
                self._lib.release_response_buffer()
                self._lib.blobs.clear()
            _owner = None
