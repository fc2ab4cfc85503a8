"""The daemon as a direct child, to be SIGKILLed by the crash-consistency tests.

``python -m apfs.daemon --ready-fd`` is what ``apfs mount`` runs, minus the CLI's own
start-up; the test holds its :class:`subprocess.Popen`, so ``kill()`` hits the daemon itself.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
from pathlib import Path

from helpers import in_proc_mounts

from apfs.options import daemon_command

DEAD = (errno.ENOTCONN, errno.ECONNABORTED)
"""What a system call on a mount gets once its daemon is gone."""


def start_daemon(root: Path, state: Path, log: Path, config: Path | None = None,
                 options: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Mount ``config`` (default: the embedded default host) on ``root`` with ``--state
    state`` and ``options``; returns once the daemon says it serves."""
    read_end, write_end = os.pipe()
    daemon = subprocess.Popen(
        [*daemon_command(), "--ready-fd", str(write_end), "--state", str(state),
         "--log", str(log), *(("--config", str(config)) if config else ()), *options,
         str(root)],
        pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        ready = select.select([read_end], [], [], 20)[0]
        answer = os.read(read_end, 4096).decode() if ready else "no answer within 20 s"
    finally:
        os.close(read_end)
    if not answer.endswith("ready\n"):  # after the lines apfs mount prints (TCTI strings)
        daemon.kill()
        daemon.wait()
        raise AssertionError(f"the daemon did not start: {answer!r} (log: {log})")
    return daemon


def end_daemon(daemon: subprocess.Popen[bytes] | None, root: Path) -> None:
    """Whatever happened: no daemon left running and no mount left on ``root``."""
    if daemon is not None and daemon.poll() is None:
        daemon.kill()
        daemon.wait()
    clear_dead_mount(root)


def clear_dead_mount(root: Path) -> None:
    """After a SIGKILL the mount answers ENOTCONN: detach it without looking at it."""
    subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True, check=False)
    assert not in_proc_mounts(root)
