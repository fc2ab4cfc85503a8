"""Sealed files: a versioned, length- and SHA-256-checked envelope around any bytes.

Owns the envelope that ``--state`` files and exported TPM state blobs share, so one set of
checks decides what is damage.  Must not know what the body means, nor any path or I/O: the
caller names where the bytes came from (``where``) for the message.

Format: one header line, then exactly the number of body bytes it announces::

    <magic> <version> <length> <sha256 of the body, hex>\\n<body>

A writer that never leaves a partial file (write, fsync, rename) makes anything short, long
or with the wrong digest damage; :func:`unseal` refuses it naming ``where`` and the reason
rather than handing out part of it.
"""

from __future__ import annotations

import hashlib


class SealError(ValueError):
    """Bytes that are not a whole, intact sealed file; the message starts with ``where``."""


def seal(magic: bytes, version: int, body: bytes) -> bytes:
    """The header line for ``body``, then ``body``."""
    digest = hashlib.sha256(body).hexdigest().encode()
    return b"%s %d %d %s\n" % (magic, version, len(body), digest) + body


def header_length(raw: bytes) -> int | None:
    """The total size (header and body) ``raw`` announces, or None while its header line is
    incomplete or unreadable: lets a reader of pieces know when it has the whole file."""
    header, newline, _body = raw.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 4 or not fields[2].isdigit():
        return None
    return len(header) + 1 + int(fields[2])


def unseal(where: str, raw: bytes, magic: bytes, version: int, kind: str) -> bytes:
    """The body of ``raw``, or SealError naming ``where`` (``kind``: what it should be, for
    the message: "an apfs state file")."""
    header, newline, body = raw.partition(b"\n")
    fields = header.split(b" ")
    if not newline or fields[0] != magic:
        what = "is empty" if not raw else f"does not start with {magic.decode()!r}"
        if raw.startswith(magic) and not newline:
            what = "is truncated inside its header line"
        raise SealError(f"{where}: not {kind}: it {what}")
    if len(fields) != 4 or not fields[2].isdigit():
        raise SealError(f"{where}: damaged header line {header[:80]!r}")
    if fields[1] != str(version).encode():
        raise SealError(f"{where}: format version {fields[1].decode(errors='replace')!r}; "
                        f"this apfs reads version {version}")
    length = int(fields[2])
    if len(body) < length:
        raise SealError(f"{where}: truncated: {len(body)} of {length} bytes after the header")
    if len(body) > length:
        raise SealError(f"{where}: damaged: {len(body) - length} bytes more than the header's "
                        f"{length}")
    if hashlib.sha256(body).hexdigest().encode() != fields[3]:
        raise SealError(f"{where}: corrupted: the SHA-256 of its contents does not match its "
                        f"header")
    return body
