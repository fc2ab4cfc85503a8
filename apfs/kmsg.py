"""The daemon's log as a dmesg-like ring buffer, readable inside the mount at ``apfs/log``.

Administrators look for the reason of a refused ``echo`` in the kernel log; apfs keeps the
same habit: every refusal is one line here (and in the daemon's log file, if any).
"""

from __future__ import annotations

import logging
import time
from collections import deque


class KernelLog:
    """Timestamped lines, oldest dropped first once ``max_bytes`` is exceeded."""

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._max_bytes = max_bytes
        self._start = time.monotonic()

    def append(self, text: str) -> None:
        # One record, one line: a value quoted in a message must not forge a second line.
        text = text.replace("\n", "\\n")
        line = f"[{time.monotonic() - self._start:12.6f}] {text}\n".encode(errors="replace")
        self._lines.append(line)
        self._size += len(line)
        while self._size > self._max_bytes and len(self._lines) > 1:
            self._size -= len(self._lines.popleft())

    def content(self) -> bytes:
        return b"".join(self._lines)


class KernelLogHandler(logging.Handler):
    """Feeds Python log records (message only, like printk) into a :class:`KernelLog`."""

    def __init__(self, kmsg: KernelLog) -> None:
        # INFO and up: what a kernel would print.  --debug's per-request trace goes only to
        # the daemon's own log, or reading apfs/log would grow apfs/log.
        super().__init__(logging.INFO)
        self._kmsg = kmsg

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._kmsg.append(record.getMessage())
        except Exception:  # logging must never break a FUSE handler
            self.handleError(record)
