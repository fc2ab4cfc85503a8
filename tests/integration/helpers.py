"""Helpers shared by the integration tests: what an administrator would look at, as data.

A *snapshot* is the whole visible state of a tree as one ``{relative path: description}``
dict: every directory, every symlink with its text and every regular file with its mode and
content (or ``<EACCES>`` when even root may not read it, as for ``assign_adapter``).  Two
snapshots are equal exactly when nothing an administrator could ``ls``/``cat``/``readlink``
differs.  The same format is built from a mount (:func:`snapshot`) and from an in-process
:class:`~apfs.host.Host` (:func:`model_snapshot`), so a mount can be compared with a model.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from apfs.host import Host
from apfs.kernfs import resolve
from apfs.tree import Lookup
from vdev.errors import DeviceError

REPO = Path(__file__).resolve().parents[2]
SEED_WORKFLOW = REPO / "scripts" / "seed-workflow.sh"

MATRIX = "sys/devices/ap_matrix/matrix"
TYPE_DIR = f"{MATRIX}/mdev_supported_types/ap_matrix-passthrough"
LOG = "apfs/log"
STATEBLOB = "apfs/tpm/tpm0/stateblob"
"""Never the same twice: the TPM's clock runs inside its state blob."""
SEV_CHIP = tuple(f"apfs/sev/platform/{name}"
                 for name in ("pdh_cert", "cert_chain", "pek_csr", "get_id"))
"""Each mount's SEV chip is another (a random chip seed) unless --state keeps it: what these
show is checked by test_sev_nodes.py, not by snapshots."""
UNREADABLE = "<EACCES>"

UUID_RE = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")
APQN_RE = re.compile(r"^[0-9a-f]{2}\.[0-9a-f]{4}$")

# The seed's two guests (its lszcrypt tables), in the order lszcrypt prints them.
GUEST1_APQNS = ["05.0004", "05.00ab", "06.0004", "06.00ab"]
GUEST2_APQNS = ["05.0047", "05.00ff"]
SEED_QUEUES = ["05.0004", "05.00ab", "05.0047", "05.00ff", "06.0004", "06.00ab"]

Snapshot = dict[str, str]


# --- snapshots --------------------------------------------------------------------------


def _file_entry(mode: int, content: bytes | None) -> str:
    body = UNREADABLE if content is None else content.decode("latin-1")
    return f"file {mode & 0o7777:04o} {body}"


def snapshot(root: Path, exclude: Iterable[str] = (LOG, STATEBLOB, *SEV_CHIP)) -> Snapshot:
    """Everything visible under ``root`` (a mount), without following symlinks."""
    skip = set(exclude)
    out: Snapshot = {}
    for here, dirs, files in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(here, root)
        for name in sorted(dirs + files):
            path = os.path.join(here, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in skip:
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(path)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = _file_entry(st.st_mode, read_or_none(path))
    return out


def read_or_none(path: str | Path) -> bytes | None:
    """The file's content, or None when opening it for reading is refused with EACCES."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError:
        return None


def model_snapshot(host: Host, exclude: Iterable[str] = (LOG, STATEBLOB, *SEV_CHIP)) -> Snapshot:
    """The same view as :func:`snapshot`, read from an in-process host's tree."""
    skip = set(exclude)
    out: Snapshot = {}

    def walk(lookup: Lookup, prefix: str) -> None:
        for name, found in host.tree.listing(lookup.node):
            rel = f"{prefix}{name}"
            if rel in skip:
                continue
            if found.spec is not None:
                spec = found.spec
                content = spec.open(found.node.obj).read(0, 4096) if spec.readable() else None
                out[rel] = _file_entry(spec.mode, content)
            elif found.node.target is not None:
                out[rel] = f"link -> {found.node.target}"
            else:
                out[rel] = "dir"
                walk(found, f"{rel}/")

    root = host.tree.root
    walk(Lookup(root.ino, root, None, True), "")
    return out


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    lines = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old != new:
            lines.append(f"{path}: {old!r} -> {new!r}")
    return lines


def assert_unchanged(before: Snapshot, after: Snapshot, what: str = "") -> None:
    diff = differences(before, after)
    assert not diff, f"state changed{' by ' + what if what else ''}:\n" + "\n".join(diff)


def writable_files(root: Path, exclude: Iterable[str] = ()) -> list[str]:
    """Every regular file under ``root`` whose mode has a write bit, relative to ``root``."""
    skip = set(exclude)
    found = []
    for here, dirs, files in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(here, root)
        for name in files + dirs:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(os.path.join(here, name))
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o222 and rel not in skip:
                found.append(rel)
    return sorted(found)


def symlinks(root: Path) -> dict[str, str]:
    """``{relative path: link text}`` of every symlink under ``root`` (not followed)."""
    out = {}
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = os.path.join(here, name)
            if os.path.islink(path):
                out[os.path.relpath(path, root)] = os.readlink(path)
    return out


# --- in-process model -------------------------------------------------------------------


def apply_in_process(host: Host, relpath: str, data: bytes) -> int:
    """One ``write()`` to ``relpath`` of an in-process host, as the FUSE layer performs it."""
    obj, spec = resolve(host.root, host, tuple(relpath.split("/")))
    assert spec is not None, relpath
    written = spec.open(obj).write(0, data)
    host.tree.changed()
    return written


def write_once(path: Path, data: bytes) -> int:
    """One ``open(O_WRONLY)`` + one ``write()`` syscall; returns the count or raises OSError."""
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


# --- the seed ---------------------------------------------------------------------------


def lines(text: str) -> list[str]:
    return text.splitlines()


def mdevs(root: Path) -> list[str]:
    """The mediated devices listed in the type's ``devices/`` directory."""
    return sorted(n for n in os.listdir(root / TYPE_DIR / "devices") if UUID_RE.match(n))


def bound(root: Path, driver: str) -> list[str]:
    """The queue links in ``sys/bus/ap/drivers/<driver>/``."""
    names = os.listdir(root / "sys/bus/ap/drivers" / driver)
    return sorted(n for n in names if APQN_RE.match(n))


def seed_vars(stdout: str) -> dict[str, str]:
    """``uuid1=``/``uuid2=`` lines of scripts/seed-workflow.sh."""
    found = dict(line.split("=", 1) for line in stdout.splitlines()
                 if line.startswith(("uuid1=", "uuid2=")))
    assert set(found) == {"uuid1", "uuid2"}, stdout
    return found


def write_error(code: int) -> str:
    """What bash prints when a redirected ``echo``/``printf`` fails with ``code``."""
    return f"write error: {os.strerror(code)}"


# --- daemons ----------------------------------------------------------------------------


def daemon_pid(mountpoint: Path) -> int | None:
    """The pid of the ``apfs.daemon`` process serving ``mountpoint``, if any."""
    marker = str(mountpoint.resolve()).encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"apfs.daemon" in arg for arg in argv) and marker in argv:
            return int(name)
    return None


def in_proc_mounts(mountpoint: Path) -> bool:
    target = str(mountpoint.resolve())
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def stat_errno(path: Path) -> int | None:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno
    return None


# --- apfs run ---------------------------------------------------------------------------


APFS_RUN = [sys.executable, "-m", "apfs.cli", "run"]
"""``apfs run`` of the apfs under test, whoever runs it (also a user without the venv's
console script on PATH)."""


def apfs_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``apfs run ARGS`` (options, ``--``, the program), its output captured."""
    return subprocess.run([*APFS_RUN, *args], capture_output=True, text=True, timeout=60,
                          env=env)


def tree_listing(root: str | Path) -> dict[str, str]:
    """``{relative path: "dir" | file content | link text}`` of a small host directory."""
    out = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(here, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = f"-> {os.readlink(path)}"
            elif os.path.isdir(path):
                out[rel] = "dir"
            else:
                out[rel] = Path(path).read_text(errors="replace")
    return out


# --- fuzzing a mount against the model ---------------------------------------------------

Write = tuple[str, bytes]


class WriteRecorder:
    """One ``write()`` per call to a mount, keeping the accepted writes in order and a count
    per errno (0 = accepted).  EIO and ENOSYS would be internal errors: they fail at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.accepted: list[Write] = []
        self.outcomes: dict[int, int] = {}

    def write(self, relpath: str, data: bytes) -> None:
        try:
            write_once(self.root / relpath, data)
        except OSError as exc:
            assert exc.errno not in (errno.EIO, errno.ENOSYS), (relpath, data, exc)
            self.outcomes[exc.errno] = self.outcomes.get(exc.errno, 0) + 1
        else:
            self.accepted.append((relpath, data))
            self.outcomes[0] = self.outcomes.get(0, 0) + 1

    @property
    def refused(self) -> int:
        return sum(n for code, n in self.outcomes.items() if code)

    def assert_mount_is_the_model(self, host: Host, history: Path) -> None:
        """Replay the accepted writes into ``host`` (fresh, same configuration): the mount
        must show exactly its tree.  The writes are listed in ``history`` for a failure."""
        history.write_text("".join(f"{p} {d!r}\n" for p, d in self.accepted))
        for i, (relpath, data) in enumerate(self.accepted):
            try:
                apply_in_process(host, relpath, data)
            except (DeviceError, OSError) as exc:
                raise AssertionError(f"accepted write #{i} {relpath} {data!r} is refused by the "
                                     f"model replaying the accepted writes: {exc!r}") from None
        diff = differences(model_snapshot(host), snapshot(self.root))
        assert not diff, (f"mount differs from the model after {len(self.accepted)} accepted "
                          f"writes (listed in {history}):\n" + "\n".join(diff[:40]))
