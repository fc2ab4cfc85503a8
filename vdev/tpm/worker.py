"""A TPM in a worker process, with the API of :class:`vdev.tpm.engine.Tpm`.

libtpms keeps one TPM per process; :class:`TpmWorker` runs each further TPM in a child
process (running :func:`main`) and talks to it over its stdin/stdout pipes in the
frames of :mod:`vdev.tpm.codec`.  This is the one module of ``vdev`` that does I/O, because
the process boundary *is* the feature; it has no sockets and no event loop.

Ordering: a caller holds a FIFO lock from writing its request to reading its reply, so
commands to one TPM run in arrival order, with no thread hand-off on either side (each one
costs tens of microseconds).  ``cancel`` is the exception: it must reach a running command,
so it is a signal (SIGUSR1) that a thread of the child waits for, and it has no reply.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from vdev.tpm import codec
from vdev.tpm.engine import FifoLock, Tpm, TpmState
from vdev.tpm.errors import (
    TpmError,
    TpmInUse,
    TpmLibraryError,
    TpmStateError,
    TpmUnavailable,
)

# Methods the child runs for a request of the same name, with their results as one value.
_PLAIN_CALLS = frozenset({
    "power_on", "power_off", "reset", "execute", "hash_start", "hash_data", "hash_end",
    "established", "reset_established",
})
EXIT_TIMEOUT = 5.0
READ_SIZE = 1 << 16
CANCEL_SIGNAL = signal.SIGUSR1
# The child's program (not ``-m vdev.tpm.worker``, which would import this module twice).
_CHILD = "import sys; from vdev.tpm.worker import main; sys.exit(main())"


class FramePipe:
    """Frames over a pair of file descriptors with plain ``os.read``/``os.write``: one system
    call per frame each way in the usual case (buffered file objects make two or three)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._buffer = bytearray()

    def send(self, values: list[codec.Value]) -> None:
        data = memoryview(codec.frame(values))
        while data:
            data = data[os.write(self._write_fd, data):]

    def receive(self) -> list[codec.Value] | None:
        """The next frame's values, or None at end of file (a cut-off frame is end of file:
        the peer is gone).  ``ValueError`` for a malformed frame."""
        while True:
            if len(self._buffer) >= codec.LENGTH.size:
                end = codec.LENGTH.size + codec.frame_length(self._buffer[:codec.LENGTH.size])
                if len(self._buffer) >= end:
                    body = bytes(self._buffer[codec.LENGTH.size:end])
                    del self._buffer[:end]
                    return codec.values(body)
            chunk = os.read(self._read_fd, READ_SIZE)
            if not chunk:
                return None
            self._buffer += chunk


# -- errors across the pipe ---------------------------------------------------------------

def _error_values(exc: BaseException) -> list[codec.Value]:
    if isinstance(exc, TpmLibraryError):
        return ["err", "TpmLibraryError", exc.errno, exc.reason, exc.function, exc.rc]
    if isinstance(exc, TpmError):
        return ["err", type(exc).__name__, exc.errno, exc.message, "", 0]
    # A bug in the child: report it as an I/O error naming it rather than dying silently.
    return ["err", "TpmError", errno.EIO, f"TPM worker: {type(exc).__name__}: {exc}", "", 0]


def _error(values: list[codec.Value]) -> TpmError:
    kind, err, message, function, rc = values
    assert isinstance(err, int) and isinstance(message, str) and isinstance(rc, int)
    if kind == "TpmLibraryError":
        return TpmLibraryError(str(function), rc, message)
    simple = {"TpmStateError": TpmStateError, "TpmInUse": TpmInUse,
              "TpmUnavailable": TpmUnavailable}.get(str(kind))
    return simple(message) if simple else TpmError(err, message)


# -- the child -------------------------------------------------------------------------------

def _dispatch(tpm: Tpm, op: str, args: list[codec.Value]) -> list[codec.Value]:
    if op in _PLAIN_CALLS:
        return [getattr(tpm, op)(*args)]
    if op == "get_state":
        state = tpm.get_state()
        return [state.permanent, state.volatile]
    if op == "set_state":
        permanent, volatile = args
        assert isinstance(permanent, bytes) and isinstance(volatile, bytes)
        tpm.set_state(TpmState(permanent, volatile))
        return []
    if op == "info":
        return [json.dumps(tpm.info())]
    if op == "buffer_size":
        return list(tpm.buffer_size(*args))
    if op == "powered":
        return [tpm.powered]
    raise TpmError(errno.EINVAL, f"TPM worker: unknown request {op!r}")


def _cancel_on_signal(tpm: Tpm) -> None:
    while True:
        signal.sigwait({CANCEL_SIGNAL})
        tpm.cancel()


def main() -> int:
    """The child: one Tpm, requests from stdin, replies on stdout (first a hello)."""
    # Keep stdout for frames: anything libtpms or Python prints goes to stderr instead.
    pipe = FramePipe(0, os.dup(1))
    os.dup2(2, 1)
    # Blocked in every thread, so only the sigwait() below receives it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {CANCEL_SIGNAL})
    try:
        tpm = Tpm()
    except Exception as exc:
        pipe.send(_error_values(exc))
        return 1
    threading.Thread(target=_cancel_on_signal, args=(tpm,), daemon=True).start()
    pipe.send(["ok"])
    try:
        while (request := pipe.receive()) is not None:
            op, *args = request
            try:
                reply = ["ok", *_dispatch(tpm, str(op), args)]
            except Exception as exc:
                reply = _error_values(exc)
            # A changed permanent blob rides on the reply of the call that changed it, so the
            # parent can save it before passing that call's result on (no extra round trip).
            reply.insert(1, tpm.take_permanent())
            pipe.send(reply)
    finally:
        tpm.close()
    return 0


# -- the parent ------------------------------------------------------------------------------

class TpmWorker:
    """A TPM in its own process; the same methods as :class:`vdev.tpm.engine.Tpm`."""

    def __init__(self, state: TpmState | None = None) -> None:
        # The child imports vdev from where this file is, installed or not.
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, close_fds=True, bufsize=0)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin = self._proc.stdin
        self._stdout = self._proc.stdout
        self._pipe = FramePipe(self._stdout.fileno(), self._stdin.fileno())
        self._lock = FifoLock()
        self._dead: TpmError | None = None
        self._permanent: bytes | None = None
        hello = self._pipe.receive()
        if hello != ["ok"]:
            self.close()
            raise (_error(hello[1:]) if hello else self._exit_error())
        if state is not None:
            self.set_state(state)

    def __enter__(self) -> TpmWorker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _exit_error(self) -> TpmError:
        """The child closed its pipes: it has exited or is exiting; name its status."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(EXIT_TIMEOUT)
        return TpmError(errno.EIO, f"TPM worker process {self._proc.pid} exited "
                                   f"(status {self._proc.returncode})")

    def _call(self, op: str, *args: codec.Value) -> list[codec.Value]:
        with self._lock:
            if self._dead is not None:
                raise self._dead
            try:
                self._pipe.send([op, *args])
                reply = self._pipe.receive()
            except ValueError as exc:  # a malformed frame
                self._dead = TpmError(errno.EIO, f"TPM worker pipe broken: {exc}")
                raise self._dead from exc
            except OSError:
                reply = None  # EPIPE: the child is gone, as at end of file
            if reply is None:
                self._dead = self._exit_error()
                raise self._dead
            status, permanent, *results = reply
            if permanent is not None:
                assert isinstance(permanent, bytes)
                self._permanent = permanent
        if status != "ok":
            raise _error(results)
        return results

    @property
    def powered(self) -> bool:
        return bool(self._call("powered")[0])

    def power_on(self) -> None:
        self._call("power_on")

    def power_off(self) -> None:
        self._call("power_off")

    def reset(self) -> None:
        self._call("reset")

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        response = self._call("execute", bytes(command), locality)[0]
        assert isinstance(response, bytes)
        return response

    def cancel(self) -> None:
        if self._proc.poll() is None:
            os.kill(self._proc.pid, CANCEL_SIGNAL)

    def buffer_size(self, wanted: int = 0) -> tuple[int, int, int]:
        size, low, high = self._call("buffer_size", wanted)
        assert isinstance(size, int) and isinstance(low, int) and isinstance(high, int)
        return size, low, high

    def hash_start(self) -> None:
        self._call("hash_start")

    def hash_data(self, data: bytes) -> None:
        self._call("hash_data", bytes(data))

    def hash_end(self) -> None:
        self._call("hash_end")

    def established(self) -> bool:
        return bool(self._call("established")[0])

    def reset_established(self, locality: int) -> None:
        self._call("reset_established", locality)

    def get_state(self) -> TpmState:
        permanent, volatile = self._call("get_state")
        assert isinstance(permanent, bytes) and isinstance(volatile, bytes)
        return TpmState(permanent, volatile)

    def set_state(self, state: TpmState) -> None:
        self._call("set_state", state.permanent, state.volatile)

    def take_permanent(self) -> bytes | None:
        """As :meth:`Tpm.take_permanent`: the blob the child reported with a reply."""
        with self._lock:
            permanent, self._permanent = self._permanent, None
        return permanent

    def info(self) -> dict[str, Any]:
        text = self._call("info")[0]
        assert isinstance(text, str)
        return json.loads(text)

    def close(self) -> None:
        """End the child (it closes its TPM at end of input); idempotent."""
        self._dead = self._dead or TpmError(errno.EIO,
                                            f"TPM worker process {self._proc.pid} is closed")
        # An OSError means the child is gone already: nothing to tell it.
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self._proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stdout.close()
