"""`apfs mount`: its options reach the daemon as parsed; it waits for the daemon's first line
on a pipe, and never longer than it says; mounts are recognised from mountinfo lines."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from apfs import cli, daemon, mountinfo, options
from apfs.fuseloop import DEFAULT_SPIN_US


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


# --- options: declared once, parsed by the CLI, handed to the daemon -------------------------


def _daemon_args(*cli_args: str) -> argparse.Namespace:
    """What the daemon parses from the argv that ``apfs mount CLI_ARGS /mnt/x`` builds."""
    args = cli.build_parser().parse_args(["mount", *cli_args, "/mnt/x"])
    return daemon.parser().parse_args([*options.daemon_argv(args), "/mnt/x"])


def test_every_daemon_option_reaches_the_daemon_with_relative_paths_made_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    got = _daemon_args("--config", "host.toml", "--debug", "--log", "logs/apfs.log",
                       "--spin-us", "0", "--flavor", "vfio_ap")
    assert (got.config, got.debug, got.log, got.spin_us, got.flavor) == (
        str(tmp_path / "host.toml"), True, str(tmp_path / "logs/apfs.log"), 0, "vfio_ap")
    assert got.mountpoint == "/mnt/x"


def test_defaults_are_not_spelled_out() -> None:
    args = cli.build_parser().parse_args(["mount", "/mnt/x"])
    assert options.daemon_argv(args) == []
    got = _daemon_args()
    assert (got.config, got.debug, got.log, got.spin_us, got.flavor) == (
        None, False, None, DEFAULT_SPIN_US, None)


@pytest.mark.parametrize("cli_only", ["--foreground", "--nonempty"])
def test_options_only_the_cli_acts_on_stay_there(cli_only: str) -> None:
    args = cli.build_parser().parse_args(["mount", cli_only, "/mnt/x"])
    assert getattr(args, cli_only[2:]) is True
    assert options.daemon_argv(args) == []
    with pytest.raises(SystemExit):
        daemon.parser().parse_args([cli_only, "/mnt/x"])


def test_a_negative_spin_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["mount", "--spin-us", "-1", "/mnt/x"])
    assert "--spin-us: -1 is negative" in capsys.readouterr().err


def test_apfs_run_takes_the_daemon_options_of_apfs_mount(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mount_args = ["--config", "host.toml", "--log", "apfs.log", "--spin-us", "0"]
    mounted = cli.build_parser().parse_args(["mount", *mount_args, "/mnt/x"])
    run = cli.build_parser().parse_args(["run", *mount_args, "--", "mdevctl", "list", "-d"])
    assert options.daemon_argv(run) == options.daemon_argv(mounted)
    assert run.command == ["--", "mdevctl", "list", "-d"]
    assert (run.mount, run.host_etc) == (None, False)


@pytest.mark.parametrize("cli_only", ["--foreground", "--nonempty"])
def test_apfs_run_has_no_options_only_apfs_mount_acts_on(cli_only: str) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", cli_only, "--", "true"])


# --- mountinfo ------------------------------------------------------------------------------


def test_mountinfo_lines_with_optional_fields_and_escaped_paths() -> None:
    line = (r"42 27 0:39 / /tmp/a\040b\134c rw,nosuid shared:7 master:1 - fuse.apfs apfs "
            r"rw,user_id=0")
    entry = mountinfo._parse(line)
    assert entry == mountinfo.MountEntry(device="0:39", mountpoint="/tmp/a b\\c",
                                         fstype="fuse.apfs", source="apfs")
    assert entry.is_apfs and entry.minor == 39


@pytest.mark.parametrize(("fstype", "source", "ours"), [
    ("fuse.apfs", "apfs", True), ("fuse", "apfs", True), ("tmpfs", "apfs", False),
    ("fuse.sshfs", "apfs", False), ("fuse.apfs", "other", False)])
def test_only_apfs_mounts_are_ours(fstype: str, source: str, ours: bool) -> None:
    assert mountinfo.MountEntry("0:1", "/m", fstype, source).is_apfs is ours


def test_canonical_resolves_symlinks_and_dot_dot_like_the_kernel(tmp_path: Path) -> None:
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "rel").symlink_to("a/b")
    (tmp_path / "abs").symlink_to(tmp_path / "a")
    (tmp_path / "a/up").symlink_to("../a/b/..")
    real = str(tmp_path / "a/b")
    for spelling in ("rel", "rel/", "abs/b", "a/up/b", "rel/../b", "./a//b"):
        assert mountinfo.canonical(str(tmp_path / spelling)) == real, spelling
    assert mountinfo.canonical(str(tmp_path / "missing/x")) == str(tmp_path / "missing/x")


def test_canonical_refuses_a_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        mountinfo.canonical(str(tmp_path / "loop"))
