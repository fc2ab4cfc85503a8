"""Real swtpm (Debian's ``swtpm`` 0.7.1) as a reference TPM for tests, and raw clients of
the swtpm protocol that speak to it and to apfs alike.

- :func:`swtpm_tcp`: ``swtpm socket`` with a TCP data port and control port (data + 1) on
  free loopback ports, state in a tmp dir; always killed.  ``started`` selects
  ``--flags not-need-init,startup-clear`` (ready for tpm2-tools) or ``not-need-init`` alone
  (powered, waiting for TPM2_Startup, for the differential test's "before Startup" rows).
- :func:`swtpm_unix`: ``swtpm socket`` with only a UNIX control socket, as QEMU's
  ``-tpmdev emulator`` needs it.
- :func:`tcp_transmit`: one raw command over a swtpm data port (a connection per command,
  as tpm2-tss's swtpm TCTI does).
- :func:`ctrl_tcp` / :func:`get_stateblob_tcp`: a control request on a TCP control port.
- :func:`ctrl_request` / :func:`transmit_via_datafd`: the control channel on a UNIX socket,
  ``CMD_SET_DATAFD`` with a socketpair end passed by SCM_RIGHTS, then commands on the pair.
"""

from __future__ import annotations

import array
import contextlib
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vdev.tpm.swtpm import CMD_INIT, CMD_SET_DATAFD

HEADER_SIZE = 10
START_TIMEOUT = 10.0
IO_TIMEOUT = 30.0
"""Seconds a reply may take (an RSA primary on a loaded 2-CPU machine)."""



def swtpm_available() -> str | None:
    """Why the swtpm-based tests cannot run here, or None."""
    if shutil.which("swtpm") is None:
        return "swtpm is not installed (scripts/setup.sh installs it)"
    return None


@dataclass(frozen=True)
class SwtpmTcp:
    """A running swtpm with TCP data port ``port`` and control port ``port + 1``."""

    port: int
    process: subprocess.Popen[bytes]
    state_dir: Path

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def transmit(self, command: bytes) -> bytes:
        return tcp_transmit(self.port, command)


def free_port_pair() -> int:
    """A port P with P and P + 1 free on 127.0.0.1 now (swtpm binds both; a race with
    another process is caught by the caller's retry)."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@contextlib.contextmanager
def swtpm_tcp(state_dir: Path, *, started: bool = True) -> Iterator[SwtpmTcp]:
    """Run swtpm on free loopback ports with its state in ``state_dir``; kill it at exit."""
    state_dir.mkdir(parents=True, exist_ok=True)
    flags = "not-need-init,startup-clear" if started else "not-need-init"
    for _attempt in range(5):
        port = free_port_pair()
        process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
             "--tpmstate", f"dir={state_dir}", "--flags", flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            if _wait_for_port(port, process):
                yield SwtpmTcp(port, process, state_dir)
                return
        finally:
            _stop(process)
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    raise RuntimeError(f"swtpm did not start on a free port pair in 5 attempts: {error}")


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Whether swtpm accepts connections on ``port`` (False if it exited: port taken)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"swtpm did not listen on 127.0.0.1:{port} within {START_TIMEOUT} s")


@dataclass(frozen=True)
class SwtpmUnix:
    """A running swtpm whose only channel is the UNIX control socket ``ctrl``."""

    ctrl: Path
    process: subprocess.Popen[bytes]
    state_dir: Path


@contextlib.contextmanager
def swtpm_unix(state_dir: Path, ctrl: Path) -> Iterator[SwtpmUnix]:
    """``swtpm socket --tpm2 --ctrl type=unixio,path=CTRL --tpmstate dir=…``, as for QEMU
    (which sends CMD_INIT itself); killed at exit."""
    state_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--ctrl", f"type=unixio,path={ctrl}",
         "--tpmstate", f"dir={state_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ctrl.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"swtpm did not create its control socket {ctrl}")
            time.sleep(0.02)
        yield SwtpmUnix(ctrl, process, state_dir)
    finally:
        _stop(process)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a stream socket; ConnectionError if the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def recv_response(sock: socket.socket) -> bytes:
    """One TPM response: the 10-byte header, then the rest its size field announces."""
    header = recv_exactly(sock, HEADER_SIZE)
    (size,) = struct.unpack_from(">I", header, 2)
    return header + recv_exactly(sock, max(size - HEADER_SIZE, 0))


def tcp_transmit(port: int, command: bytes) -> bytes:
    """One raw command to a swtpm-protocol data port on 127.0.0.1 (a connection per
    command; the server must answer even a malformed command of ≥ 10 bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(command)
        return recv_response(sock)


def ctrl_tcp(ctrl_port: int, request: bytes, reply_size: int = 4) -> bytes:
    """One control request (command and payload) on a TCP control port (a connection per
    request); ``reply_size`` bytes of reply."""
    with socket.create_connection(("127.0.0.1", ctrl_port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(request)
        return recv_exactly(sock, reply_size)


def ctrl_init_tcp(ctrl_port: int) -> None:
    """``CMD_INIT`` (flags 0) on a TCP control port: the TPM is re-initialised, powered and
    waiting for TPM2_Startup, as swtpm started with ``--flags not-need-init`` alone."""
    (result,) = struct.unpack(">I", ctrl_tcp(ctrl_port, struct.pack(">II", CMD_INIT, 0)))
    if result != 0:
        raise RuntimeError(f"CMD_INIT on port {ctrl_port} answered result {result:#x}")


def get_stateblob_tcp(ctrl_port: int, request: bytes) -> bytes:
    """A CMD_GET_STATEBLOB ``request``'s whole reply: the 16-byte ``ptm_getstate`` response
    (result, flags, totlength, length), then the ``length`` bytes of data it announces."""
    with socket.create_connection(("127.0.0.1", ctrl_port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(request)
        header = recv_exactly(sock, 16)
        (length,) = struct.unpack_from(">I", header, 12)
        return header + recv_exactly(sock, length)


def ctrl_request(ctrl: Path, cmd: int, payload: bytes = b"", reply_size: int = 4,
                 fd: int | None = None) -> bytes:
    """One control command on a UNIX control socket (``fd`` passed with SCM_RIGHTS);
    ``reply_size`` bytes of reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(str(ctrl))
        request = struct.pack(">I", cmd) + payload
        if fd is None:
            sock.sendall(request)
        else:
            sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", [fd]))])
        return recv_exactly(sock, reply_size)


@contextlib.contextmanager
def datafd_channel(ctrl: Path) -> Iterator[socket.socket]:
    """A data channel set up as QEMU does: a socketpair, one end passed by
    ``CMD_SET_DATAFD``; yields our end, on which TPM commands then travel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        try:
            reply = ctrl_request(ctrl, CMD_SET_DATAFD, fd=theirs.fileno())
        finally:
            theirs.close()
        (result,) = struct.unpack(">I", reply)
        if result != 0:
            raise RuntimeError(f"CMD_SET_DATAFD on {ctrl} answered result {result:#x}")
        ours.settimeout(IO_TIMEOUT)
        yield ours


def transmit_on(sock: socket.socket, command: bytes) -> bytes:
    sock.sendall(command)
    return recv_response(sock)
