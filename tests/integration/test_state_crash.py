"""Crash consistency of ``--state``: SIGKILL the daemon mid-write, again and again.

Each cycle starts the daemon directly (:mod:`killable`), checks the restarted mount, then
lets a writer send random accepted and refused writes (:mod:`workload`) while a second
thread SIGKILLs the daemon at a random moment.  An in-process model is fed the same writes:
an acknowledged write must be accepted by the model too, a refused one refused by it.  After
the restart the mount must equal the model, except that the one write in flight when the
daemon died may be either applied or not; and the invariants must hold (no APQN in two
mdevs, no queue bound to two drivers).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

from conftest import apfs
from helpers import differences, model_snapshot, snapshot
from killable import DEAD, clear_dead_mount, end_daemon, start_daemon
from workload import MATRIX, model_write, random_write

from apfs.host import Host, ap_only, load_config
from vdev.ap.host import DEFAULT_HOST_TOML

CYCLES = int(os.environ.get("APFS_CRASH_CYCLES", "200"))
KILL_WITHIN = 0.12
"""The kill lands uniformly within this many seconds of the writer's start (dozens of writes,
most of whose time is the state file's fsync()s, so kills land mid-write)."""


def invariants(snap: dict[str, str]) -> list[str]:
    problems = []
    drivers = Counter(path.rsplit("/", 1)[1] for path in snap
                      if path.startswith("sys/bus/ap/drivers/") and path.count("/") == 5
                      and "." in path.rsplit("/", 1)[1])
    problems += [f"{queue} is bound to {n} drivers" for queue, n in drivers.items() if n > 1]
    owner: dict[str, str] = {}
    for path, entry in snap.items():
        if path.startswith(f"{MATRIX}/") and path.endswith("/adapters"):
            mdev = path.rsplit("/", 2)[1]
            adapters = entry.split(" ", 2)[2].split()
            domains = snap[f"{MATRIX}/{mdev}/domains"].split(" ", 2)[2].split()
            for apqn in (f"{a}.{d}" for a in adapters for d in domains):
                if owner.setdefault(apqn, mdev) != mdev:
                    problems.append(f"{apqn} is in mdevs {owner[apqn]} and {mdev}")
    return problems


Write = tuple[str, bytes]


def check_restart(model: Host, seen: dict[str, str], in_flight: Write | None,
                  where: str, outcome: Counter[str]) -> None:
    """The restarted mount equals the model, with or without the write in flight."""
    if differences(model_snapshot(model), seen):
        assert in_flight is not None, where
        # The daemon may have committed it and died before replying: "after" is allowed,
        # unless the model refuses the write (then only "before" was).
        model_write(model, *in_flight)
        diff = differences(model_snapshot(model), seen)
        assert not diff, f"{where}: lost or mixed state:\n" + "\n".join(diff[:30])
        outcome["in-flight write applied"] += 1
    elif in_flight is not None:
        outcome["in-flight write not applied"] += 1
    problems = invariants(seen)
    assert not problems, f"{where}: " + "; ".join(problems)


def write_until_dead(root: Path, rng: random.Random, model: Host, where: str,
                     outcome: Counter[str]) -> Write:
    """Random writes, each mirrored on the model, until the daemon is gone; returns the
    write in flight at that moment."""
    while True:
        write = random_write(rng, model)
        refused: int | None = None
        try:
            fd = os.open(root / write[0], os.O_WRONLY)
            try:
                os.write(fd, write[1])
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in DEAD:
                return write
            refused = exc.errno
        expected = model_write(model, *write)
        assert refused == expected, (f"{where}: {write} answered {_name(refused)}, the model "
                                     f"{_name(expected)}")
        outcome["acknowledged" if refused is None else "refused"] += 1


def _name(code: int | None) -> str:
    return "success" if code is None else errno.errorcode.get(code, str(code))


def test_sigkill_at_random_moments_never_loses_an_acknowledged_write(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    root.mkdir()
    state = tmp_path / "state"
    log = tmp_path / "daemon.log"
    rng = random.Random(20261130)
    # The AP host alone: the model has no vTPM (test_tpm_state_crash.py is the TPM's).
    config = tmp_path / "host.toml"
    config.write_text(DEFAULT_HOST_TOML)
    model = Host(ap_only(load_config(None)))
    outcome: Counter[str] = Counter()
    daemon: subprocess.Popen[bytes] | None = None
    in_flight: Write | None = None
    try:
        for cycle in range(CYCLES + 1):
            daemon = start_daemon(root, state, log, config)
            where = f"cycle {cycle}, write in flight {in_flight}"
            check_restart(model, snapshot(root), in_flight, where, outcome)
            if cycle == CYCLES:
                break
            killer = threading.Timer(rng.uniform(0, KILL_WITHIN), daemon.kill)
            killer.start()
            in_flight = write_until_dead(root, rng, model, f"cycle {cycle}", outcome)
            killer.join()
            assert daemon.wait(timeout=10) == -signal.SIGKILL
            clear_dead_mount(root)
        assert apfs("umount", str(root)).returncode == 0
    finally:
        end_daemon(daemon, root)
    print(f"\n{CYCLES} SIGKILLs: {dict(outcome)}")
    assert outcome["acknowledged"] > CYCLES and outcome["refused"] > CYCLES / 4, outcome
