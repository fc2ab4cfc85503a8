"""swtpm's socket protocol (swtpm 0.7.1, ``src/swtpm/ctrlchannel.c`` and ``mainloop.c``).

Owns: :class:`ControlReader` (collects one control request as ``ctrlchannel_recv_cmd``
does), :class:`DataReader` (cuts the data channel into TPM commands, raw or behind the
``u32 8`` TCG prefix, read by read as ``SWTPM_IO_Read`` does) and :class:`Swtpm` (the
state one ``swtpm socket`` process keeps for its TPM: running or not, the locality, the data
descriptor of ``CMD_SET_DATAFD``), which answers control requests and data commands with
bytes.

Must not know: sockets, threads, trio.  File descriptors arrive as ints (SCM_RIGHTS is the
server's business); a control reply that takes a descriptor says so in
:attr:`ControlReply.data_fd`.

Theory of operation.  One :class:`Swtpm` per vTPM front end; every control connection and
every data connection of it shares that state, as they share one swtpm process.  "Running"
is the engine's power: ``CMD_INIT`` powers on (no Startup: the client sends it), ``CMD_STOP``
powers off.  While it is not running the data channel answers every
command ``80 01 00 00 00 0a 00 00 01 01`` (TPM_RC_FAILURE) and the control commands that
need a TPM answer TPM_BAD_ORDINAL, as swtpm does.  The mount powers its vTPMs on and sends
Startup(CLEAR) at boot, like ``swtpm socket --flags not-need-init,startup-clear``.
Differences from swtpm, on purpose: ``CMD_SHUTDOWN`` (what QEMU sends when it exits
gracefully) ends swtpm's process and its TPM with it; the mount outlives its clients, so the
TPM stays as the guest left it, its PCRs readable in the mount, until the next client's
``CMD_INIT`` restarts it; ``CMD_STORE_VOLATILE`` succeeds without writing a file (state goes
to disk only through apfs's ``--state``); state blobs are never encrypted (no ``--key``);
a blob CMD_SET_STATEBLOB accepts is imported (and saved) at once, where swtpm caches it for
the next CMD_INIT and forgets it again when an empty blob of its type or a blob libtpms
refuses follows (then swtpm starts from its files).  State blobs are swtpm's
(:mod:`vdev.tpm.swtpm_blob`), interchangeable with a real swtpm's.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from vdev.tpm import _native, commands
from vdev.tpm.engine import MAX_LOCALITY, TpmState
from vdev.tpm.errors import TpmError, TpmLibraryError, TpmStateError
from vdev.tpm.fastpath import FastPath
from vdev.tpm.frontend import MAX_BLOB, MAX_COMMAND, U32, Malformed, run_command
from vdev.tpm.libtpms import TPM_FAIL, TPM_RETRY, TPM_SUCCESS
from vdev.tpm.swtpm_blob import TPM_BAD_PARAMETER, BlobRefused, unwrap, wrap
from vdev.tpm.vtpm import VTpm

# -- control commands (swtpm's include/swtpm/tpm_ioctl.h) ----------------------------------
CMD_GET_CAPABILITY = 0x01
CMD_INIT = 0x02
CMD_SHUTDOWN = 0x03
CMD_GET_TPMESTABLISHED = 0x04
CMD_SET_LOCALITY = 0x05
CMD_HASH_START = 0x06
CMD_HASH_DATA = 0x07
CMD_HASH_END = 0x08
CMD_CANCEL_TPM_CMD = 0x09
CMD_STORE_VOLATILE = 0x0A
CMD_RESET_TPMESTABLISHED = 0x0B
CMD_GET_STATEBLOB = 0x0C
CMD_SET_STATEBLOB = 0x0D
CMD_STOP = 0x0E
CMD_GET_CONFIG = 0x0F
CMD_SET_DATAFD = 0x10
CMD_SET_BUFFERSIZE = 0x11
CMD_GET_INFO = 0x12

CMD_NAMES = {value: name for name, value in globals().items() if name.startswith("CMD_")}

# -- results: TPM 1.2 TPM_RESULT codes, as ctrlchannel.c answers (TPM_SUCCESS, TPM_FAIL and
# TPM_RETRY are the libtpms binding's, TPM_BAD_PARAMETER the state blob checks') ----------
TPM_BAD_ORDINAL = 0x0A
TPM_IOERROR = 0x1F
TPM_BAD_TYPE = 0x34
TPM_BAD_LOCALITY = 0x3D

CAPABILITIES = 0xFFFF
"""swtpm 0.7.1 for a TPM 2.0: PTM_CAP_INIT (1) through PTM_CAP_GET_INFO (1 << 14), with
the state blobs (0x300) and STOP (0x400) QEMU needs for migration, SET_DATAFD (0x1000), and
PTM_CAP_SEND_COMMAND_HEADER (0x8000: the data channel takes TCG-prefixed commands)."""

INIT_DELETE_VOLATILE = 1
STATE_FLAG_ENCRYPTED = 2
BLOB_PERMANENT, BLOB_VOLATILE, BLOB_SAVESTATE = 1, 2, 3
BLOB_NAMES = {BLOB_PERMANENT: "permanent", BLOB_VOLATILE: "volatile",
              BLOB_SAVESTATE: "savestate"}
GET_STATEBLOB_REPLY = struct.Struct(">IIII")
"""``ptm_getstate``'s response before its data: result, state flags, totlength, length."""
INFO_BUFFER = 4096
"""``ptm_getinfo``'s response buffer: longer JSON is fetched in pieces by offset."""

REQUEST_BUFFER = 4 + 4 + 4096
"""``struct input`` of ctrlchannel.c: the most one control request reads before it is
processed (the body of ptm_hdata, its largest request)."""
REQUEST_TIMEOUT = 0.5
"""swtpm gives a control request 500 ms to arrive complete; then it processes what came."""

TPM_SEND_COMMAND = 8
"""The TCG prefix of the data channel: ``u32 8, u8 locality, u32 length``."""
PREFIX = struct.Struct(">IBI")
_RAW_TAGS = (b"\x80\x01", b"\x80\x02")

# Bytes of a request's fixed part (after the u32 command) that swtpm waits for.
_FIXED_PART = {CMD_INIT: 4, CMD_SET_LOCALITY: 1, CMD_RESET_TPMESTABLISHED: 1,
               CMD_GET_STATEBLOB: 12, CMD_HASH_DATA: 4, CMD_SET_STATEBLOB: 12}
# Requests whose fixed part ends with a u32 length of data that follows.
_LENGTH_AT = {CMD_HASH_DATA: 4, CMD_SET_STATEBLOB: 12}


class ControlReader:
    """One control request at a time, framed as ``ctrlchannel_recv_cmd`` frames it.

    swtpm reads until it has the command's fixed part (and, for HASH_DATA and SET_STATEBLOB,
    the data their length announces); whatever else arrived in those reads belongs to the
    request too (and fails its length check), up to :data:`REQUEST_BUFFER` bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """Part of a request has arrived (the server's 500 ms deadline runs)."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_request(self) -> bytes | None:
        """The next complete request, or None until more bytes arrive.  Raises
        :class:`Malformed` for a length beyond :data:`MAX_BLOB`."""
        needed = self._needed()
        if needed is None or len(self._buffer) < needed:
            return None
        size = max(needed, min(len(self._buffer), REQUEST_BUFFER))
        request = bytes(self._buffer[:size])
        del self._buffer[:size]
        return request

    def take_partial(self) -> bytes:
        """What arrived of an incomplete request when its deadline passed (swtpm then
        processes it, and its length check answers TPM_BAD_PARAMETER)."""
        request = bytes(self._buffer[:REQUEST_BUFFER])
        del self._buffer[:REQUEST_BUFFER]
        return request

    def _needed(self) -> int | None:
        if len(self._buffer) < 4:
            return None if not self._buffer else 4
        code = U32.unpack_from(self._buffer)[0]
        needed = 4 + _FIXED_PART.get(code, 0)
        at = _LENGTH_AT.get(code)
        if at is not None and len(self._buffer) >= 4 + at:
            length = U32.unpack_from(self._buffer, at)[0]
            if length > MAX_BLOB:
                raise Malformed(f"swtpm control {CMD_NAMES[code]}: length {length} exceeds "
                                f"{MAX_BLOB} bytes")
            needed += length
        return needed


class DataCommand(NamedTuple):
    """A TPM command of the data channel; ``prefixed``: it came behind the TCG prefix, whose
    locality then applies, and the response goes back framed the same way.  (A NamedTuple:
    one is built per command, and a frozen dataclass costs ~1 µs more to build.)"""

    command: bytes
    locality: int | None = None
    prefixed: bool = False


HEADER_READ = commands.HEADER_SIZE
"""``sizeof(struct tpm_req_header)``: swtpm reads until at least this many bytes came."""
READ_SIZE = MAX_COMMAND + PREFIX.size
"""swtpm's command buffer (TPM_BUFFER_MAX plus the TCG prefix): the most one command takes."""


class DataReader:
    """The data channel as swtpm 0.7.1 reads it (``SWTPM_IO_Read`` in ``swtpm_io.c``, then
    ``tpmlib_handle_tcg_tpm2_cmd_header``): it reads until at least a header's 10 bytes have
    come, and whatever those reads returned (at most :data:`READ_SIZE` bytes) is one
    command.  The header's size field frames nothing: the TPM checks it and answers
    TPM_RC_COMMAND_SIZE when it disagrees.  What is not a raw command (tag 0x8001/0x8002)
    and starts with ``u32 8`` is TCG-prefixed: the prefix's locality applies and the rest
    of the bytes is the command (the prefix's length is not looked at either)."""

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> bool:
        """Fewer than a header's bytes have come: swtpm waits for more."""
        return bool(self._buffer)

    @property
    def room(self) -> int:
        """How many bytes the next read may take (swtpm's ``bufferSize - offset``)."""
        return READ_SIZE - len(self._buffer)

    def feed(self, data: bytes) -> DataCommand | None:
        """The command that what came so far makes, or None while it is under 10 bytes."""
        if self._buffer:
            data = self._buffer + data
        if len(data) < HEADER_READ:
            self._buffer = data
            return None
        self._buffer = b""
        if data[:2] not in _RAW_TAGS and U32.unpack_from(data)[0] == TPM_SEND_COMMAND:
            return DataCommand(data[PREFIX.size:], data[4], True)
        return DataCommand(data)


@dataclass(frozen=True)
class ControlReply:
    """The bytes answering one control request; ``data_fd``: the descriptor CMD_SET_DATAFD
    accepted (the server serves the data channel on it from now on); ``log``: a refusal
    (non-zero result) in words, for the server's log."""

    data: bytes
    data_fd: int | None = None
    log: str | None = None


_Handler = Callable[["Swtpm", bytes], ControlReply]
_NEEDS_RUNNING = frozenset({CMD_GET_TPMESTABLISHED, CMD_RESET_TPMESTABLISHED, CMD_HASH_START,
                            CMD_HASH_DATA, CMD_HASH_END, CMD_CANCEL_TPM_CMD,
                            CMD_STORE_VOLATILE, CMD_GET_STATEBLOB})
# The shortest payload of each request (ctrlchannel.c's ``n < sizeof(...)`` checks).
_MIN_PAYLOAD = {**_FIXED_PART, CMD_SET_BUFFERSIZE: 4, CMD_GET_INFO: 16}
# Requests that do not wait in the TPM's queue: a cancel must reach the running command;
# SET_STATEBLOB imports through VTpm.import_state, which queues and saves by itself; the
# capability bits are constants.
_NOT_QUEUED = frozenset({CMD_CANCEL_TPM_CMD, CMD_SET_STATEBLOB, CMD_GET_CAPABILITY})
# Requests that take no payload: anything after the command is TPM_BAD_PARAMETER.
_NO_PAYLOAD = frozenset({CMD_STOP, CMD_SHUTDOWN, CMD_GET_TPMESTABLISHED, CMD_HASH_START,
                         CMD_HASH_END, CMD_CANCEL_TPM_CMD, CMD_STORE_VOLATILE,
                         CMD_GET_CONFIG})


def _result(code: int, log: str | None = None) -> ControlReply:
    return ControlReply(U32.pack(code), log=log)


def _tpm_result(exc: TpmError) -> int:
    return exc.rc if isinstance(exc, TpmLibraryError) else TPM_FAIL


class Swtpm:
    """The swtpm protocol in front of one vTPM: control requests and data commands in,
    reply bytes out.  Thread-safe as far as the engine is (one control request at a time
    is the server's rule, as swtpm serves one control client at a time)."""

    def __init__(self, tpm: VTpm) -> None:
        self.tpm = tpm
        self.locality_cell = _native.Cell(0)
        """swtpm's ``locality`` (:attr:`locality`), where the fast path reads it."""
        self.data_fd_in_use = False
        """A CMD_SET_DATAFD descriptor is being served (a second one is TPM_IOERROR)."""

    @property
    def locality(self) -> int:
        """swtpm's ``locality``: CMD_SET_LOCALITY and the TCG prefix set it; every data
        command runs at it."""
        return self.locality_cell.value

    @locality.setter
    def locality(self, value: int) -> None:
        self.locality_cell.value = value

    # -- data channel ----------------------------------------------------------------------

    def execute(self, command: DataCommand) -> bytes:
        """The response to one data command, framed as it came."""
        if command.locality is not None:
            self.locality = command.locality
        response = run_command(self.tpm, command.command, self.locality)
        if not command.prefixed:
            return response
        return U32.pack(len(response)) + response + U32.pack(0)

    def fast_path(self) -> FastPath | None:
        """How C runs :meth:`execute` for a raw command (a TCG-prefixed one sets the
        locality, so it goes the Python way): at this front end's locality 0 only."""
        path = self.tpm.fast_path()
        return None if path is None else path.behind(gate=((self.locality_cell, 0),))

    # -- control channel -------------------------------------------------------------------

    def control_fast_path(self) -> FastPath | None:
        """How C answers CMD_SET_LOCALITY (0..4), which tpm2-tss's swtpm TCTI sends on a
        connection of its own for every tool: :meth:`_set_locality` in the TPM's turn, as
        :meth:`control` runs it (any power state: the engine's gate does not apply)."""
        path = self.tpm.fast_path()
        return None if path is None else path.behind(framing="swtpm-control",
                                                     locality=self.locality_cell)

    def control(self, request: bytes, fds: tuple[int, ...] = ()) -> ControlReply:
        """Answer one control request (as :class:`ControlReader` framed it); ``fds``: the
        descriptors that came with it (UNIX sockets only)."""
        if len(request) < 4:
            return _result(TPM_BAD_PARAMETER, f"swtpm control: request of {len(request)} "
                                              "bytes has no command")
        code = U32.unpack_from(request)[0]
        body = request[4:]
        name = CMD_NAMES.get(code)
        handler = _HANDLERS.get(code)
        if code == CMD_SET_DATAFD:
            return self._set_datafd(fds)
        if name is None or handler is None:
            return _result(TPM_BAD_ORDINAL, f"swtpm control: unknown command {code:#x}")
        if code in _NEEDS_RUNNING and not self.tpm.engine.powered:
            return _result(TPM_BAD_ORDINAL, f"swtpm control {name}: the TPM is not running "
                                            "(CMD_INIT first)")
        if code == CMD_SET_STATEBLOB and self.tpm.engine.powered:
            return _result(TPM_BAD_ORDINAL, "swtpm control CMD_SET_STATEBLOB: the TPM is "
                                            "running (CMD_STOP first)")
        if len(body) < _MIN_PAYLOAD.get(code, 0):
            return _result(TPM_BAD_PARAMETER, f"swtpm control {name}: payload of {len(body)} "
                                              f"bytes, expected at least "
                                              f"{_MIN_PAYLOAD[code]}")
        if code in _NO_PAYLOAD and body:
            return _result(TPM_BAD_PARAMETER, f"swtpm control {name}: takes no payload, got "
                                              f"{len(body)} bytes")
        try:
            if code in _NOT_QUEUED:
                return handler(self, body)
            # What a control command changes is durable before its result goes out, and it
            # waits for the TPM's running command like every other caller.
            return self.tpm.durable(lambda: handler(self, body))
        except TpmError as exc:
            return _result(_tpm_result(exc), f"swtpm control {name}: {exc.message}")

    def _set_datafd(self, fds: tuple[int, ...]) -> ControlReply:
        if self.data_fd_in_use:
            return _result(TPM_IOERROR, "swtpm control CMD_SET_DATAFD: a data descriptor is "
                                        "already in use")
        if not fds:
            return _result(TPM_BAD_PARAMETER, "swtpm control CMD_SET_DATAFD: no descriptor "
                                              "came with it (SCM_RIGHTS on a UNIX socket)")
        self.data_fd_in_use = True
        return ControlReply(U32.pack(TPM_SUCCESS), data_fd=fds[0])

    def _get_capability(self, body: bytes) -> ControlReply:
        # ptm_cap: a bare u64 (swtpm >= 0.8 reads it as u32 result + u32 caps: same bytes).
        return ControlReply(struct.pack(">Q", CAPABILITIES))

    def _init(self, body: bytes) -> ControlReply:
        if len(body) != 4:
            return _result(TPM_BAD_PARAMETER, f"swtpm control CMD_INIT: payload of "
                                              f"{len(body)} bytes, expected u32 flags")
        flags = U32.unpack(body)[0]
        engine = self.tpm.engine
        if engine.powered:
            engine.power_off()
        if flags & INIT_DELETE_VOLATILE:
            state = engine.get_state()
            if state.volatile:
                engine.set_state(TpmState(state.permanent))
        engine.power_on()
        return _result(TPM_SUCCESS)

    def _shutdown(self, body: bytes) -> ControlReply:
        return ControlReply(U32.pack(TPM_SUCCESS),
                            log="swtpm control CMD_SHUTDOWN: the TPM stays powered with the "
                                "state its client left (the mount outlives it)")

    def _stop(self, body: bytes) -> ControlReply:
        if self.tpm.engine.powered:
            self.tpm.engine.power_off()
        return _result(TPM_SUCCESS)

    def _get_tpmestablished(self, body: bytes) -> ControlReply:
        bit = self.tpm.engine.established()
        return ControlReply(struct.pack(">IB3x", TPM_SUCCESS, bit))

    def _reset_tpmestablished(self, body: bytes) -> ControlReply:
        locality = body[0]
        if locality > MAX_LOCALITY:
            return _result(TPM_BAD_LOCALITY, f"swtpm control CMD_RESET_TPMESTABLISHED: "
                                             f"locality {locality} is above {MAX_LOCALITY}")
        self.tpm.engine.reset_established(locality)
        return _result(TPM_SUCCESS)

    def _set_locality(self, body: bytes) -> ControlReply:
        # QEMU pads the u8 to 4 bytes, tpm2-tss sends it bare: swtpm reads the first byte.
        locality = body[0]
        if locality > MAX_LOCALITY:
            return _result(TPM_BAD_LOCALITY, f"swtpm control CMD_SET_LOCALITY: locality "
                                             f"{locality} is above {MAX_LOCALITY}")
        self.locality = locality
        return _result(TPM_SUCCESS)

    def _hash_start(self, body: bytes) -> ControlReply:
        self.tpm.engine.hash_start()
        return _result(TPM_SUCCESS)

    def _hash_data(self, body: bytes) -> ControlReply:
        length = U32.unpack_from(body)[0]
        data = body[4:]
        if len(data) != length:
            return _result(TPM_BAD_PARAMETER, f"swtpm control CMD_HASH_DATA: length {length} "
                                              f"but {len(data)} bytes of data")
        self.tpm.engine.hash_data(data)
        return _result(TPM_SUCCESS)

    def _hash_end(self, body: bytes) -> ControlReply:
        self.tpm.engine.hash_end()
        return _result(TPM_SUCCESS)

    def _cancel(self, body: bytes) -> ControlReply:
        self.tpm.engine.cancel()
        return _result(TPM_SUCCESS)

    def _store_volatile(self, body: bytes) -> ControlReply:
        return _result(TPM_SUCCESS)  # nothing to write: see the module's docstring

    def _get_stateblob(self, body: bytes) -> ControlReply:
        # Request flag DECRYPTED (1) asks to undo the state key's encryption: there is none.
        _flags, blob_type, offset = struct.unpack_from(">III", body)
        if blob_type not in (BLOB_PERMANENT, BLOB_VOLATILE):
            # swtpm finds no such blob to load: a TPM 2.0's libtpms never writes a savestate
            # blob (Shutdown(STATE) goes into the permanent one), other types have no name.
            name = BLOB_NAMES.get(blob_type, f"type {blob_type}")
            return ControlReply(GET_STATEBLOB_REPLY.pack(TPM_RETRY, 0, 0, 0),
                                log=f"swtpm control CMD_GET_STATEBLOB: no {name} blob")
        state = self.tpm.engine.get_state()
        plain = state.permanent if blob_type == BLOB_PERMANENT else state.volatile
        data = wrap(plain)[offset:]
        # One response with all of it (QEMU requires totlength == length on sockets).
        return ControlReply(GET_STATEBLOB_REPLY.pack(TPM_SUCCESS, 0, len(data), len(data))
                            + data)

    def _set_stateblob(self, body: bytes) -> ControlReply:
        flags, blob_type, length = struct.unpack_from(">III", body)
        data = body[12:]
        if len(data) != length:
            return _result(TPM_BAD_PARAMETER, f"swtpm control CMD_SET_STATEBLOB: length "
                                              f"{length} but {len(data)} bytes of data")
        name = BLOB_NAMES.get(blob_type)
        if name is None:
            return _result(TPM_BAD_PARAMETER, f"swtpm control CMD_SET_STATEBLOB: unknown blob "
                                              f"type {blob_type}")
        try:
            plain = unwrap(data, encrypted=bool(flags & STATE_FLAG_ENCRYPTED))
        except BlobRefused as exc:
            return _result(exc.result, f"swtpm control CMD_SET_STATEBLOB {name}: "
                                       f"{exc.message}")
        if plain is None:
            return _result(TPM_SUCCESS)  # swtpm's TPMLIB_SetState(NULL): the state stays
        if blob_type == BLOB_SAVESTATE:
            # libtpms's TPM2_SetState answer: a TPM 2.0 has no savestate blob to take.
            return _result(TPM_BAD_TYPE, "swtpm control CMD_SET_STATEBLOB savestate: libtpms "
                                         "takes no savestate blob for a TPM 2.0")
        # Applied now, so libtpms checks it now; QEMU sends the permanent blob first, then
        # the volatile one that belongs to it.
        if blob_type == BLOB_PERMANENT:
            self.tpm.import_state(TpmState(plain))
        else:
            self.tpm.import_state(TpmState(self.tpm.engine.get_state().permanent, plain))
        return _result(TPM_SUCCESS)

    def _get_config(self, body: bytes) -> ControlReply:
        return ControlReply(struct.pack(">II", TPM_SUCCESS, 0))  # no file or migration key

    def _set_buffersize(self, body: bytes) -> ControlReply:
        wanted = U32.unpack_from(body)[0]
        if wanted and self.tpm.engine.powered:
            return _result(TPM_BAD_ORDINAL, f"swtpm control CMD_SET_BUFFERSIZE {wanted}: the "
                                            "TPM is running (CMD_STOP first)")
        try:
            size, low, high = self.tpm.engine.buffer_size(wanted)
        except TpmStateError:
            return _result(TPM_BAD_ORDINAL, f"swtpm control CMD_SET_BUFFERSIZE {wanted}: the "
                                            "TPM is running (CMD_STOP first)")
        return ControlReply(struct.pack(">IIII", TPM_SUCCESS, size, low, high))

    def _get_info(self, body: bytes) -> ControlReply:
        flags, offset = struct.unpack_from(">QI", body)
        text = info_json(self.tpm.engine.info(), flags).encode() + b"\0"
        if offset >= len(text) - 1:
            return _result(TPM_BAD_PARAMETER, f"swtpm control CMD_GET_INFO: offset {offset} "
                                              f"is beyond the {len(text) - 1}-byte JSON")
        piece = text[offset:offset + INFO_BUFFER]
        return ControlReply(struct.pack(">III", TPM_SUCCESS, len(text), len(piece)) + piece)


INFO_KEYS = {1: "TPMSpecification", 2: "TPMAttributes", 4: "TPMFeatures"}
"""TPMLIB_GetInfo's flag bits and the JSON member each selects."""


def info_json(info: dict[str, object], flags: int) -> str:
    """TPMLIB_GetInfo(flags) as libtpms writes it: the selected members, compact JSON."""
    selected = {key: info[key] for bit, key in INFO_KEYS.items()
                if flags & bit and key in info}
    return json.dumps(selected, separators=(",", ":"))


_HANDLERS: dict[int, _Handler] = {
    CMD_GET_CAPABILITY: Swtpm._get_capability,
    CMD_INIT: Swtpm._init,
    CMD_SHUTDOWN: Swtpm._shutdown,
    CMD_GET_TPMESTABLISHED: Swtpm._get_tpmestablished,
    CMD_SET_LOCALITY: Swtpm._set_locality,
    CMD_HASH_START: Swtpm._hash_start,
    CMD_HASH_DATA: Swtpm._hash_data,
    CMD_HASH_END: Swtpm._hash_end,
    CMD_CANCEL_TPM_CMD: Swtpm._cancel,
    CMD_STORE_VOLATILE: Swtpm._store_volatile,
    CMD_RESET_TPMESTABLISHED: Swtpm._reset_tpmestablished,
    CMD_GET_STATEBLOB: Swtpm._get_stateblob,
    CMD_SET_STATEBLOB: Swtpm._set_stateblob,
    CMD_STOP: Swtpm._stop,
    CMD_GET_CONFIG: Swtpm._get_config,
    CMD_SET_BUFFERSIZE: Swtpm._set_buffersize,
    CMD_GET_INFO: Swtpm._get_info,
}
"""Command → handler: the table ctrlchannel_process_fd's switch is (CMD_SET_DATAFD, which
takes descriptors, is :meth:`Swtpm._set_datafd`)."""
