"""The worker pipe's codec: length-prefixed frames of plain values (sans-IO).

A frame is ``u32 length`` (big-endian) then ``length`` bytes of body; the body is a list of
values (bytes, int, bool, str, None) serialised with :mod:`marshal`.  marshal is C code (a
hand-written tag/length encoder in Python cost ~2 µs per frame on each side, a third of a
worker round trip) and both ends are the same interpreter (the parent starts the child with
its own ``sys.executable``), so its format always matches; it is not meant for untrusted
peers, and the pipe has none.  A request is the method name then its arguments; a reply is
``ok``, the TPM's new permanent blob if the call changed it (else None), then the results; or
``err``, that blob, then the error's kind, errno, message, function and TPM_RESULT.
Nothing here reads or writes a pipe.
"""

from __future__ import annotations

import marshal
import struct

Value = bytes | int | bool | str | None

LENGTH = struct.Struct(">I")
MAX_FRAME = 64 << 20  # far above any TPM state blob; a larger length means a broken pipe
_TYPES = (bytes, int, str, type(None))  # bool is an int


def frame(values: list[Value]) -> bytes:
    for value in values:
        if not isinstance(value, _TYPES):
            raise TypeError(f"cannot encode {type(value).__name__} for the worker pipe")
    body = marshal.dumps(values)
    return LENGTH.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length announced by a frame's 4-byte header; ``ValueError`` if absurd."""
    (length,) = LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"worker frame of {length} bytes exceeds {MAX_FRAME}")
    return length


def values(body: bytes) -> list[Value]:
    """Decode a frame's body; ``ValueError`` on anything that is not a list of values."""
    try:
        decoded = marshal.loads(body)
    except (EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed worker frame: {exc}") from exc
    if not isinstance(decoded, list):
        raise ValueError(f"malformed worker frame: a {type(decoded).__name__}, not a list")
    return decoded
