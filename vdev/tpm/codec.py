"""The worker pipe's codec: length-prefixed frames of tagged values (sans-IO).

A frame is ``u32 length`` (big-endian) then ``length`` bytes of body.  A body is a sequence
of values, each a one-byte tag then its payload: ``b`` u32 length + bytes, ``i`` i64, ``t`` /
``f`` booleans, ``n`` None, ``s`` u32 length + UTF-8.  A request is the method name then its
arguments; a reply is ``ok`` then the results, or ``err`` then the error's kind, errno,
message and TPM_RESULT.  Nothing here reads or writes a pipe.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

Value = bytes | int | bool | str | None

LENGTH = struct.Struct(">I")
MAX_FRAME = 64 << 20  # far above any TPM state blob; a larger length means a broken pipe


def frame(values: Iterable[Value]) -> bytes:
    body = bytearray()
    for value in values:
        if value is None:
            body += b"n"
        elif isinstance(value, bool):  # before int: bool is an int
            body += b"t" if value else b"f"
        elif isinstance(value, int):
            body += b"i" + struct.pack(">q", value)
        elif isinstance(value, bytes | bytearray | memoryview):
            body += b"b" + LENGTH.pack(len(value)) + bytes(value)
        elif isinstance(value, str):
            data = value.encode("utf-8")
            body += b"s" + LENGTH.pack(len(data)) + data
        else:
            raise TypeError(f"cannot encode {type(value).__name__} for the worker pipe")
    return LENGTH.pack(len(body)) + bytes(body)


def frame_length(header: bytes) -> int:
    """The body length announced by a frame's 4-byte header; ``ValueError`` if absurd."""
    (length,) = LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"worker frame of {length} bytes exceeds {MAX_FRAME}")
    return length


def values(body: bytes) -> list[Value]:
    """Decode a frame's body; ``ValueError`` on anything malformed."""
    out: list[Value] = []
    offset = 0
    try:
        while offset < len(body):
            tag = body[offset:offset + 1]
            offset += 1
            if tag in (b"n", b"t", b"f"):
                out.append(None if tag == b"n" else tag == b"t")
            elif tag == b"i":
                out.append(struct.unpack_from(">q", body, offset)[0])
                offset += 8
            elif tag in (b"b", b"s"):
                (length,) = LENGTH.unpack_from(body, offset)
                offset += 4
                data = body[offset:offset + length]
                if len(data) != length:
                    raise ValueError("value runs past the end of the frame")
                offset += length
                out.append(data if tag == b"b" else data.decode("utf-8"))
            else:
                raise ValueError(f"unknown value tag {tag!r}")
    except struct.error as exc:
        raise ValueError(f"truncated value in worker frame: {exc}") from exc
    return out
