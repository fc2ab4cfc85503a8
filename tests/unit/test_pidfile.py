"""`apfs umount` trusts a pid file only while the very process that wrote it runs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from apfs import pidfile


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(pidfile, "runtime_dir", lambda: tmp_path)
    return tmp_path


def test_a_claim_names_this_process_until_released(runtime_dir: Path) -> None:
    path = pidfile.claim("0:77")
    assert path == runtime_dir / "0:77.pid"
    assert pidfile.owner("0:77") == pidfile.Process.current()
    pidfile.release(path)
    assert not path.exists()
    assert pidfile.owner("0:77") is None


def test_a_file_left_by_a_process_that_exited_names_nobody(runtime_dir: Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        start = pidfile._stat(child.pid)[1]
        (runtime_dir / "0:78.pid").write_text(f"{child.pid} {start}\n")
        assert pidfile.owner("0:78") == pidfile.Process(child.pid, start)
    finally:
        child.kill()
    deadline = time.monotonic() + 5
    while pidfile._stat(child.pid)[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pidfile.owner("0:78") is None  # a zombie has exited, it is only not reaped yet
    child.wait()
    assert pidfile.owner("0:78") is None
    pidfile.forget("0:78")
    assert not (runtime_dir / "0:78.pid").exists()


def test_a_reused_pid_is_not_the_daemon(runtime_dir: Path) -> None:
    me = pidfile.Process.current()
    (runtime_dir / "0:79.pid").write_text(f"{me.pid} {me.start + 1}\n")
    assert pidfile.owner("0:79") is None


def test_release_leaves_a_file_another_daemon_owns_now(runtime_dir: Path) -> None:
    path = pidfile.claim("0:80")
    path.write_text("1 1\n")  # as if a later mount with the same device had claimed it
    pidfile.release(path)
    assert path.read_text() == "1 1\n"


@pytest.mark.parametrize("text", ["", "garbage\n", "12\n", "1 2 3\n"])
def test_an_unreadable_file_names_nobody(runtime_dir: Path, text: str) -> None:
    (runtime_dir / "0:81.pid").write_text(text)
    assert pidfile.owner("0:81") is None
