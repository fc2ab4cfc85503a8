"""Crash consistency of ``--state`` for a vTPM: SIGKILL during a stream of NV writes.

Each cycle starts a process that builds the daemon's host from the state directory
(``apfs.host.build_host``, the code ``apfs mount --state`` runs before serving: state loaded,
every change of the TPM's permanent state saved before its response is passed on), reads the
NV index, then writes increasing counters to it with NV_Write through ``VTpm.transmit`` (the
path every TPM front end takes) and reports each acknowledged write.  It is SIGKILLed at a
random moment.  The next cycle must find at least the last acknowledged counter, and at most
the one write that was in flight.  This branch has no TPM front end on the mount yet; with
``MOUNT/dev/tpm0`` the writer becomes a client of the real daemon and nothing else changes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

from vdev.tpm.libtpms import libtpms

CYCLES = int(os.environ.get("APFS_TPM_CRASH_CYCLES", "60"))
KILL_WITHIN = 0.08
"""The kill lands uniformly within this many seconds of the writer's first report: dozens
of NV writes, each mostly the state file's two fsync()s."""

WRITER = """
import struct, sys
from pathlib import Path
from apfs.host import build_host
from vdev.tpm import commands as cmd

INDEX = 0x01000030
tpm = build_host(None, None, Path(sys.argv[1])).tpms["tpm0"]
response = tpm.transmit(cmd.nv_read(INDEX, INDEX, 8))
if cmd.response_code(response) == cmd.TPM_RC_SUCCESS:
    value = struct.unpack(">q", cmd.parse_nv_read(response))[0]
else:  # not defined yet (or defined but never written)
    if cmd.response_code(response) != 0x14A:  # TPM_RC_NV_UNINITIALIZED
        define = cmd.nv_define_space(cmd.TPM_RH_OWNER, INDEX, 8, cmd.NV_ORDINARY_OWNER)
        assert cmd.response_code(tpm.transmit(define)) == 0
    value = -1
print("have", value, flush=True)
while True:
    value += 1
    rc = cmd.response_code(tpm.transmit(cmd.nv_write(INDEX, INDEX, struct.pack(">q", value))))
    assert rc == 0, hex(rc)
    print("ack", value, flush=True)
"""

libtpms()


def run_cycle(state: Path, rng: random.Random) -> tuple[int, list[int]]:
    """Start a writer, kill it at a random moment; (counter it found, counters acked)."""
    errors = state.parent / "writer.err"
    with open(errors, "wb") as err:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(state)],
                                  stdout=subprocess.PIPE, stderr=err, text=True)
    assert writer.stdout is not None
    with writer.stdout:
        first = writer.stdout.readline()
        if not first.startswith("have "):
            writer.kill()
            writer.wait()
            raise AssertionError(f"writer failed: {first!r} {errors.read_text()}")
        killer = threading.Timer(rng.uniform(0, KILL_WITHIN), writer.send_signal,
                                 (signal.SIGKILL,))
        killer.start()
        output = writer.stdout.read()  # through the same buffer as the first line
    killer.join()
    assert writer.wait() == -signal.SIGKILL, errors.read_text()
    # Only whole lines: an "ack" cut off by the kill was never a complete report.
    acked = [int(line.split()[1]) for line in output.split("\n")[:-1]]
    return int(first.split()[1]), acked


def test_every_acknowledged_nv_write_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    state = tmp_path / "state"
    last_acked = -1
    kills_mid_stream = 0
    for cycle in range(CYCLES + 1):
        found, acked = run_cycle(state, rng)
        assert last_acked <= found <= last_acked + 1, (
            f"cycle {cycle}: found counter {found}, last acknowledged {last_acked}")
        if acked:
            assert acked == list(range(found + 1, acked[-1] + 1))
            last_acked = acked[-1]
            kills_mid_stream += 1
        else:
            last_acked = found
    # The kills landed while writes were flowing (a test that could not fail otherwise).
    assert kills_mid_stream >= CYCLES // 2, kills_mid_stream
    assert last_acked > CYCLES
