"""libtpms (Debian ``libtpms0``) through ctypes: the only module that touches the C library.

Owns: the declared C signatures, the one place where a ``TPM_RESULT`` becomes
:class:`TpmLibraryError`, the registered callbacks (NVRAM kept in a Python dict, locality
taken from :attr:`Libtpms.locality`) and the freeing of every buffer libtpms allocates.

libtpms is a process-wide singleton (one TPM, global state), so this module hands out one
:class:`Libtpms` per process through :func:`libtpms`; :mod:`vdev.tpm.engine` decides who may
use it.  ctypes releases the GIL around every foreign call, so a long command (RSA key
generation) does not stall other Python threads; the callbacks take it back briefly.

Never let libtpms write files of its own: with the load/store callbacks registered it
never looks at ``TPM_PATH``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

from vdev.tpm import _native
from vdev.tpm.errors import TpmLibraryError, TpmUnavailable

SONAME = "libtpms.so.0"

TPMLIB_TPM_VERSION_2 = 1
TPM_SUCCESS = 0
TPM_FAIL = 9
# Returned by the load callback for "no such blob": libtpms then manufactures a fresh TPM
# (permanent state) or starts without volatile state.
TPM_RETRY = 0x800

# enum TPMLIB_StateType; the names libtpms passes to the NVRAM callbacks for each.
STATE_PERMANENT = 1
STATE_VOLATILE = 2
BLOB_PERMANENT = "permall"
BLOB_VOLATILE = "volatilestate"

# enum TPMLIB_InfoFlags
INFO_SPECIFICATION = 1
INFO_ATTRIBUTES = 2
INFO_FEATURES = 4
INFO_ALL = INFO_SPECIFICATION | INFO_ATTRIBUTES | INFO_FEATURES

_TPM_RESULT = ctypes.c_uint32
_BUF = ctypes.POINTER(ctypes.c_ubyte)

_NVRAM_INIT = ctypes.CFUNCTYPE(_TPM_RESULT)
_NVRAM_LOAD = ctypes.CFUNCTYPE(_TPM_RESULT, ctypes.POINTER(_BUF), ctypes.POINTER(ctypes.c_uint32),
                               ctypes.c_uint32, ctypes.c_char_p)
_NVRAM_STORE = ctypes.CFUNCTYPE(_TPM_RESULT, _BUF, ctypes.c_uint32, ctypes.c_uint32,
                                ctypes.c_char_p)
_NVRAM_DELETE = ctypes.CFUNCTYPE(_TPM_RESULT, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_ubyte)
_IO_INIT = ctypes.CFUNCTYPE(_TPM_RESULT)
_IO_LOCALITY = ctypes.CFUNCTYPE(_TPM_RESULT, ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32)
_IO_PRESENCE = ctypes.CFUNCTYPE(_TPM_RESULT, ctypes.POINTER(ctypes.c_ubyte), ctypes.c_uint32)


class _Callbacks(ctypes.Structure):
    """``struct libtpms_callbacks`` of ``<libtpms/tpm_library.h>``."""

    _fields_ = (
        ("sizeOfStruct", ctypes.c_int),
        ("tpm_nvram_init", _NVRAM_INIT),
        ("tpm_nvram_loaddata", _NVRAM_LOAD),
        ("tpm_nvram_storedata", _NVRAM_STORE),
        ("tpm_nvram_deletename", _NVRAM_DELETE),
        ("tpm_io_init", _IO_INIT),
        ("tpm_io_getlocality", _IO_LOCALITY),
        ("tpm_io_getphysicalpresence", _IO_PRESENCE),
    )


# (name, restype, argtypes) of every function used; declared once at load.
_SIGNATURES: tuple[tuple[str, Any, tuple[Any, ...]], ...] = (
    ("TPMLIB_GetVersion", ctypes.c_uint32, ()),
    ("TPMLIB_ChooseTPMVersion", _TPM_RESULT, (ctypes.c_int,)),
    ("TPMLIB_RegisterCallbacks", _TPM_RESULT, (ctypes.POINTER(_Callbacks),)),
    ("TPMLIB_MainInit", _TPM_RESULT, ()),
    ("TPMLIB_Terminate", None, ()),
    ("TPMLIB_Process", _TPM_RESULT, (ctypes.POINTER(_BUF), ctypes.POINTER(ctypes.c_uint32),
                                     ctypes.POINTER(ctypes.c_uint32), ctypes.c_char_p,
                                     ctypes.c_uint32)),
    ("TPMLIB_CancelCommand", _TPM_RESULT, ()),
    ("TPMLIB_GetInfo", ctypes.c_void_p, (ctypes.c_int,)),
    ("TPMLIB_GetState", _TPM_RESULT, (ctypes.c_int, ctypes.POINTER(_BUF),
                                      ctypes.POINTER(ctypes.c_uint32))),
    ("TPMLIB_SetState", _TPM_RESULT, (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)),
    ("TPMLIB_SetBufferSize", ctypes.c_uint32, (ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32),
                                               ctypes.POINTER(ctypes.c_uint32))),
    ("TPM_IO_Hash_Start", _TPM_RESULT, ()),
    ("TPM_IO_Hash_Data", _TPM_RESULT, (ctypes.c_char_p, ctypes.c_uint32)),
    ("TPM_IO_Hash_End", _TPM_RESULT, ()),
    ("TPM_IO_TpmEstablished_Get", _TPM_RESULT, (ctypes.POINTER(ctypes.c_ubyte),)),
    ("TPM_IO_TpmEstablished_Reset", _TPM_RESULT, ()),
    ("TPM_Malloc", _TPM_RESULT, (ctypes.POINTER(_BUF), ctypes.c_uint32)),
    ("TPM_Free", None, (ctypes.c_void_p,)),
)


class Libtpms:
    """The loaded library with its callbacks registered; one per process (:func:`libtpms`).

    ``blobs`` is the TPM's NVRAM as libtpms sees it (``permall``, ``volatilestate``): the load
    callback serves from it, the store callback writes into it.  :attr:`locality` is the
    locality of the next command.  Callers serialise the calls themselves.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self.blobs: dict[str, bytes] = {}
        self.stores_cell = _native.Cell(0)
        """How many times libtpms stored ``permall`` (it does so inside the command that
        changed the permanent state): how :meth:`Tpm.take_permanent` and the fast path
        know it moved."""
        self.locality_cell = _native.Cell(0)
        self._locality_callback = _IO_LOCALITY(self._get_locality)
        self._new_response_buffer()
        # The CFUNCTYPE objects must outlive the registration: libtpms keeps the pointers.
        self._callbacks = _Callbacks(
            ctypes.sizeof(_Callbacks),
            _NVRAM_INIT(lambda: TPM_SUCCESS),
            _NVRAM_LOAD(self._load),
            _NVRAM_STORE(self._store),
            _NVRAM_DELETE(self._delete),
            _IO_INIT(lambda: TPM_SUCCESS),
            _IO_LOCALITY(),  # none: locality 0 (see the locality setter)
            _IO_PRESENCE(Libtpms._get_presence),
        )

    # -- callbacks (called by libtpms with the GIL re-acquired; never raise) ----------------

    def _load(self, data: Any, length: Any, _tpm_number: int, name: bytes) -> int:
        blob = self.blobs.get(name.decode("ascii", "replace"))
        if blob is None:
            return TPM_RETRY
        # libtpms free()s what it gets: allocate with its own allocator.
        buf = _BUF()
        if self._lib.TPM_Malloc(ctypes.byref(buf), max(len(blob), 1)) != TPM_SUCCESS:
            return TPM_FAIL
        ctypes.memmove(buf, blob, len(blob))
        data[0] = buf
        length[0] = len(blob)
        return TPM_SUCCESS

    def _store(self, data: Any, length: int, _tpm_number: int, name: bytes) -> int:
        key = name.decode("ascii", "replace")
        self.blobs[key] = ctypes.string_at(data, length)
        if key == BLOB_PERMANENT:
            self.stores_cell.value += 1
        return TPM_SUCCESS

    def _delete(self, _tpm_number: int, name: bytes, must_exist: int) -> int:
        removed = self.blobs.pop(name.decode("ascii", "replace"), None)
        return TPM_FAIL if removed is None and must_exist else TPM_SUCCESS

    def _get_locality(self, locality: Any, _tpm_number: int) -> int:
        locality[0] = self.locality_cell.value
        return TPM_SUCCESS

    @staticmethod
    def _get_presence(presence: Any, _tpm_number: int) -> int:
        # Physical presence is never asserted: nothing in apfs models the switch yet.
        presence[0] = 0
        return TPM_SUCCESS

    @property
    def permanent_stores(self) -> int:
        return self.stores_cell.value

    @property
    def locality(self) -> int:
        return self.locality_cell.value

    @locality.setter
    def locality(self, value: int) -> None:
        """libtpms asks for every command's locality through the locality callback, and
        takes 0 when none is registered.  The callback (a call into Python, ~1 µs a
        command) is registered only while the locality is not 0: the usual command needs
        no Python for it, which is what lets ``apfs.tpm._pump`` serve one in C."""
        was = self.locality_cell.value
        self.locality_cell.value = value
        if (value == 0) != (was == 0):
            self._callbacks.tpm_io_getlocality = (self._locality_callback if value
                                                  else _IO_LOCALITY())
            _check("TPMLIB_RegisterCallbacks",
                   self._lib.TPMLIB_RegisterCallbacks(ctypes.byref(self._callbacks)))

    @property
    def process_address(self) -> int:
        """Where ``TPMLIB_Process`` is, for a caller in C (``apfs.tpm._pump``)."""
        address = ctypes.cast(self._lib.TPMLIB_Process, ctypes.c_void_p).value
        assert address is not None
        return address

    # -- the library's functions ---------------------------------------------------------

    def version(self) -> str:
        """``TPMLIB_GetVersion`` as ``major.minor.micro``."""
        v = self._lib.TPMLIB_GetVersion()
        return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"

    def has(self, symbol: str) -> bool:
        """Whether this libtpms exports ``symbol`` (features such as profiles came later)."""
        return hasattr(self._lib, symbol)

    def register(self) -> None:
        """Choose TPM 2.0 and register the callbacks: once, before any other call (the
        state functions dispatch on the chosen version too)."""
        _check("TPMLIB_ChooseTPMVersion", self._lib.TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2))
        _check("TPMLIB_RegisterCallbacks",
               self._lib.TPMLIB_RegisterCallbacks(ctypes.byref(self._callbacks)))

    def main_init(self) -> None:
        """``TPMLIB_MainInit``: power on (manufactures a TPM when there is no permall)."""
        _check("TPMLIB_MainInit", self._lib.TPMLIB_MainInit())

    def terminate(self) -> None:
        self._lib.TPMLIB_Terminate()

    def process(self, command: bytes) -> bytes:
        """``TPMLIB_Process``: one command in, its response out (TPM errors are responses)."""
        _check("TPMLIB_Process",
               self._lib.TPMLIB_Process(*self._process_refs, command, len(command)))
        return ctypes.string_at(self._resp, self._resp_len.value)

    def release_response_buffer(self) -> None:
        if self._resp:
            self._lib.TPM_Free(self._resp)
        self._new_response_buffer()

    def _new_response_buffer(self) -> None:
        """No response buffer yet: TPMLIB_Process allocates it and reallocates as needed; it
        is kept across calls (as swtpm does) until release_response_buffer()."""
        self._resp = _BUF()
        self._resp_size = ctypes.c_uint32(0)
        self._resp_len = ctypes.c_uint32(0)
        # byref() of the three once per buffer: each costs ~0.3 µs on a ~4 µs path.
        self._process_refs = (ctypes.byref(self._resp), ctypes.byref(self._resp_len),
                              ctypes.byref(self._resp_size))

    def cancel(self) -> None:
        _check("TPMLIB_CancelCommand", self._lib.TPMLIB_CancelCommand())

    def get_state(self, state_type: int) -> bytes:
        """``TPMLIB_GetState``: the live blob while powered, else the stored or cached one."""
        buf = _BUF()
        length = ctypes.c_uint32(0)
        rc = self._lib.TPMLIB_GetState(state_type, ctypes.byref(buf), ctypes.byref(length))
        try:
            # "No such blob" from our load callback while powered off: there is none.
            if rc == TPM_RETRY:
                return b""
            _check("TPMLIB_GetState", rc)
            return ctypes.string_at(buf, length.value) if buf else b""
        finally:
            if buf:
                self._lib.TPM_Free(buf)

    def set_state(self, state_type: int, blob: bytes) -> None:
        """``TPMLIB_SetState`` (powered off only): libtpms unmarshals the blob, refusing one
        it cannot parse (and then forgets every blob set so far), and keeps it for the next
        MainInit, which consumes it.  A volatile blob is checked against the permanent one
        set before it."""
        _check("TPMLIB_SetState", self._lib.TPMLIB_SetState(state_type, blob, len(blob)))

    def set_buffer_size(self, wanted: int) -> tuple[int, int, int]:
        """``TPMLIB_SetBufferSize``: 0 queries; else clamped to min..max.  (size, min, max)"""
        low, high = ctypes.c_uint32(0), ctypes.c_uint32(0)
        size = self._lib.TPMLIB_SetBufferSize(wanted, ctypes.byref(low), ctypes.byref(high))
        return size, low.value, high.value

    def hash_start(self) -> None:
        _check("TPM_IO_Hash_Start", self._lib.TPM_IO_Hash_Start())

    def hash_data(self, data: bytes) -> None:
        _check("TPM_IO_Hash_Data", self._lib.TPM_IO_Hash_Data(data, len(data)))

    def hash_end(self) -> None:
        _check("TPM_IO_Hash_End", self._lib.TPM_IO_Hash_End())

    def established(self) -> bool:
        flag = ctypes.c_ubyte(0)
        _check("TPM_IO_TpmEstablished_Get",
               self._lib.TPM_IO_TpmEstablished_Get(ctypes.byref(flag)))
        return bool(flag.value)

    def reset_established(self) -> None:
        _check("TPM_IO_TpmEstablished_Reset", self._lib.TPM_IO_TpmEstablished_Reset())

    def info(self, flags: int = INFO_ALL) -> dict[str, Any]:
        """``TPMLIB_GetInfo`` parsed; the malloc'ed JSON string is freed here."""
        ptr = self._lib.TPMLIB_GetInfo(flags)
        if not ptr:
            raise TpmLibraryError("TPMLIB_GetInfo", TPM_FAIL, "returned no JSON")
        try:
            text = ctypes.string_at(ptr).decode("utf-8")
        finally:
            self._lib.TPM_Free(ptr)
        return json.loads(text)


def _check(function: str, rc: int) -> None:
    """The one place a failed ``TPM_RESULT`` becomes a typed error."""
    if rc != TPM_SUCCESS:
        raise TpmLibraryError(function, rc)


_instance: Libtpms | None = None
_instance_lock = threading.Lock()


def libtpms() -> Libtpms:
    """The process's libtpms; :class:`TpmUnavailable` (naming the package) if absent."""
    global _instance
    with _instance_lock:
        if _instance is None:
            try:
                lib = ctypes.CDLL(SONAME)
            except OSError as exc:
                raise TpmUnavailable(
                    f"cannot load {SONAME} ({exc}): install the Debian package libtpms0") from exc
            for name, restype, argtypes in _SIGNATURES:
                function = getattr(lib, name)
                function.restype = restype
                function.argtypes = argtypes
            instance = Libtpms(lib)
            instance.register()
            _instance = instance
        return _instance
