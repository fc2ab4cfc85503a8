"""apfs as a test fixture: mount a host for a test, drive it like an administrator, unmount.

Public API (stable; the pytest plugin :mod:`apfs.pytest_plugin` is built on it)::

    from apfs.testing import mounted

    with mounted() as m:                                  # the embedded default host
        m.write("sys/bus/ap/drivers/cex4queue/unbind", "05.0004\\n")
        assert m.read("sys/bus/ap/bindings") == "7/8\\n"
        m.reset()                                         # back to the configured state

- :func:`mounted` mounts a host in a fresh directory and always unmounts it, also when the
  body raises or is interrupted, when the daemon died (its dead mount is detached without
  ever being stat-ed), and when this process dies: the daemon watches its owner
  (``--exit-with PID``) and unmounts itself.
- :class:`Mount` is the handle: paths, ``read``/``write`` (one ``write()`` syscall, like
  ``echo``, raising :class:`OSError` with the kernel's errno), ``bash``, the log and the
  parsed refusals, ``reset()``.
- :func:`is_mounted` and :func:`unmount` act on ``/proc/self/mountinfo``, never on the mount.

Nothing here imports pytest: the context manager works in any test runner or script.
"""

from __future__ import annotations

import ast
import errno
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from apfs import mountinfo
from apfs.options import daemon_command

__all__ = ["Config", "Mount", "MountError", "Refusal", "Shell", "is_mounted", "mounted", "unmount"]

Config = str | os.PathLike[str] | None
"""A host: TOML text (``str``), a TOML file (a path object), or None for the default host."""

READY_TIMEOUT = 30.0
"""Seconds a daemon may take to mount (a 256x256 host takes about one)."""

EXIT_TIMEOUT = 3.0
"""Seconds a daemon may take to exit once its mount is gone, before it is killed."""

COMMAND_TIMEOUT = 60.0
"""Bound of every helper process (``bash``, ``fusermount3``): a hung mount fails a test."""

POLL_INTERVAL = 0.005

# The line Host.log_refusal writes (after the log's "[   seconds] " stamp), e.g.
#   sys/bus/ap/drivers/cex4queue/unbind: write '09.0004\n' refused with ENODEV (No such
#   device): ...
_REFUSAL = re.compile(
    r"^\[\s*[0-9.]+\] (?P<path>.+?): write (?P<value>'.*?'|\".*?\")(?:\.\.\.)? "
    r"refused with (?P<name>E[A-Z0-9]+) \([^)]*\): (?P<message>.*)$")


class MountError(RuntimeError):
    """A host could not be mounted (the message has the daemon's reason) or unmounted."""


@dataclass(frozen=True)
class Shell:
    """What a bash session printed and its exit status."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Refusal:
    """One refused write, as logged in ``apfs/log``."""

    path: str
    """The file, relative to the mount (``sys/bus/ap/drivers/cex4queue/bind``)."""
    value: str
    """The value written (its first 80 bytes, decoded as latin-1)."""
    errno: int
    """What ``write()`` returned, e.g. :data:`errno.EADDRINUSE`."""
    message: str
    """The rule, in the kernel's words."""


@dataclass(frozen=True)
class Mount:
    """A mounted apfs tree.  Paths given to the helpers are relative to :attr:`root`."""

    root: Path
    """The mount point."""
    daemon: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    """The daemon serving it when :func:`mounted` started it (e.g. to signal it)."""

    @property
    def sys(self) -> Path:
        """The sysfs tree: what ``SYSFS_ROOT`` points at, or ``/sys`` in a namespace."""
        return self.root / "sys"

    def read(self, relative: str) -> str:
        """``cat ROOT/relative``."""
        return (self.root / relative).read_text()

    def write(self, relative: str, text: str | bytes) -> int:
        """``echo -n TEXT > ROOT/relative``: one ``open(O_TRUNC)`` and one ``write()``.

        Returns the count the store accepted; a refusal raises :class:`OSError` with the
        errno the kernel would return (``e.errno == errno.EADDRINUSE``).  ``text`` is written
        as given: add the ``\\n`` that ``echo`` adds when the rule cares.
        """
        data = text.encode() if isinstance(text, str) else text
        fd = os.open(self.root / relative, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)

    def bash(self, script: str, cwd: Path | None = None) -> Shell:
        """Run ``script`` with bash in ``cwd`` (default: the mount), with ``$SYS`` and
        ``$MNT`` set to :attr:`sys` and :attr:`root`.  Bash, not sh: dash reports every
        failed ``echo`` as an I/O error instead of the errno."""
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              cwd=cwd or self.root, timeout=COMMAND_TIMEOUT,
                              env={**os.environ, "SYS": str(self.sys), "MNT": str(self.root)})
        return Shell(done.returncode, done.stdout, done.stderr)

    def log(self) -> str:
        """``apfs/log``: the mount's kernel-style log, one line per refused write."""
        return self.read("apfs/log")

    def refusals(self) -> list[Refusal]:
        """The refused writes in ``apfs/log``, oldest first."""
        found = []
        for line in self.log().splitlines():
            match = _REFUSAL.match(line)
            if match:
                found.append(Refusal(path=match["path"],
                                     value=ast.literal_eval(match["value"]),
                                     errno=getattr(errno, match["name"]),
                                     message=match["message"]))
        return found

    def reset(self) -> None:
        """Back to the configured state, without remounting (``echo 1 > apfs/reset``)."""
        self.write("apfs/reset", "1\n")


@contextmanager
def mounted(config: Config = None, state: str | os.PathLike[str] | None = None, *,
            where: str | os.PathLike[str] | None = None,
            spin_us: int | None = None) -> Iterator[Mount]:
    """Mount a host, yield its :class:`Mount`, and unmount it whatever happens.

    ``config``: TOML text (``str``), a TOML file (``pathlib.Path``), or None for the embedded
    default host.  ``state``: a directory for ``apfs mount --state``.  ``where``: the
    directory in which the mount point (``mnt``, ``mnt1``, ...), the config file written
    from a text and the daemon's output (``mnt.log``) are made; default: a temporary
    directory removed afterwards.  ``spin_us``: ``apfs mount --spin-us``.

    Raises :class:`MountError` with the daemon's reason when the host cannot be mounted.
    """
    with ExitStack() as stack:
        if where is None:
            base = Path(tempfile.mkdtemp(prefix="apfs-"))
            stack.callback(_remove_unless_mounted, base)
        else:
            base = Path(where).resolve()
        root = _new_mountpoint(base)
        # The daemon itself (what `apfs mount` starts), as our child: its pid and exit status
        # are ours to wait for, and it unmounts by itself if this process dies.
        command = [*daemon_command(), "--exit-with", str(os.getpid())]
        if config is not None:
            command += ["--config", str(_config_file(config, root.with_suffix(".toml")))]
        if state is not None:
            command += ["--state", str(Path(state).resolve())]
        if spin_us is not None:
            command += ["--spin-us", str(spin_us)]
        output = root.with_suffix(".log")
        with open(output, "wb") as out:
            # Its own session: a Ctrl-C meant for the test run reaches the run, whose
            # teardown unmounts, not the daemon in the middle of a test.
            daemon = subprocess.Popen([*command, str(root)], stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        stack.callback(_stop, root, daemon)
        _wait_until_mounted(root, daemon, output)
        yield Mount(root, daemon)


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Whether something is mounted on ``path``, from ``/proc/self/mountinfo``: unlike
    :func:`os.path.ismount` it never stats the path, which hangs on a stopped daemon."""
    return mountinfo.mount_at(str(Path(path).absolute())) is not None


def unmount(path: str | os.PathLike[str]) -> bool:
    """Unmount the apfs mount on ``path``; lazily when it is busy or its daemon died (a dead
    mount answers ``ENOTCONN`` until detached).  Nothing mounted: nothing to do.  Returns
    whether it had to detach lazily.  Refuses (:class:`MountError`) to touch a mount that is
    not apfs."""
    where = Path(path).absolute()
    entry = mountinfo.mount_at(str(where))
    if entry is None:
        return False
    if not entry.is_apfs:
        raise MountError(f"{where}: a {entry.fstype} mount of {entry.source}, not apfs: "
                         "not unmounting it")
    lazy = _fusermount("-u", where) != 0
    if lazy:
        _fusermount("-u", "-z", where)
    if is_mounted(where):
        raise MountError(f"{where}: still mounted after fusermount3 -u -z")
    return lazy


def _new_mountpoint(base: Path) -> Path:
    """``base/mnt``, or ``mnt1``, ``mnt2``... when taken (several mounts in one directory)."""
    index = 0
    while True:
        root = base / (f"mnt{index}" if index else "mnt")
        try:
            root.mkdir()
            return root
        except FileExistsError:
            index += 1


def _config_file(config: str | os.PathLike[str], text_file: Path) -> Path:
    if isinstance(config, str):
        text_file.write_text(config)
        return text_file
    if isinstance(config, os.PathLike):
        return Path(config).resolve()
    raise TypeError(f"config={config!r}: expected TOML text (str) or a path (os.PathLike)")


def _wait_until_mounted(root: Path, daemon: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not is_mounted(root):
        if daemon.poll() is not None:
            raise MountError(f"apfs mount {root} failed (exit status {daemon.returncode}): "
                             f"{_tail(output)}")
        if time.monotonic() > deadline:
            raise MountError(f"apfs mount {root}: not mounted after {READY_TIMEOUT:g} s; "
                             f"the daemon said: {_tail(output)}")
        time.sleep(POLL_INTERVAL)


def _tail(output: Path, lines: int = 5) -> str:
    text = output.read_text(errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:]) or "(nothing)"


def _stop(root: Path, daemon: subprocess.Popen[bytes]) -> None:
    # Unmounting ends the daemon's FUSE session, so it exits by itself.  A busy mount is only
    # detached (still referenced, still served): stop its daemon.  A stopped daemon never
    # exits by itself: kill it.
    try:
        if unmount(root) and daemon.poll() is None:
            daemon.terminate()
    finally:
        try:
            daemon.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    # A daemon killed before its unmount leaves a dead mount behind.
    unmount(root)


def _remove_unless_mounted(base: Path) -> None:
    # After a failed unmount, rmtree would walk into the mount (and hang on a stopped one).
    if not any(is_mounted(path) for path in base.iterdir()):
        shutil.rmtree(base)


def _fusermount(*args: str | Path) -> int:
    return subprocess.run(["fusermount3", *map(str, args)], capture_output=True,
                          timeout=COMMAND_TIMEOUT).returncode
