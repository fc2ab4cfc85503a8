"""The options of ``apfs mount``, declared once for the CLI and for the daemon it starts.

``apfs mount`` parses them, checks what it can in the caller's terms, then starts
``python -m apfs.daemon`` with :func:`daemon_argv` (or runs the daemon in-process with
``--foreground``); the daemon parses the same declarations.  Adding an option is one entry in
:data:`MOUNT_OPTIONS` (``to_daemon=False`` for what only the CLI acts on) and its use in
:func:`apfs.daemon.serve`, which receives the parsed namespace.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apfs.fuseloop import DEFAULT_SPIN_US
from apfs.tpm.frontends import PROTOCOLS
from vdev.ap.host import FLAVORS


def flavor(text: str) -> str:
    if text not in FLAVORS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a flavor ({', '.join(FLAVORS)})")
    return text


def daemon_command() -> list[str]:
    """How to start the daemon: this interpreter, ``-P`` so that a checkout of apfs in the
    caller's working directory is never imported instead of the installed one."""
    return [sys.executable, "-P", "-m", "apfs.daemon"]


def tpm_protocol(text: str) -> str:
    if text not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TPM protocol "
                                         f"({', '.join(PROTOCOLS)})")
    return text


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65534:
        raise argparse.ArgumentTypeError(f"{text} is not a port for a pair (0..65534)")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


@dataclass(frozen=True)
class Option:
    """One ``--name`` of ``apfs mount``: a switch (``metavar`` None) or one value."""

    flags: tuple[str, ...]
    help: str
    metavar: str | None = None
    type: Callable[[str], Any] = str
    default: Any = None
    is_path: bool = False
    """A path relative to the caller's directory: the daemon gets it absolute."""
    to_daemon: bool = True
    """False for what only ``apfs mount`` acts on (its checks, staying in the foreground)."""

    @property
    def dest(self) -> str:
        return self.flags[0].removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.metavar is None:
            parser.add_argument(*self.flags, action="store_true", help=self.help)
        else:
            parser.add_argument(*self.flags, metavar=self.metavar, type=self.type,
                                default=self.default, help=self.help)

    def argv(self, value: Any) -> list[str]:
        """This option as the daemon's arguments; nothing when it has its default."""
        if value is None or value is False or (self.metavar and value == self.default):
            return []
        if self.metavar is None:
            return [self.flags[0]]
        return [self.flags[0], str(Path(value).absolute()) if self.is_path else str(value)]


MOUNT_OPTIONS: tuple[Option, ...] = (
    Option(("--config",), metavar="FILE", is_path=True,
           help="host description (TOML); default: the embedded seed host"),
    Option(("--flavor",), metavar="NAME", type=flavor,
           help="the AP passthrough interface: ap_matrix (the seed's 2017 RFC; the default) "
                "or vfio_ap (upstream Linux); replaces the config's host.flavor"),
    Option(("--foreground", "-f"), to_daemon=False,
           help="stay in the foreground; Ctrl-C (SIGINT), SIGTERM or SIGHUP unmounts"),
    Option(("--nonempty",), to_daemon=False,
           help="allow mounting over a non-empty directory (its files are hidden until "
                "the unmount)"),
    Option(("--debug",), help="log one line per FUSE request (to --log FILE, or to this "
                              "terminal's stderr, which then stays attached)"),
    Option(("--log",), metavar="FILE", is_path=True,
           help="append the daemon's log to FILE (also readable at apfs/log)"),
    Option(("--exit-with",), metavar="PID", type=int,
           help="unmount and exit when process PID exits (a test run that owns the mount; "
                "see apfs.testing)"),
    Option(("--spin-us",), metavar="N", type=non_negative, default=DEFAULT_SPIN_US,
           help="after each request, poll for the next one for N microseconds before "
                "sleeping: a little CPU for ~2x faster sequential cat/echo "
                f"(default {DEFAULT_SPIN_US}; 0 never spins)"),
    Option(("--state",), metavar="DIR", is_path=True,
           help="keep the device state in DIR (created if missing): every accepted write is "
                "saved before it returns, and a later mount with the same DIR and host "
                "configuration starts from it; one mount per DIR at a time (default: none, "
                "volatile like sysfs)"),
    Option(("--tpm-port",), metavar="PORT", type=port,
           help="serve the first vTPM on loopback TCP: PORT and PORT+1 (0: a free pair the "
                "system picks); apfs mount prints the TPM2TOOLS_TCTI string to use, e.g. "
                "swtpm:host=127.0.0.1,port=2321"),
    Option(("--tpm-protocol",), metavar="NAME", type=tpm_protocol, default="swtpm",
           help="the protocol of --tpm-port: swtpm (data port, control port PORT+1; "
                "tpm2-tools -T swtpm:..., QEMU over TCP) or mssim (Microsoft simulator: "
                "command port, platform port PORT+1; -T mssim:...); default swtpm"),
    Option(("--tpm-socket",), metavar="PATH", is_path=True,
           help="serve swtpm's control channel for the first vTPM on the UNIX socket PATH, "
                "for QEMU's -tpmdev emulator (CMD_SET_DATAFD passes the data channel); apfs "
                "mount prints the -chardev/-tpmdev/-device options; PATH is removed at "
                "unmount"),
)


def add_mount_options(parser: argparse.ArgumentParser, *, daemon: bool = False) -> None:
    """Declare the options on ``parser``; with ``daemon`` only those the daemon acts on."""
    for option in _selected(daemon):
        option.add_to(parser)


def daemon_argv(args: argparse.Namespace) -> list[str]:
    """The daemon's options (not the mount point) for what ``apfs mount`` parsed."""
    return [arg for option in _selected(daemon=True)
            for arg in option.argv(getattr(args, option.dest))]


def _selected(daemon: bool) -> Iterable[Option]:
    return (option for option in MOUNT_OPTIONS if option.to_daemon or not daemon)
