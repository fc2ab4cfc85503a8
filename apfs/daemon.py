"""The mount daemon: one host, one FUSE session, one trio nursery.

The FUSE loop runs as a task of one nursery, so SIGINT/SIGTERM/SIGHUP cancel everything
together and the mount is always unmounted on the way out.  The vTPM's sockets
(:mod:`apfs.tpm.frontends`) are threads started before the mount and closed after it (their
socket files removed): measured faster than trio tasks, see :mod:`apfs.tpm.sockets`.

``apfs mount`` starts this module as a child process and waits on a pipe for the line
``ready`` (or ``error: ...``), so the CLI returns only once the mount works; lines before
``ready`` are what it prints (the TCTI string, QEMU's options).

The daemon never touches its own mount: once the request loop has stopped nobody would
answer, and a ``stat`` of the mount point would wait forever.  Whether the mount is still
there is read from /proc/self/mountinfo, by the device number the mount got.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import pyfuse3
import trio

from apfs import mountinfo, pidfile
from apfs.fuseloop import install_lean_wait
from apfs.fuseops import SysfsOperations
from apfs.host import Host, build_host
from apfs.kmsg import KernelLogHandler
from apfs.options import add_mount_options
from apfs.tpm import frontends
from apfs.tpm.frontends import FrontEndOptions, FrontEnds

log = logging.getLogger("apfs")

FUSE_OPTIONS = ("fsname=apfs", "subtype=apfs", "default_permissions")
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
"""Each unmounts and exits 0; they are blocked until the handler is in place, so a signal
that arrives while the mount is being set up is acted on as soon as it is ready."""


def mount_options() -> set[str]:
    options = set(FUSE_OPTIONS)
    if os.geteuid() == 0:
        # sysfs is world-readable; without allow_other only the mounting user could look.
        options.add("allow_other")
    return options


async def _serve(mountpoint: str, ready_fd: int | None, spin_us: int,
                 owner_fd: int | None, ops: SysfsOperations, notes: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_stop_on_signal, nursery.cancel_scope)
        if owner_fd is not None:
            nursery.start_soon(_stop_when_owner_exits, owner_fd, nursery.cancel_scope)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.info("apfs: mounted on %s", mountpoint)
        for note in notes:
            log.info("apfs: %s", note)
        # What apfs mount prints (the TCTI string, QEMU's options), then ready.
        text = "".join(f"{note}\n" for note in notes)
        if ready_fd is not None:
            os.write(ready_fd, f"{text}ready\n".encode())
            os.close(ready_fd)
        elif text:
            sys.stdout.write(text)
            sys.stdout.flush()
        loop_args, ops.hand_over = install_lean_wait(spin_us)
        await pyfuse3.main(**loop_args)
        # main() returns when the kernel ends the session (unmounted or aborted from outside).
        log.info("apfs: %s was unmounted", mountpoint)
        nursery.cancel_scope.cancel()


async def _stop_on_signal(scope: trio.CancelScope,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            log.info("apfs: %s received, unmounting", signal.Signals(signum).name)
            scope.cancel()
            return


async def _stop_when_owner_exits(owner_fd: int, scope: trio.CancelScope) -> None:
    """``--exit-with PID``: a test run that dies (os._exit, SIGKILL) cannot unmount; its
    daemon does it.  A pidfd becomes readable when its process exits."""
    await trio.lowlevel.wait_readable(owner_fd)
    log.info("apfs: owner process exited, unmounting")
    scope.cancel()


def serve(args: argparse.Namespace) -> int:
    """Mount, serve until unmounted or signalled, unmount.  Returns an exit status.

    ``args`` holds the options of :data:`apfs.options.MOUNT_OPTIONS` that reach the daemon,
    ``mountpoint`` (canonical) and ``ready_fd``.
    """
    mountpoint, ready_fd = args.mountpoint, args.ready_fd
    try:
        _setup_logging(args.debug, args.log)
    except OSError as exc:
        return _fail(ready_fd, f"--log {args.log}: cannot open it: {exc.strerror}")
    mounted = False
    owner_fd = None
    host = None
    front_ends = None
    try:
        owner_fd = None if args.exit_with is None else _open_owner(args.exit_with)
        # The state directory stays open (with its lock) until the process exits.
        host = build_host(args.config, args.flavor,
                          None if args.state is None else Path(args.state))
        logging.getLogger("apfs").addHandler(KernelLogHandler(host.kmsg))
        front_ends = _start_front_ends(host, args)
        ops = SysfsOperations(host.tree, on_refusal=host.log_refusal,
                              on_write=host.commit if args.state is not None else None)
        pyfuse3.init(ops, mountpoint, mount_options())
        mounted = True
        device = _device_of(mountpoint)
        pid_path = pidfile.claim(device)
    except Exception as exc:
        if mounted:
            pyfuse3.close(unmount=True)
        if front_ends is not None:
            front_ends.close()
        if host is not None:
            host.close()
        return _fail(ready_fd, f"cannot mount {mountpoint}: {exc}")
    try:
        trio.run(_serve, mountpoint, ready_fd, args.spin_us, owner_fd, ops,
                 front_ends.lines if front_ends else [])
    finally:
        # A second Ctrl-C must not interrupt the teardown half-way.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        # Still ours after a signal or a crash; gone when the kernel ended the session.
        # pyfuse3 unmounts by closing /dev/fuse first, then detaching: nothing can block.
        pyfuse3.close(unmount=_still_mounted(mountpoint, device))
        pidfile.release(pid_path)
        if front_ends is not None:
            front_ends.close()  # sockets closed, socket files removed
        host.close()  # the vTPMs: powered off, worker processes ended
        log.info("apfs: stopped")
    return 0


def _start_front_ends(host: Host, args: argparse.Namespace) -> FrontEnds | None:
    """The vTPM's sockets of ``--tpm-port``/``--tpm-socket`` (none without them)."""
    options = FrontEndOptions(args.tpm_port, args.tpm_protocol,
                              None if args.tpm_socket is None else Path(args.tpm_socket))
    if not options.wanted:
        return None
    if not host.tpms:
        raise ValueError("--tpm-port/--tpm-socket: the host has no vTPM (add a [[tpm]] "
                         "table to its configuration)")
    return frontends.start(next(iter(host.tpms.values())), options)


def _open_owner(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise ValueError(f"--exit-with {pid}: no such process") from None


def _device_of(mountpoint: str) -> str:
    entry = mountinfo.mount_at(mountpoint)
    if entry is None or not entry.is_apfs:
        raise RuntimeError(f"{mountpoint}: the new mount is missing from {mountinfo.MOUNTINFO}")
    return entry.device


def _still_mounted(mountpoint: str, device: str) -> bool:
    entry = mountinfo.mount_at(mountpoint)
    return entry is not None and entry.device == device


def _fail(ready_fd: int | None, message: str) -> int:
    """Report a failure to set up: in the log, and to ``apfs mount`` on the ready pipe."""
    log.error("apfs: %s", message)
    if ready_fd is not None:
        os.write(ready_fd, f"error: {message}\n".encode())
    return 1


def _setup_logging(debug: bool, log_file: str | None) -> None:
    handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def parser() -> argparse.ArgumentParser:
    daemon = argparse.ArgumentParser(prog="apfs.daemon",
                                     description="The apfs mount daemon; see apfs mount --help.")
    add_mount_options(daemon, daemon=True)
    daemon.add_argument("--ready-fd", type=int,
                        help="write 'ready' or 'error: REASON' on this descriptor, then close it")
    daemon.add_argument("mountpoint", type=mountinfo.canonical)
    return daemon


def main(argv: list[str] | None = None) -> int:
    """Entry point of the daemon process (``python -m apfs.daemon``); see ``apfs mount``."""
    args = parser().parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
