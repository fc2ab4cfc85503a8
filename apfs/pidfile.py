"""Which process serves a mount: a pid file per live FUSE connection, owned by its daemon.

``apfs umount`` must stop the daemon of a mount even when that daemon does not answer, and it
must never signal anything else.  The daemon writes ``<runtime dir>/<major>:<minor>.pid``
(the mount's device number, unique among live mounts) holding its pid and its start time; a
reader trusts the pid only if a live process with that pid started at that time, so a stale
file (daemon killed with SIGKILL) or a recycled pid is never mistaken for the daemon.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def runtime_dir() -> Path:
    """Where pid files live: /run/apfs for root, the user's runtime directory otherwise."""
    if os.geteuid() == 0:
        return Path("/run/apfs")
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "apfs" if base else Path(f"/tmp/apfs-{os.geteuid()}")


def path_for(device: str) -> Path:
    return runtime_dir() / f"{device}.pid"


@dataclass(frozen=True)
class Process:
    """A process named for good: a pid alone may be reused once the process is gone."""

    pid: int
    start: int
    """Start time in clock ticks after boot (field 22 of /proc/PID/stat)."""

    @classmethod
    def current(cls) -> Process:
        found = _stat(os.getpid())
        assert found is not None, "/proc/self/stat is always readable"
        return cls(os.getpid(), found[1])

    def alive(self) -> bool:
        """True while this very process runs (a zombie has finished: it is only unreaped)."""
        found = _stat(self.pid)
        return found is not None and found[1] == self.start and found[0] != "Z"

    def stopped(self) -> bool:
        found = _stat(self.pid)
        return found is not None and found[1] == self.start and found[0] in "Tt"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid``, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain ") "
    return fields[0], int(fields[19])


def claim(device: str) -> Path:
    """Record this process as the daemon of the mount ``device``; returns the file's path."""
    path = path_for(device)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    me = Process.current()
    staging = path.with_name(f".{path.name}.{me.pid}")
    staging.write_text(f"{me.pid} {me.start}\n")
    staging.replace(path)  # readers see the old file or the whole new one
    return path


def release(path: Path) -> None:
    """Remove the pid file if it is still this process's (a later mount may own it now)."""
    if owner_of(path) == Process.current():
        path.unlink(missing_ok=True)


def owner(device: str) -> Process | None:
    """The live daemon of the mount ``device``, or None (no file, stale file)."""
    return owner_of(path_for(device))


def owner_of(path: Path) -> Process | None:
    try:
        pid, start = (int(field) for field in path.read_text().split())
    except (OSError, ValueError):
        return None
    process = Process(pid, start)
    return process if process.alive() else None


def forget(device: str) -> None:
    """Drop the pid file of a mount that is gone and whose daemon no longer runs."""
    path = path_for(device)
    if owner_of(path) is None:
        path.unlink(missing_ok=True)
