"""The files of ``apfs mount --state DIR``: a lock and one state file, atomically replaced.

Owns: the directory layout, the on-disk format and its checks, the lock.  Must not know what
the state means (the models validate it on restore) or when to save it (:mod:`apfs.host`).

``DIR/lock``   flock()ed by the daemon for as long as it serves (the kernel drops it when
               the daemon dies, even by SIGKILL); holds the daemon's pid for the refusal.
``DIR/state``  the last committed state.  Never written in place: the next state goes to
               ``DIR/state.tmp``, is fsync()ed, renamed over ``state`` and the directory is
               fsync()ed, so after a crash at any instant ``state`` is the old or the new
               state, whole.  A leftover ``state.tmp`` is a commit that never happened.

Format, version 1: one header line, then exactly the number of JSON bytes it announces::

    apfs-state 1 <length> <sha256 of the JSON bytes, hex>\\n
    {"config": "<fingerprint of the host configuration>", "state": {...}}

Since a commit never leaves a partial file, anything short, long or with the wrong digest is
damage, and is refused with the path and the reason rather than half-loaded.

Why a whole-file replace and not a journal: the exported state lists only what differs from
the configuration, so it stays a few hundred bytes and its export costs 0.4 ms on a 64x64
host; the commit is then dominated by the two fsync()s (~0.8 ms on this machine's ext4, a
journal append with one fdatasync() ~0.15 ms), and a journal's torn tail could not be told
apart from a truncated file.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from vdev.ap.host import HostConfig

MAGIC = b"apfs-state"
VERSION = 1


class StateError(Exception):
    """A state directory that cannot be used; the message names the path and the reason."""


def config_fingerprint(config: HostConfig) -> str:
    """A digest of what the host configuration means (not of its TOML text)."""
    fields = dataclasses.asdict(config)
    canonical = json.dumps(fields, sort_keys=True, default=sorted, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode(fingerprint: str, state: Any) -> bytes:
    """The file's bytes for ``state`` (plain JSON data)."""
    body = json.dumps({"config": fingerprint, "state": state}, separators=(",", ":")).encode()
    header = b"%s %d %d %s\n" % (MAGIC, VERSION, len(body),
                                 hashlib.sha256(body).hexdigest().encode())
    return header + body


def decode(path: Path, raw: bytes, fingerprint: str) -> Any:
    """The state saved in ``raw`` (read from ``path``), or StateError saying what is wrong."""
    header, newline, body = raw.partition(b"\n")
    fields = header.split(b" ")
    if not newline or fields[0] != MAGIC:
        what = "is empty" if not raw else f"does not start with {MAGIC.decode()!r}"
        if raw.startswith(MAGIC) and not newline:
            what = "is truncated inside its header line"
        raise StateError(f"{path}: not an apfs state file: it {what}")
    if len(fields) != 4 or not fields[2].isdigit():
        raise StateError(f"{path}: damaged header line {header[:80]!r}")
    if fields[1] != str(VERSION).encode():
        raise StateError(f"{path}: format version {fields[1].decode(errors='replace')!r}; "
                         f"this apfs reads version {VERSION}")
    length = int(fields[2])
    if len(body) < length:
        raise StateError(f"{path}: truncated: {len(body)} of {length} bytes after the header")
    if len(body) > length:
        raise StateError(f"{path}: damaged: {len(body) - length} bytes more than the header's "
                         f"{length}")
    if hashlib.sha256(body).hexdigest().encode() != fields[3]:
        raise StateError(f"{path}: corrupted: the SHA-256 of its contents does not match its "
                         f"header")
    try:
        doc = json.loads(body)
        saved_for, state = doc["config"], doc["state"]
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(f"{path}: damaged contents: {exc}") from None
    if saved_for != fingerprint:
        raise StateError(f"{path}: saved for a different host configuration (fingerprint "
                         f"{str(saved_for)[:12]}, this mount's is {fingerprint[:12]}); mount "
                         f"it with the --config it was made with, or use a new --state "
                         f"directory")
    return state


class StateStore:
    """One ``--state`` directory, locked by this process while the store lives."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.path = directory / "state"
        self._tmp = directory / "state.tmp"
        self._fingerprint = fingerprint
        self._lock_fd: int | None = None
        self._dir_fd: int | None = None

    def open(self) -> None:
        """Create the directory if needed and take its lock; StateError when it is in use."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock_path = self.directory / "lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"{self.directory}: cannot use as a state directory: "
                             f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(f"{lock_path}: cannot lock: {exc.strerror}") from None
            raise StateError(f"{self.directory}: state directory in use by apfs daemon pid "
                             f"{holder} (it holds {lock_path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def load(self) -> Any | None:
        """The committed state, or None for a directory that has none yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read: {exc.strerror}") from None
        return decode(self.path, raw, self._fingerprint)

    def commit(self, state: Any) -> None:
        """Make ``state`` the committed one, durably; OSError (nothing changed) on failure."""
        assert self._dir_fd is not None, "open() first"
        data = memoryview(encode(self._fingerprint, state))
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        os.fsync(self._dir_fd)

    def close(self) -> None:
        for fd in (self._dir_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._dir_fd = self._lock_fd = None
