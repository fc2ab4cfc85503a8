"""`apfs mount` waits for the daemon's first line on a pipe, and never longer than it says."""

from __future__ import annotations

import os

import pytest

from apfs import cli


def _pipe_with(data: bytes | None) -> int:
    """A read end whose writer sent ``data`` and closed (None: still open, silent)."""
    read_end, write_end = os.pipe()
    if data is not None:
        os.write(write_end, data)
        os.close(write_end)
    return read_end


def test_ready_and_error_lines_are_returned() -> None:
    assert cli._read_answer(_pipe_with(b"ready\n")) == "ready"
    assert cli._read_answer(_pipe_with(b"error: bad config\n")) == "error: bad config"


def test_a_daemon_that_died_first_gives_an_empty_answer() -> None:
    assert cli._read_answer(_pipe_with(b"")) == ""


def test_a_silent_daemon_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "READY_TIMEOUT", 0.05)
    answer = cli._read_answer(_pipe_with(None))
    assert answer == "the daemon did not report ready within 0.05 s"
