"""``apfs run``: an unmodified program with an apfs tree over ``/sys``, in a private mount
namespace of its own.

Theory of operation.  ``apfs run`` stays in the caller's mount namespace: it mounts a fresh
apfs instance on a temporary directory there (``apfs mount``, so every option and check of
``apfs mount`` applies) unless ``--mount`` names a running one.  Only the command's process
leaves: between fork and exec it unshares its mount namespace, makes every mount in it
private (so nothing it mounts can propagate back to the host, even from a shared ``/``),
binds the tree's ``sys/`` over ``/sys`` and, unless asked not to, a private tmpfs over
``/etc/mdevctl.d`` so that programs persisting mediated-device definitions (mdevctl) write
there and not onto the host.  The namespace dies with the last process in it; the host's
``/sys`` and ``/etc`` are never touched.  Afterwards the fresh mount is unmounted, whatever
happened.

Exit status and signals pass through: the command's exit status is ``apfs run``'s; a command
killed by a signal makes ``apfs run`` die of the same signal (after the unmount), so the
caller's shell sees what it would have seen without ``apfs run``.  Signals sent to
``apfs run`` are forwarded to the command, except those the terminal generated (Ctrl-C,
Ctrl-\\): those already reached the command, which shares the foreground process group.
Like env(1) and timeout(1), a failure of ``apfs run`` itself exits 125, a command that cannot
be executed 126 and one that is not found 127.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from types import FrameType

from apfs import mountinfo, mountns
from apfs.unmount import UnmountError, unmount

EXIT_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

MDEVCTL_ETC = "/etc/mdevctl.d"
MDEVCTL_SKELETON = ("scripts.d/callouts", "scripts.d/notifiers")
"""What mdevctl's start-up check requires in ``/etc/mdevctl.d`` (its package ships them
empty): the private one has them, and no definition."""

FORWARDED = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
                       signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH})
"""What ``apfs run`` passes on to the command, as sudo(8) does."""
INTERRUPTING = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
"""Signals that stop ``apfs run`` while it mounts, before the command runs (after cleanup)."""
SI_KERNEL = 0x80
"""``si_code`` of a signal the kernel sent, e.g. the terminal's to its foreground group."""

NOT_PRIVILEGED = (
    "a private mount namespace needs root (CAP_SYS_ADMIN), to bind the tree over /sys "
    "without touching the host's; run it as root, or point the program at a mount's sys/ "
    "directly where it allows that (s390-tools: SYSFS_ROOT=MOUNT/sys)")


class RunError(Exception):
    """Why ``apfs run`` could not run the command; ``status`` is its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class Interrupted(Exception):
    """A signal arrived before the command started: clean up, then die of it."""

    def __init__(self, signo: int) -> None:
        super().__init__(signal.Signals(signo).name)
        self.signo = signo


def run(command: list[str], *, mount: str | None, mount_args: list[str],
        host_etc: bool) -> int:
    """Run ``command`` over the tree of ``mount`` (a running apfs mount) or of a fresh mount
    made with ``mount_args`` (``apfs mount`` options); returns its exit status, or dies of
    the signal that killed it."""
    if not command:
        raise RunError("no command given: apfs run [OPTIONS] -- CMD [ARGS...]")
    if not mountns.has_sys_admin():
        raise RunError(NOT_PRIVILEGED)
    for signo in INTERRUPTING:
        # An ignored signal (nohup, a background job of a script) stays ignored, for the
        # command too: exec keeps SIG_IGN.
        if signal.getsignal(signo) != signal.SIG_IGN:
            signal.signal(signo, _interrupt)
    try:
        if mount is not None:
            returncode = _run_in_namespace(command, f"{_running(mount)}/sys", host_etc)
        else:
            with _fresh_mount(mount_args) as root:
                returncode = _run_in_namespace(command, f"{root}/sys", host_etc)
    except Interrupted as exc:
        returncode = -exc.signo
    if returncode < 0:
        _die_of(-returncode)
    return returncode


def _interrupt(signo: int, _: FrameType | None) -> None:
    raise Interrupted(signo)


def _running(path: str) -> str:
    """The canonical mount point of the running apfs mount at ``path``."""
    try:
        mountpoint = mountinfo.canonical(path)
    except OSError as exc:
        raise RunError(f"--mount {path}: {exc.strerror}") from None
    entry = mountinfo.mount_at(mountpoint)
    if entry is None or not entry.is_apfs:
        what = "nothing is mounted there" if entry is None else entry.describe()
        raise RunError(f"--mount {mountpoint}: not an apfs mount ({what}); start one with "
                       f"apfs mount {mountpoint}, or leave --mount out for a fresh one")
    return mountpoint


@contextlib.contextmanager
def _fresh_mount(mount_args: list[str]) -> Iterator[str]:
    """A new apfs mount on a temporary directory, unmounted and removed afterwards."""
    root = tempfile.mkdtemp(prefix="apfs-run-")
    try:
        # `apfs mount` itself, so its checks and its messages (on our stderr) are the same.
        done = subprocess.run([sys.executable, "-m", "apfs.cli", "mount", *mount_args, root],
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RunError(f"could not mount a fresh tree on {root} (apfs mount said why)")
        yield root
    finally:
        # A second Ctrl-C must not cut the cleanup short: signals wait until it is done.
        signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTING)
        _unmount_fresh(root)


def _unmount_fresh(root: str) -> None:
    entry = mountinfo.mount_at(root)
    if entry is not None and entry.is_apfs:
        try:
            # Lazily: a process the command left behind in its namespace holds only that
            # namespace's copy, but a host process could still sit in the directory.
            unmount(entry, lazy=True)
        except UnmountError as exc:
            print(f"apfs run: {exc}", file=sys.stderr)
            return
    with contextlib.suppress(OSError):
        os.rmdir(root)


def _run_in_namespace(command: list[str], sys_source: str, host_etc: bool) -> int:
    """Start ``command`` in a private mount namespace with ``sys_source`` over /sys; wait for
    it, forwarding signals; its returncode (negative: killed by that signal)."""
    waited = FORWARDED | {signal.SIGCHLD}
    # Blocked from before the fork: a signal can neither be lost nor interrupt the wait.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    report_read, report_write = os.pipe2(os.O_CLOEXEC)

    def enter_namespace() -> None:
        """In the child, between fork and exec: a failure is reported through the pipe."""
        try:
            mountns.unshare_mounts()
            mountns.make_private("/")
            mountns.bind(sys_source, "/sys")
            if not host_etc and os.path.isdir(MDEVCTL_ETC):
                mountns.mount_tmpfs(MDEVCTL_ETC, "mode=0755")
                for sub in MDEVCTL_SKELETON:
                    os.makedirs(os.path.join(MDEVCTL_ETC, sub))
        except OSError as exc:
            os.write(report_write, (exc.strerror or str(exc)).encode())
            raise
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)

    try:
        child = subprocess.Popen(command, preexec_fn=enter_namespace)
    except subprocess.SubprocessError:
        reason = _report(report_read)
        raise RunError(f"cannot enter a private mount namespace: {reason}") from None
    except OSError as exc:
        status = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_CANNOT_EXECUTE
        raise RunError(f"{command[0]}: {exc.strerror}", status) from None
    finally:
        os.close(report_write)
        os.close(report_read)
    return _wait(child, waited)


def _report(fd: int) -> str:
    """What the child wrote before it failed (it has exited: Popen waited for it)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096).decode(errors="replace")
    except BlockingIOError:
        return "unknown error"


def _wait(child: subprocess.Popen[bytes], waited: frozenset[int]) -> int:
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            if child.poll() is not None:
                return child.returncode
        elif info.si_code != SI_KERNEL:
            child.send_signal(info.si_signo)


def _die_of(signo: int) -> None:
    """End this process by ``signo``, as the command ended; no core file of Python's own."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signo, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signo})
    os.kill(os.getpid(), signo)
    # Only reached for a signal whose default action is not to terminate.
    raise SystemExit(128 + signo)
