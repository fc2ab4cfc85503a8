"""The mount daemon: one host, one FUSE session, one trio nursery.

Front ends (today the FUSE loop; later TCP ports for vTPM clients) run as tasks of one
nursery, so SIGINT/SIGTERM cancel them all together and the mount is always unmounted on
the way out.  ``apfs mount`` starts this module as a child process and waits on a pipe for
the line ``ready`` (or ``error: ...``), so the CLI returns only once the mount works.
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

from apfs.fuseloop import DEFAULT_SPIN_US, install_single_worker_wait
from apfs.fuseops import SysfsOperations
from apfs.host import build_host
from apfs.kmsg import KernelLogHandler
from apfs.state import StateStore, config_fingerprint

log = logging.getLogger("apfs")

FUSE_OPTIONS = ("fsname=apfs", "subtype=apfs", "default_permissions")


def mount_options() -> set[str]:
    options = set(FUSE_OPTIONS)
    if os.geteuid() == 0:
        # sysfs is world-readable; without allow_other only the mounting user could look.
        options.add("allow_other")
    return options


async def _serve(mountpoint: str, ready_fd: int | None, owner_fd: int | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        if owner_fd is not None:
            nursery.start_soon(_stop_when_owner_exits, owner_fd, nursery.cancel_scope)
        log.info("apfs: mounted on %s", mountpoint)
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        # One worker: handlers never block, and writes are served strictly in order.
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        # main() returns when the kernel ends the session (fusermount3 -u from outside).
        log.info("apfs: %s was unmounted", mountpoint)
        nursery.cancel_scope.cancel()


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
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


def serve(mountpoint: str, config_path: str | None, debug: bool, log_file: str | None,
          ready_fd: int | None = None, spin_us: int = DEFAULT_SPIN_US,
          state_dir: str | None = None, exit_with: int | None = None) -> int:
    """Mount, serve until unmounted, signalled or ``exit_with`` exits, unmount.  Returns an
    exit status."""
    _setup_logging(debug, log_file)
    mounted = False
    owner_fd = None
    try:
        if exit_with is not None:
            owner_fd = _open_owner(exit_with)
        host = build_host(config_path)
        logging.getLogger("apfs").addHandler(KernelLogHandler(host.kmsg))
        if state_dir is not None:
            # Held open (with its lock) until the process exits.
            store = StateStore(Path(state_dir), config_fingerprint(host.bus.config))
            store.open()
            host.use_store(store)
        ops = SysfsOperations(host.tree, on_refusal=host.log_refusal,
                              on_write=host.commit if state_dir is not None else None)
        pyfuse3.init(ops, mountpoint, mount_options())
        mounted = True
        install_single_worker_wait(spin_us)
    except Exception as exc:
        if mounted:
            pyfuse3.close(unmount=True)
        log.error("apfs: cannot mount %s: %s", mountpoint, exc)
        if ready_fd is not None:
            os.write(ready_fd, f"error: {exc}\n".encode())
        return 1
    try:
        trio.run(_serve, mountpoint, ready_fd, owner_fd)
    finally:
        # Not os.path.ismount(): a stat of our own mount, which nobody serves any more, would
        # hang.  libfuse's unmount returns at once when the mount is already gone.
        pyfuse3.close(unmount=True)
        log.info("apfs: stopped")
    return 0


def _open_owner(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise ValueError(f"--exit-with {pid}: no such process") from None


def _setup_logging(debug: bool, log_file: str | None) -> None:
    handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the daemon process (``python -m apfs.daemon``); see ``apfs mount``."""
    parser = argparse.ArgumentParser(prog="apfs.daemon")
    parser.add_argument("--config")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--log")
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--spin-us", type=int, default=DEFAULT_SPIN_US)
    parser.add_argument("--exit-with", type=int)
    parser.add_argument("--state")
    parser.add_argument("mountpoint", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return serve(str(args.mountpoint.resolve()), args.config, args.debug, args.log,
                 args.ready_fd, args.spin_us, args.state, args.exit_with)


if __name__ == "__main__":
    sys.exit(main())
