"""Crash consistency of ``--state`` for a vTPM: SIGKILL the daemon during a stream of NV
writes, again and again.

Each cycle starts the daemon (:mod:`killable`) on the same state directory, reads the NV
index, then writes increasing counters to it with raw NV_Write commands while a timer
SIGKILLs the daemon at a random moment: through ``MOUNT/dev/tpm0`` (a FUSE write, the
command in a worker thread) and through the swtpm data port (the command run by the C loop
of ``apfs/tpm/_pump.c``, which hands a command that stored the permanent state to Python to
save before the response leaves).  A write is acknowledged when its whole response,
TPM_RC_SUCCESS, came back.  The restarted daemon
must show the last acknowledged counter or the one write in flight, never less, never
anything else (a torn state would fail the mount or the read).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import apfs
from killable import DEAD, clear_dead_mount, end_daemon, start_daemon
from reference_swtpm import free_port_pair, recv_response

from vdev.tpm import commands as cmd
from vdev.tpm.libtpms import libtpms

CYCLES = int(os.environ.get("APFS_TPM_CRASH_CYCLES", "50"))
KILL_WITHIN = 0.15
"""The kill lands uniformly within this many seconds of the first write: dozens of NV
writes, each mostly the state file's fsync()s, so kills land mid-write."""
INDEX = 0x01000030
TPM_RC_NV_UNINITIALIZED = 0x14A

libtpms()


class Channel:
    """Where the commands go: ``dev/tpm0`` of the mount, or a connection to the swtpm data
    port.  :meth:`transmit` raises ``OSError`` with an errno of :attr:`dead` once the daemon
    is gone."""

    def __init__(self, root: Path, port: int | None) -> None:
        self.port = port
        if port is None:
            self.fd = os.open(root / "dev/tpm0", os.O_RDWR)
            self.dead: tuple[int | None, ...] = DEAD
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            # None: the connection ended between two reads (recv_response's EOF)
            self.dead = (None, errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)

    def transmit(self, command: bytes) -> bytes:
        """One command, its whole response."""
        if self.port is None:
            os.write(self.fd, command)
            return os.read(self.fd, 4096)
        self.sock.sendall(command)
        return recv_response(self.sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the file of a dead mount
            if self.port is None:
                os.close(self.fd)
            else:
                self.sock.close()


def read_counter(channel: Channel) -> int | None:
    """The counter in the NV index; None before its first write."""
    response = channel.transmit(cmd.nv_read(INDEX, INDEX, 8))
    if cmd.response_code(response) == TPM_RC_NV_UNINITIALIZED:
        return None
    assert cmd.response_code(response) == 0, f"NV_Read: {response.hex()}"
    return struct.unpack(">q", cmd.parse_nv_read(response))[0]


def write_until_dead(channel: Channel, first: int) -> int:
    """NV_Write ``first``, ``first + 1``, ... until the daemon is gone; returns the counter
    in flight then (every smaller one was acknowledged)."""
    value = first
    while True:
        try:
            response = channel.transmit(cmd.nv_write(INDEX, INDEX, struct.pack(">q", value)))
        except OSError as exc:
            assert exc.errno in channel.dead, exc
            return value
        assert cmd.response_code(response) == 0, f"NV_Write {value}: {response.hex()}"
        value += 1


@pytest.mark.parametrize("through", ["dev-tpm0", "swtpm-data-port"])
def test_every_acknowledged_nv_write_survives_sigkill_of_the_daemon(tmp_path: Path,
                                                                    through: str) -> None:
    root = tmp_path / "mnt"
    root.mkdir()
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed {seed}")
    rng = random.Random(seed)
    last_acked: int | None = None
    in_flight: int | None = None
    in_flight_applied = kills_mid_stream = 0
    daemon: subprocess.Popen[bytes] | None = None
    try:
        for cycle in range(CYCLES + 1):
            # A pair chosen anew for each daemon: one kept across restarts was taken by
            # another program's connection in between once.
            port = free_port_pair() if through == "swtpm-data-port" else None
            daemon = start_daemon(root, state, log,
                                  options=("--tpm-port", str(port)) if port else ())
            channel = Channel(root, port)
            if cycle == 0:
                define = cmd.nv_define_space(cmd.TPM_RH_OWNER, INDEX, 8, cmd.NV_ORDINARY_OWNER)
                assert cmd.response_code(channel.transmit(define)) == 0
            found = read_counter(channel)
            if cycle > 0:
                assert found in (last_acked, in_flight), (
                    f"cycle {cycle}: found {found}, last acknowledged {last_acked}, "
                    f"in flight {in_flight}")
                in_flight_applied += found == in_flight
            if cycle == CYCLES:
                channel.close()
                break
            killer = threading.Timer(rng.uniform(0, KILL_WITHIN), daemon.kill)
            killer.start()
            first = 0 if found is None else found + 1
            in_flight = write_until_dead(channel, first)
            last_acked = in_flight - 1 if in_flight > first else found
            kills_mid_stream += in_flight > first
            killer.join()
            channel.close()
            assert daemon.wait(timeout=10) == -signal.SIGKILL
            clear_dead_mount(root)
        assert apfs("umount", str(root)).returncode == 0
    finally:
        end_daemon(daemon, root)
    print(f"\n{CYCLES} SIGKILLs of the daemon: {last_acked} NV writes acknowledged, "
          f"{kills_mid_stream} kills after one, the write in flight applied "
          f"{in_flight_applied} times")
    # The kills landed while writes were flowing (a test that could not fail otherwise).
    assert kills_mid_stream >= CYCLES // 2, kills_mid_stream
