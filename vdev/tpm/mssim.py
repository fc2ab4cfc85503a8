"""The Microsoft TPM 2.0 simulator's socket protocol (ibmswtpm2 ``TcpServerPosix.c``), the
one tpm2-tss's ``mssim`` TCTI speaks: a command port and a platform port (command port + 1).

Owns: :class:`CommandPort` and :class:`PlatformPort`, one per connection: fed the bytes that
arrived, they answer with a :class:`~vdev.tpm.frontend.Reply` (bytes, and whether to close).
Requests may arrive in any pieces (the TCTI writes the 9-byte prefix and the command
separately); nothing is acted on before it is complete.

Must not know: sockets, threads, trio.

Rules (all integers big-endian): every request is a ``u32`` code; the server answers each
handled request with its payload then ``u32 0``.  Command port: 8 SEND_COMMAND (``u8
locality, u32 N, N bytes`` → ``u32 M, M bytes``), 5/6/7 hash start/data/end (6 takes ``u32
N, N bytes``), 15 REMOTE_HANDSHAKE (``u32 client version``, 0 closes; → ``u32 1, u32
0x0D``), 16 SET_ALTERNATIVE_RESULT (``u32``, ignored), 20 SESSION_END (close, no reply), 21
STOP (close, no reply), anything else closes with no reply.  Platform port: bare codes,
26 ACT_GET_SIGNALED takes a ``u32`` handle, 25 GET_COMMAND_RESPONSE_SIZES answers ``u32 16``
and 16 bytes, 20 and 21 close without reply, an unknown code is answered ``u32 1`` and closes.
STOP asks the simulator to exit; here it only closes that connection (the mount serves on).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

from vdev.tpm import _native
from vdev.tpm.errors import TpmError, TpmStateError
from vdev.tpm.fastpath import FastPath
from vdev.tpm.frontend import MAX_COMMAND, U32, Reply, run_command
from vdev.tpm.vtpm import VTpm

# Command port (TpmTcpProtocol.h).
TPM_SIGNAL_HASH_START = 5
TPM_SIGNAL_HASH_DATA = 6
TPM_SIGNAL_HASH_END = 7
TPM_SEND_COMMAND = 8
TPM_REMOTE_HANDSHAKE = 15
TPM_SET_ALTERNATIVE_RESULT = 16
TPM_SESSION_END = 20
TPM_STOP = 21
# Platform port.
TPM_SIGNAL_POWER_ON = 1
TPM_SIGNAL_POWER_OFF = 2
TPM_SIGNAL_PHYS_PRES_ON = 3
TPM_SIGNAL_PHYS_PRES_OFF = 4
TPM_SIGNAL_CANCEL_ON = 9
TPM_SIGNAL_CANCEL_OFF = 10
TPM_SIGNAL_NV_ON = 11
TPM_SIGNAL_NV_OFF = 12
TPM_SIGNAL_RESET = 17
TPM_GET_COMMAND_RESPONSE_SIZES = 25
TPM_ACT_GET_SIGNALED = 26
TPM_TEST_FAILURE_MODE = 30

SERVER_VERSION = 1
SERVER_FLAGS = 0x0D
"""tpmPlatformAvailable 1 | tpmInRawMode 4 | tpmSupportsPP 8, as ibmswtpm2 answers."""
MAX_HASH_DATA = MAX_COMMAND
"""ibmswtpm2 reads hash data into its command buffer: a longer length closes."""
ACK = U32.pack(0)
_SIZES = struct.Struct("<I4sI4s")
"""ibmswtpm2's CommandResponseSizes as it sends it: a C struct of host-order (x86: little
endian) sizes and the first four bytes of the command / response code."""


class _Port:
    """A buffer of what arrived, read by ``u32``/bytes in order; :meth:`_take` returns None
    until enough has arrived, leaving the buffer as it was.  ``sizes`` is the record both
    ports of one server share (GET_COMMAND_RESPONSE_SIZES reads what the command port
    wrote)."""

    def __init__(self, tpm: VTpm, sizes: CommandSizes) -> None:
        self.tpm = tpm
        self.sizes = sizes
        self._buffer = bytearray()

    def receive(self, data: bytes) -> list[Reply]:
        """Every complete request in what arrived so far, answered in order; after a reply
        that closes, the rest is ignored."""
        self._buffer += data
        replies = []
        while (reply := self._next()) is not None:
            replies.append(reply)
            if reply.close:
                self._buffer.clear()
                break
        return replies

    @property
    def pending(self) -> bool:
        """Part of a request has arrived and waits for the rest."""
        return bool(self._buffer)

    def _next(self) -> Reply | None:
        raise NotImplementedError

    def _u32(self, at: int) -> int | None:
        if len(self._buffer) < at + 4:
            return None
        return U32.unpack_from(self._buffer, at)[0]

    def _consume(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _framed(response: bytes) -> bytes:
    """SEND_COMMAND's answer: ``u32 M, M bytes`` and the ``u32 0`` every request ends with."""
    return b"".join((U32.pack(len(response)), response, ACK))


def fast_path(tpm: VTpm, sizes: CommandSizes) -> FastPath | None:
    """How C runs the command port's SEND_COMMAND at locality 0 (:mod:`vdev.tpm.fastpath`),
    for every connection of a server whose ports share ``sizes``: a command or response
    larger than the size record is finished here, which records it."""
    path = tpm.fast_path()
    if path is None:
        return None
    vtpm_finish = path.finish
    assert vtpm_finish is not None

    def finish(request: bytes, response: bytes) -> bytes:
        response = vtpm_finish(request, response)
        sizes.record(request[9:], response)
        return _framed(response)

    return path.behind(finish=finish, framing="mssim", limits=sizes.limits)


class CommandSizes:
    """The largest command and response seen (GET_COMMAND_RESPONSE_SIZES), per front end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._command = (0, b"\0" * 4)
        self._response = (0, b"\0" * 4)
        self.limits = (_native.Cell(0), _native.Cell(0))
        """The sizes recorded, where the fast path reads them: a command and response no
        larger change nothing, so it need not record them."""

    def record(self, command: bytes, response: bytes) -> None:
        with self._lock:
            if len(command) > self._command[0]:
                self._command = (len(command), command[6:10])
                self.limits[0].value = len(command)
            if len(response) > self._response[0]:
                self._response = (len(response), response[6:10])
                self.limits[1].value = len(response)

    def take(self) -> bytes:
        """The record as ibmswtpm2 sends it, then cleared (it clears after each read)."""
        with self._lock:
            data = _SIZES.pack(*self._command, *self._response)
            self._command = self._response = (0, b"\0" * 4)
            for limit in self.limits:
                limit.value = 0
        return data


class CommandPort(_Port):
    """One connection to the command port."""

    def _next(self) -> Reply | None:
        code = self._u32(0)
        if code is None:
            return None
        if code == TPM_SEND_COMMAND:
            return self._send_command()
        if code in (TPM_SIGNAL_HASH_START, TPM_SIGNAL_HASH_END):
            self._consume(4)
            return self._signal(code, b"")
        if code == TPM_SIGNAL_HASH_DATA:
            length = self._u32(4)
            if length is None:
                return None
            if length > MAX_HASH_DATA:
                return Reply(close=f"mssim command port: hash data length {length} exceeds "
                                   f"{MAX_HASH_DATA} bytes")
            if len(self._buffer) < 8 + length:
                return None
            return self._signal(code, self._consume(8 + length)[8:])
        if code in (TPM_REMOTE_HANDSHAKE, TPM_SET_ALTERNATIVE_RESULT):
            value = self._u32(4)
            if value is None:
                return None
            self._consume(8)
            if code == TPM_SET_ALTERNATIVE_RESULT:
                return Reply(ACK)  # not applicable to a simulator (ibmswtpm2 ignores it)
            if value == 0:
                return Reply(close="mssim command port: REMOTE_HANDSHAKE with client "
                                   "version 0 (unsupported)")
            return Reply(struct.pack(">III", SERVER_VERSION, SERVER_FLAGS, 0))
        self._consume(4)
        if code == TPM_SESSION_END:
            return Reply(close="mssim command port: SESSION_END", quiet=True)
        if code == TPM_STOP:
            return Reply(close="mssim command port: STOP (the mount keeps serving; the "
                               "connection is closed)")
        return Reply(close=f"mssim command port: unknown command {code:#x}")

    def _send_command(self) -> Reply | None:
        if len(self._buffer) < 9:
            return None
        locality = self._buffer[4]
        length = U32.unpack_from(self._buffer, 5)[0]
        if length > MAX_COMMAND:
            return Reply(close=f"mssim command port: command length {length} exceeds the "
                               f"{MAX_COMMAND}-byte buffer")
        if len(self._buffer) < 9 + length:
            return None
        command = self._consume(9 + length)[9:]
        response = run_command(self.tpm, command, locality)
        self.sizes.record(command, response)
        return Reply(_framed(response))

    def _signal(self, code: int, data: bytes) -> Reply:
        """_TPM_Hash_Start/Data/End: ibmswtpm2 acknowledges them whatever happens."""
        engine = self.tpm.engine
        signal: Callable[[], None] = {
            TPM_SIGNAL_HASH_START: engine.hash_start,
            TPM_SIGNAL_HASH_END: engine.hash_end,
        }.get(code) or (lambda: engine.hash_data(data))
        try:
            self.tpm.durable(signal)
        except TpmError as exc:
            return Reply(ACK, log=f"mssim command port: hash signal {code}: {exc.message}")
        return Reply(ACK)


class PlatformPort(_Port):
    """One connection to the platform port."""

    def _next(self) -> Reply | None:
        code = self._u32(0)
        if code is None:
            return None
        if code == TPM_ACT_GET_SIGNALED:
            if self._u32(4) is None:
                return None
            self._consume(8)
            # libtpms implements no authenticated countdown timer: none has signalled.
            return Reply(U32.pack(0) + ACK)
        self._consume(4)
        if code == TPM_SESSION_END:
            return Reply(close="mssim platform port: SESSION_END", quiet=True)
        if code == TPM_STOP:
            return Reply(close="mssim platform port: STOP (the mount keeps serving; the "
                               "connection is closed)")
        if code == TPM_GET_COMMAND_RESPONSE_SIZES:
            sizes = self.sizes.take()
            return Reply(U32.pack(len(sizes)) + sizes + ACK)
        action = _PLATFORM_SIGNALS.get(code)
        if action is None:
            return Reply(U32.pack(1), close=f"mssim platform port: unknown signal {code:#x}")
        try:
            # Cancel must reach the running command; the others wait their turn and are
            # durable before they are acknowledged.
            note = (action(self.tpm) if code in _NOT_QUEUED
                    else self.tpm.durable(lambda: action(self.tpm)))
        except TpmError as exc:
            note = exc.message
        if note:
            return Reply(ACK, log=f"mssim platform port: signal {code}: {note}")
        return Reply(ACK)


def _power_on(tpm: VTpm) -> str | None:
    if not tpm.engine.powered:  # idempotent while powered, as the simulator's
        tpm.engine.power_on()
    return None


def _power_off(tpm: VTpm) -> str | None:
    if tpm.engine.powered:
        tpm.engine.power_off()
    return None


def _reset(tpm: VTpm) -> str | None:
    """_rpc__Signal_PowerOn(TRUE): _TPM_Init; powers on a TPM that was off."""
    try:
        tpm.engine.reset()
    except TpmStateError:
        tpm.engine.power_on()
    return None


def _cancel_on(tpm: VTpm) -> str | None:
    tpm.engine.cancel()
    return None


def _accepted(tpm: VTpm) -> str | None:
    """Physical presence, cancel-off and NV availability: libtpms asks nothing of them (its
    NV is always available, physical presence is never asserted), so they are acknowledged."""
    return None


def _failure_mode(tpm: VTpm) -> str | None:
    return "TEST_FAILURE_MODE cannot be emulated (libtpms has no switch for it); ignored"


_PLATFORM_SIGNALS: dict[int, Callable[[VTpm], str | None]] = {
    TPM_SIGNAL_POWER_ON: _power_on,
    TPM_SIGNAL_POWER_OFF: _power_off,
    TPM_SIGNAL_PHYS_PRES_ON: _accepted,
    TPM_SIGNAL_PHYS_PRES_OFF: _accepted,
    TPM_SIGNAL_CANCEL_ON: _cancel_on,
    TPM_SIGNAL_CANCEL_OFF: _accepted,
    TPM_SIGNAL_NV_ON: _accepted,
    TPM_SIGNAL_NV_OFF: _accepted,
    TPM_SIGNAL_RESET: _reset,
    TPM_TEST_FAILURE_MODE: _failure_mode,
}
"""Platform signal → what it does to the TPM (a note for the log when it cannot)."""
_NOT_QUEUED = frozenset({TPM_SIGNAL_CANCEL_ON})
"""Signals that must not wait behind the running command (the one they cancel)."""
_NOTHING_TO_DO_WHILE_POWERED = (TPM_SIGNAL_POWER_ON, *sorted(
    code for code, action in _PLATFORM_SIGNALS.items() if action is _accepted))
"""Signals that change nothing on a powered TPM (``_power_on`` is idempotent): tpm2-tss's
mssim TCTI sends POWER_ON and NV_ON on a platform connection of its own for every tool."""


def platform_fast_path(tpm: VTpm) -> FastPath | None:
    """How C acknowledges the platform port's signals that change nothing while the TPM is
    powered (:data:`_NOTHING_TO_DO_WHILE_POWERED`), in the TPM's turn as
    :class:`PlatformPort` takes it."""
    path = tpm.fast_path()
    return None if path is None else path.behind(framing="mssim-platform",
                                                 acks=_NOTHING_TO_DO_WHILE_POWERED)
