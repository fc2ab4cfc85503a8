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
from pathlib import Path

from apfs.fuseloop import DEFAULT_SPIN_US
from vdev.ap.host import DEFAULT_HOST_TOML

READY_TIMEOUT = 30.0

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
SIGINT or SIGTERM to the daemon unmounts cleanly.
"""


def _daemon_command(args: argparse.Namespace, mountpoint: Path) -> list[str]:
    command = [sys.executable, "-m", "apfs.daemon"]
    if args.config:
        command += ["--config", str(Path(args.config).resolve())]
    if args.debug:
        command.append("--debug")
    if args.log:
        command += ["--log", str(Path(args.log).resolve())]
    if args.spin_us != DEFAULT_SPIN_US:
        command += ["--spin-us", str(args.spin_us)]
    if args.exit_with is not None:
        command += ["--exit-with", str(args.exit_with)]
    if args.state:
        command += ["--state", str(Path(args.state).resolve())]
    return command


def _check_mountpoint(mountpoint: Path) -> str | None:
    if not mountpoint.is_dir():
        return f"{mountpoint}: not a directory (create it first: mkdir -p {mountpoint})"
    if os.path.ismount(mountpoint) or _is_dead_mount(mountpoint):
        return f"{mountpoint}: already a mount point (apfs umount {mountpoint} first)"
    return None


def _is_dead_mount(mountpoint: Path) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno == 107  # ENOTCONN: a FUSE mount whose daemon died
    return False


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    problem = _check_mountpoint(mountpoint)
    if problem:
        print(f"apfs mount: {problem}", file=sys.stderr)
        return 1
    if args.config and not Path(args.config).is_file():
        print(f"apfs mount: {args.config}: no such configuration file", file=sys.stderr)
        return 1
    command = _daemon_command(args, mountpoint)
    if args.foreground:
        from apfs.daemon import main as daemon_main

        return daemon_main([*command[3:], str(mountpoint)])
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [*command, "--ready-fd", str(write_end), str(mountpoint)],
        pass_fds=(write_end,), stdin=subprocess.DEVNULL, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=None if args.debug else subprocess.DEVNULL,
    )
    os.close(write_end)
    answer = _read_answer(read_end)
    if answer == "ready":
        return 0
    if child.poll() is None:
        child.terminate()
    print(f"apfs mount: {answer or 'the daemon exited before the mount was ready'}",
          file=sys.stderr)
    return 1


def _read_answer(fd: int) -> str:
    """The daemon's first line: ``ready`` or ``error: ...``; empty if it died first."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    try:
        while b"\n" not in data:
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
    mountpoint = Path(args.mountpoint).absolute()
    if not (os.path.ismount(mountpoint) or _is_dead_mount(mountpoint)):
        print(f"apfs umount: {mountpoint}: not mounted", file=sys.stderr)
        return 1
    result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        # A daemon killed with SIGKILL leaves "Transport endpoint is not connected": only a
        # lazy unmount clears that; a busy mount is detached the same way.
        lazy = subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)],
                              capture_output=True, text=True)
        if lazy.returncode != 0:
            print(f"apfs umount: {mountpoint}: {result.stderr.strip() or lazy.stderr.strip()}",
                  file=sys.stderr)
            return 1
    _wait_for_daemon_exit(mountpoint)
    return 0


def _wait_for_daemon_exit(mountpoint: Path, timeout: float = 5.0) -> None:
    """fusermount3 -u ends the FUSE session; give the daemon a moment to finish its exit."""
    deadline = time.monotonic() + timeout
    marker = str(mountpoint).encode()
    while time.monotonic() < deadline:
        if not any(_is_daemon_of(pid, marker) for pid in _pids()):
            return
        time.sleep(0.02)


def _pids() -> list[str]:
    return [name for name in os.listdir("/proc") if name.isdigit()]


def _is_daemon_of(pid: str, mountpoint: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"apfs.daemon" in argv and mountpoint in argv


def cmd_default_config(args: argparse.Namespace) -> int:
    sys.stdout.write(DEFAULT_HOST_TOML)
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apfs", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount a host's sysfs tree on MOUNTPOINT",
                                epilog=MOUNT_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mount.add_argument("--config", metavar="FILE",
                       help="host description (TOML); default: the embedded seed host")
    mount.add_argument("--foreground", "-f", action="store_true",
                       help="stay in the foreground (Ctrl-C unmounts)")
    mount.add_argument("--debug", action="store_true", help="log every request")
    mount.add_argument("--log", metavar="FILE",
                       help="append the daemon's log to FILE (also readable at apfs/log)")
    mount.add_argument("--spin-us", type=_non_negative, default=DEFAULT_SPIN_US, metavar="N",
                       help="after each request, poll for the next one for N microseconds "
                            "before sleeping: a little CPU for ~2x faster sequential cat/echo "
                            f"(default {DEFAULT_SPIN_US}; 0 never spins)")
    mount.add_argument("--exit-with", type=int, metavar="PID",
                       help="unmount and exit when process PID exits (a test run that owns "
                            "the mount; see apfs.testing)")
    mount.add_argument("--state", metavar="DIR",
                       help="keep the device state in DIR (created if missing): every "
                            "accepted write is saved before it returns, and a later mount "
                            "with the same DIR and host configuration starts from it; one "
                            "mount per DIR at a time (default: none, volatile like sysfs)")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    mount.set_defaults(func=cmd_mount)

    umount = commands.add_parser(
        "umount", help="unmount and stop the daemon (also clears a mount whose daemon died)")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.set_defaults(func=cmd_umount)

    default = commands.add_parser("default-config",
                                  help="print the embedded default host as TOML")
    default.set_defaults(func=cmd_default_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
