"""``apfs``: mount and unmount sysfs-compatible device trees.

The CLI only starts and stops daemons; everything a mount does is in :mod:`apfs.daemon`.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time

from apfs import mountinfo, preflight, run, sevowner
from apfs.host import DEFAULT_CONFIG_TOML
from apfs.options import add_mount_options, daemon_argv, daemon_command
from apfs.unmount import UnmountError, unmount

READY_TIMEOUT = 30.0
CHILD_STOP_TIMEOUT = 2.0

LAYOUT = """\
Layout of a mount:  sys/   the sysfs tree (point SYSFS_ROOT=<mount>/sys at it)
                    apfs/  apfs's own files: log, guests/ (start a guest on an mdev)
"""

DESCRIPTION = """\
apfs mounts a FUSE filesystem that looks and behaves like the Linux sysfs trees of s390 AP
crypto passthrough (/sys/bus/ap, /sys/devices/ap_matrix), with live device emulators behind
every file.  Administrators' echo/cat workflows, scripts and tools run against it unchanged.

  apfs mount /mnt/ap                  # the embedded default host, as in the AP matrix docs
  cd /mnt/ap/sys/bus/ap/drivers/cex4queue && echo 05.0004 > unbind
  cat /mnt/ap/apfs/log                # why a write was refused (kernel-style lines)
  apfs umount /mnt/ap

""" + LAYOUT

MOUNT_EPILOG = LAYOUT + """
The embedded default host has adapters 0x05 (CEX5C) and 0x06 (CEX5A), usage domains 0x04,
0x47, 0xab and 0xff, every queue bound to cex4queue.  `apfs default-config` prints it as
TOML: copy it, edit cards/domains/bindings, and pass it with --config.

With --state DIR the state survives unmounts and crashes (DIR/state, replaced atomically);
a damaged state file, or one saved for another host configuration, is refused with its path.
`echo 1 > MOUNTPOINT/apfs/reset` returns to the configured initial state without remounting.

Without --foreground the daemon detaches and this command returns once the mount is ready.
SIGINT, SIGTERM or SIGHUP to the daemon unmounts and stops it (exit status 0).
"""

UMOUNT_EPILOG = """\
Only apfs mounts are unmounted: anything else at MOUNTPOINT (another filesystem, a bind
mount, a plain directory) is refused and left untouched.  A mount whose daemon died
(Transport endpoint is not connected) is cleared.  A daemon that does not exit once its
mount is gone (stopped with SIGSTOP, stuck) gets SIGTERM, then SIGKILL: this command
returns within 10 s.  A busy mount (a file open or a working directory in it) is refused
unless --lazy.
"""


RUN_EPILOG = """\
The program runs in a mount namespace of its own where the tree's sys/ is bind-mounted over
/sys: tools that hard-code /sys (mdevctl, lszcrypt, udevadm, static binaries) see the
emulated devices, while the host's /sys stays as it was.  /etc/mdevctl.d is a private, empty
tmpfs there (with the scripts.d/callouts and scripts.d/notifiers directories mdevctl
requires), so definitions the program persists never reach the host: --host-etc keeps the
host's instead.

Without --mount, a fresh tree is mounted (with the mount options given) on a temporary
directory and unmounted afterwards, whatever happens; with --mount MOUNTPOINT the running
apfs mount there is used and left mounted.

The program's exit status is this command's; a program killed by a signal makes apfs run die
of the same signal.  Signals sent to apfs run (SIGTERM, SIGINT, SIGHUP, SIGUSR1, ...) are
passed on to the program.  apfs run's own failures exit 125, a program that cannot be
executed 126, one that is not found 127 (as env(1)).  Needs root (CAP_SYS_ADMIN).

  apfs run -- mdevctl types
  apfs run --config host.toml -- sh -c 'echo 05.0004 > /sys/bus/ap/drivers/cex4queue/unbind'
  apfs mount /mnt/ap; apfs run --mount /mnt/ap -- mdevctl list; apfs umount /mnt/ap
"""


class CommandError(Exception):
    """A refusal: printed as ``apfs COMMAND: MESSAGE``, exit status 1."""


def _canonical(path: str) -> str:
    try:
        return mountinfo.canonical(path)
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from None


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = _canonical(args.mountpoint)
    problem = preflight.mount_problem(args, mountpoint)
    if problem:
        raise CommandError(problem)
    argv = [*daemon_argv(args), mountpoint]
    if args.foreground:
        from apfs import daemon

        return daemon.main(argv)
    read_end, write_end = os.pipe()
    # --debug without --log traces to our stderr; with --log the daemon keeps no tie to the
    # caller, so `apfs mount --debug --log F` can run under a pipe or a test's capture.
    trace_here = args.debug and not args.log
    child = subprocess.Popen(
        [*daemon_command(), "--ready-fd", str(write_end), *argv],
        pass_fds=(write_end,), stdin=subprocess.DEVNULL, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=None if trace_here else subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        answer = _read_answer(read_end)
    except KeyboardInterrupt:
        answer = "error: interrupted"
    *notes, answer = answer.splitlines() or [""]
    if answer == "ready":
        for note in notes:
            print(note)
        return 0
    _stop_child(child)
    raise CommandError(answer.removeprefix("error: ")
                       or "the daemon exited before the mount was ready")


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """Stop a daemon that did not get ready.  It acts on SIGTERM once its set-up is done (it
    then unmounts); one stuck in its set-up is killed."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=CHILD_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()


def _read_answer(fd: int) -> str:
    """The daemon's lines up to ``ready`` or ``error: ...`` (notes to print come before
    ``ready``); empty if it died first."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    try:
        while not data.endswith(b"\n") or not data.splitlines()[-1].startswith(
                (b"ready", b"error:")):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return f"the daemon did not report ready within {READY_TIMEOUT:g} s"
            chunk = os.read(fd, 256)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = _canonical(args.mountpoint)
    entry = mountinfo.mount_at(mountpoint)
    if entry is None:
        raise CommandError(f"{mountpoint}: not mounted (no mount point there in "
                           f"{mountinfo.MOUNTINFO})")
    if not entry.is_apfs:
        raise CommandError(f"{mountpoint}: not an apfs mount ({entry.describe()}); left "
                           f"untouched (use umount(8) for other filesystems)")
    try:
        note = unmount(entry, lazy=args.lazy)
    except UnmountError as exc:
        raise CommandError(str(exc)) from None
    if note:
        print(f"apfs umount: {note}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    mount_args = daemon_argv(args)
    try:
        if args.mount is not None and mount_args:
            raise run.RunError(f"--mount uses a running mount: {' '.join(mount_args)} only "
                               f"apply to a fresh one")
        return run.run(command, mount=args.mount, mount_args=mount_args,
                       host_etc=args.host_etc)
    except run.RunError as exc:
        print(f"apfs run: {exc}", file=sys.stderr)
        return exc.status


def cmd_default_config(args: argparse.Namespace) -> int:
    sys.stdout.write(DEFAULT_CONFIG_TOML)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apfs", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount a host's sysfs tree on MOUNTPOINT",
                                epilog=MOUNT_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mount_options(mount)
    mount.add_argument("mountpoint", metavar="MOUNTPOINT",
                       help="an existing empty directory (see --nonempty)")
    mount.set_defaults(func=cmd_mount)

    umount = commands.add_parser(
        "umount", help="unmount and stop the daemon (also clears a mount whose daemon died)",
        epilog=UMOUNT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    umount.add_argument("--lazy", "-l", action="store_true",
                        help="detach a busy mount now (as umount -l); the daemon exits when "
                             "the last file open there is closed")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", help="where an apfs mount is")
    umount.set_defaults(func=cmd_umount)

    runner = commands.add_parser(
        "run", help="run a program with a tree over /sys, in a private mount namespace",
        usage="apfs run [MOUNT OPTIONS | --mount MOUNTPOINT] [--host-etc] -- CMD [ARGS...]",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mount_options(runner, daemon=True)
    runner.add_argument("--mount", metavar="MOUNTPOINT",
                        help="use the running apfs mount there (left mounted) instead of a "
                             "fresh one")
    runner.add_argument("--host-etc", action="store_true",
                        help="keep the host's /etc/mdevctl.d (default: a private, empty one)")
    runner.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                        help="the program and its arguments")
    runner.set_defaults(func=cmd_run)

    default = commands.add_parser("default-config",
                                  help="print the embedded default host as TOML")
    default.set_defaults(func=cmd_default_config)
    sevowner.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"apfs {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
