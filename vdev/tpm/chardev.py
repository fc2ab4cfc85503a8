"""``/dev/tpm<N>`` and ``/dev/tpmrm<N>``: the kernel's character-device semantics.

Owns: :class:`TpmChip` (what the chip knows about its openers: ``/dev/tpm<N>`` is
exclusive) and :class:`TpmFile` (one open file, ``struct file_priv`` of
``drivers/char/tpm/tpm-dev-common.c``): a 4096-byte buffer, one whole command per
``write()``, the response read back in pieces through an internal cursor.

Must not know: FUSE, trio, paths in the mount.  Thread-safe: a file's ``write()`` may run in
a worker thread while another thread reads it; a read never waits for a running command (it
answers 0, as the kernel's read between a nonblocking write and its work item does).

Order of the write checks (``tpm_common_write``): size > 4096 → E2BIG; a response pending
and completely unread, or a command still executing → EBUSY; size < 6 or < the header's
commandSize → EINVAL; then (``tpm_try_transmit``) commandSize 0 → ENODATA.  Bytes after
commandSize are accepted and ignored.  EFAULT (a bad user pointer) cannot happen through
a FUSE write: the kernel copies the data before apfs sees it.

Nonblocking files (O_NONBLOCK, as tpm2-tss opens them): the command still executes inside
``write()`` (FUSE has no poll handler here, so the caller's poll reports readable at once and
the response must be ready by then), but an execution failure is kept and returned by the
next ``read()``, where the kernel's nonblocking write reports it; ``write()`` answers the
size.  An unread response is dropped after 120 s (``user_read_timer``).
"""

from __future__ import annotations

import errno
import struct
import threading
import time
from collections.abc import Callable

from vdev.errors import DeviceError, WouldWait
from vdev.tpm.errors import TpmStateError

TPM_BUFSIZE = 4096
MIN_WRITE = 6
"""tag and commandSize: what ``tpm_common_write`` needs to read the size."""
USER_READ_TIMEOUT = 120.0

Execute = Callable[[bytes], bytes]
"""Runs one command (through the space, for tpmrm) and returns its response; raises
:class:`DeviceError` for what the write must fail with."""


class TpmChip:
    """The chip's view of its device files: ``/dev/tpm<N>`` has one opener at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._is_open = False

    def claim(self) -> None:
        """``tpm_open``: EBUSY while another file has ``/dev/tpm<N>`` open."""
        with self._lock:
            if self._is_open:
                raise DeviceError(errno.EBUSY, f"{self.name}: another process owns this TPM "
                                               "(the device is exclusive; tpmrm allows many)")
            self._is_open = True

    def unclaim(self) -> None:
        with self._lock:
            self._is_open = False


class TpmFile:
    """One open TPM device file.  ``execute`` runs a command; at :meth:`release`,
    ``on_close`` (if any) runs at once and ``flush`` (if any) is handed back to the caller,
    since it sends commands (the resource manager flushes its space)."""

    def __init__(self, node: str, execute: Execute, *, nonblocking: bool = False,
                 on_close: Callable[[], None] | None = None,
                 flush: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self._execute = execute
        self._nonblocking = nonblocking
        self._on_close = on_close
        self._flush = flush
        self._clock = clock
        self._lock = threading.Lock()  # buffer_mutex, never held while a command runs
        self._response = b""
        self._cursor = 0
        self._error: DeviceError | None = None
        self._read_any = True  # response_read
        self._executing = False  # command_enqueued
        self._deadline = 0.0
        self._closed = False

    # -- write -------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        """One whole command; blocks while the TPM computes; returns ``len(data)``."""
        size = len(data)
        if size > TPM_BUFSIZE:
            raise DeviceError(errno.E2BIG, f"{self.node}: command of {size} bytes exceeds "
                                           f"the {TPM_BUFSIZE}-byte buffer")
        with self._lock:
            self._expire()
            if self._executing or (not self._read_any and self._pending()):
                what = "a command is executing" if self._executing else \
                    f"its {len(self._response) - self._cursor}-byte response is unread"
                raise DeviceError(errno.EBUSY, f"{self.node}: write of {size} bytes refused: "
                                               f"{what} (read it first)")
            declared = struct.unpack_from(">I", data, 2)[0] if size >= MIN_WRITE else None
            if declared is None or size < declared:
                rule = f"shorter than {MIN_WRITE} bytes" if declared is None else \
                    f"shorter than its header's commandSize {declared}"
                raise DeviceError(errno.EINVAL, f"{self.node}: command of {size} bytes is "
                                                f"{rule}")
            self._response, self._cursor, self._error = b"", 0, None
            self._read_any = False
            self._executing = True
        try:
            response = self._run(data[:declared])
        except WouldWait:
            with self._lock:
                self._executing = False  # nothing ran: the same write comes again
            raise
        except DeviceError as exc:
            with self._lock:
                self._executing = False
                if not self._nonblocking:
                    raise
                self._error = exc  # returned by the next read()
            return size
        with self._lock:
            self._executing = False
            self._response = response
            self._deadline = self._clock() + USER_READ_TIMEOUT
        return size

    def _run(self, command: bytes) -> bytes:
        if len(command) == 0:
            raise DeviceError(errno.ENODATA, f"{self.node}: command with commandSize 0")
        try:
            response = self._execute(command)
        except TpmStateError:
            # A powered-off TPM never answers: the driver gives up on its timeout.
            raise DeviceError(errno.ETIMEDOUT, f"{self.node}: the TPM is powered off "
                                               "(write 1 to its power control file)") from None
        if len(response) > TPM_BUFSIZE:  # the virtio device refuses these already
            raise DeviceError(errno.EFAULT, f"{self.node}: response of {len(response)} bytes "
                                            f"exceeds the {TPM_BUFSIZE}-byte buffer")
        return response

    # -- read --------------------------------------------------------------------------

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the pending response from the cursor; b"" when nothing is
        pending (EOF) or a command is still executing.  ``read(0)`` discards the response."""
        with self._lock:
            self._expire()
            if self._error is not None:
                error, self._error = self._error, None
                self._read_any = True
                raise error
            if not self._pending():
                return b""
            self._read_any = True
            if size <= 0:
                self._response, self._cursor = b"", 0
                return b""
            chunk = self._response[self._cursor:self._cursor + size]
            self._cursor += len(chunk)
            if not self._pending():
                self._response, self._cursor = b"", 0
            return chunk

    def _pending(self) -> bool:
        return self._cursor < len(self._response)

    def _expire(self) -> None:
        """``tpm_timeout_work``: a response unread for 120 s is dropped."""
        if self._pending() and self._clock() >= self._deadline:
            self._response, self._cursor, self._read_any = b"", 0, True

    # -- close -------------------------------------------------------------------------

    def release(self) -> Callable[[], None] | None:
        """Close: the pending response is dropped and ``on_close`` runs, at once (the next
        opener of an exclusive device must find it free); returns ``flush``, the part that
        may block, for the caller to run.  Only the first release does anything."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            self._response, self._cursor, self._error = b"", 0, None
        if self._on_close is not None:
            self._on_close()
        return self._flush
