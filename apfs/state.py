"""The files of ``apfs mount --state DIR``: a lock and state files, each atomically replaced.

Owns: the directory layout, the on-disk format and its checks, the lock.  Must not know what
the state means (the models validate it on restore) or when to save it (:mod:`apfs.host`).

``DIR/lock``   flock()ed by the daemon for as long as it serves (the kernel drops it when
               the daemon dies, even by SIGKILL); holds the daemon's pid for the refusal.
``DIR/state``  the last committed state.  Never written in place: the next state goes to
               ``DIR/state.tmp``, is fsync()ed, renamed over ``state`` and the directory is
               fsync()ed, so after a crash at any instant ``state`` is the old or the new
               state, whole.  A leftover ``state.tmp`` is a commit that never happened.
``DIR/tpm-<name>``  each vTPM's permanent state (:mod:`vdev.tpm.stateblob`, the bytes its
               ``stateblob`` control file exports), committed the same way by
               :meth:`StateStore.commit_file`.  Binary and a few kB (up to ~100 kB with full
               NV), it gets a file of its own rather than base64 in the JSON document: an NV
               write then rewrites only that TPM's file (no 33 % base64 growth, no re-export
               of the AP state), and an AP write never rewrites a TPM blob.  Each device's
               file is consistent on its own; nothing needs two files to agree.

Format of ``DIR/state``, version 1 (the envelope is :mod:`vdev.sealed`'s): one header line,
then exactly the number of JSON bytes it announces::

    apfs-state 1 <length> <sha256 of the JSON bytes, hex>\\n
    {"config": "<fingerprint of the host configuration>", "state": {...}}

Since a commit never leaves a partial file, anything short, long or with the wrong digest is
damage, and is refused with the path and the reason rather than half-loaded.

Why a whole-file replace and not a journal (``scripts/bench-state``): the exported state lists
only what differs from the configuration, so it stays a few hundred bytes and its export costs
~0.4 ms on a 64x64 host; a commit is then dominated by the two fsync()s (an echo costs
0.6-1.2 ms on this machine's ext4, 0.1-0.5 ms on tmpfs).  A journal would save one fsync()
(an append + fdatasync() measured ~0.15 ms), but its crash-torn tail could not be told from
a truncated file, which must be refused.
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
from vdev.sealed import SealError, seal, unseal

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
    return seal(MAGIC, VERSION, body)


def decode(path: Path, raw: bytes, fingerprint: str) -> Any:
    """The state saved in ``raw`` (read from ``path``), or StateError saying what is wrong."""
    try:
        body = unseal(str(path), raw, MAGIC, VERSION, "an apfs state file")
    except SealError as exc:
        raise StateError(str(exc)) from None
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
    """One ``--state`` directory, locked by this process while the store lives.

    Every file is reached through a descriptor of the directory opened before the mount
    exists, never by path: a state directory inside the mount point (hidden by the mount)
    still works, and the daemon never sends a request to its own mount.
    """

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.path = directory / "state"
        self._fingerprint = fingerprint
        self._dir_fd: int | None = None
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directory if needed and take its lock; StateError when it is in use."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600,
                         dir_fd=self._dir_fd)
        except OSError as exc:
            raise StateError(f"{self.directory}: cannot use as a state directory: "
                             f"{exc.strerror}") from None
        lock_path = self.directory / "lock"
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

    def close(self) -> None:
        """Release the lock and the directory; idempotent (the daemon's exit does it too)."""
        for fd in (self._lock_fd, self._dir_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._dir_fd = None

    def load(self) -> Any | None:
        """The committed state, or None for a directory that has none yet."""
        raw = self.read_file("state")
        return None if raw is None else decode(self.path, raw, self._fingerprint)

    def read_file(self, name: str) -> bytes | None:
        """The committed bytes of ``DIR/name``, or None if it does not exist."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{self.directory / name}: cannot read: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "rb") as f:
                return f.read()
        except OSError as exc:
            raise StateError(f"{self.directory / name}: cannot read: {exc.strerror}") from None

    def commit(self, state: Any) -> None:
        """Make ``state`` the committed one, durably, or raise OSError."""
        self.commit_file("state", encode(self._fingerprint, state))

    def commit_file(self, name: str, data: bytes) -> None:
        """Make ``data`` the committed contents of ``DIR/name``, durably, or raise OSError.

        Written to ``DIR/name.tmp``, fsync()ed, renamed over ``DIR/name``, directory
        fsync()ed.  A failure before the rename leaves the committed file as it was; one
        after it (the fsync of the directory) leaves the new file in place, not known to be
        durable.
        """
        assert self._dir_fd is not None, "open() first"
        view = memoryview(data)
        tmp = f"{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600,
                     dir_fd=self._dir_fd)
        try:
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        os.fsync(self._dir_fd)
