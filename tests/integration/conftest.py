"""Real mounts for integration tests: each test gets a fresh apfs daemon of its own.

The daemon runs in its own process (pyfuse3 allows one mount per process, and a crash must not
take pytest down); teardown always unmounts, lazily if it must, so no test leaves a mount.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apfs import mountinfo

if not os.path.exists("/dev/fuse"):
    pytest.exit("integration tests need /dev/fuse (modprobe fuse)", returncode=1)


APFS = str(Path(sys.executable).with_name("apfs"))
"""The venv's console script: the command an administrator types."""


def apfs(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``apfs ARGS``; with ``check`` a non-zero exit fails the test."""
    return subprocess.run([APFS, *args], capture_output=True, text=True, check=check,
                          timeout=60)


@dataclass
class Shell:
    """What an administrator's bash session sees."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class Mount:
    root: Path

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    def bash(self, script: str, cwd: Path | None = None) -> Shell:
        """Run ``script`` with bash (dash reports every failed echo as I/O error)."""
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              cwd=cwd or self.root, timeout=60,
                              env={**os.environ, "SYS": str(self.sys), "MNT": str(self.root)})
        return Shell(done.returncode, done.stdout, done.stderr)

    def read(self, relative: str) -> str:
        return (self.root / relative).read_text()

    def log(self) -> str:
        return self.read("apfs/log")


def mount_at(path: Path, config: Path | None = None) -> Mount:
    args = ["mount", *(["--config", str(config)] if config else []), str(path)]
    apfs(*args, check=True)
    return Mount(path)


def unmount(mount: Mount) -> None:
    # From the mount table: a stat of a mount whose daemon is stopped would never return.
    if mountinfo.mount_at(mountinfo.canonical(str(mount.root))) is not None:
        result = apfs("umount", str(mount.root))
        if result.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mount.root)], check=False)


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """The embedded default host (the seed's), mounted fresh for one test."""
    root = tmp_path / "mnt"
    root.mkdir()
    m = mount_at(root)
    try:
        yield m
    finally:
        unmount(m)


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator:
    """Mount any number of hosts (optionally from a TOML text) in fresh directories."""
    yield from _factory(tmp_path)


@pytest.fixture(scope="module")
def module_mount_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Like ``mount_factory``, but the mounts live for a whole test module (for tests that
    only ever refuse writes, or that share one long-lived mount on purpose)."""
    yield from _factory(tmp_path_factory.mktemp("module"))


def _factory(tmp_path: Path) -> Iterator:
    mounts: list[Mount] = []

    def make(config_text: str | None = None) -> Mount:
        index = len(mounts)
        root = tmp_path / f"mnt{index}"
        root.mkdir()
        config = None
        if config_text is not None:
            config = tmp_path / f"host{index}.toml"
            config.write_text(config_text)
        m = mount_at(root, config)
        mounts.append(m)
        return m

    try:
        yield make
    finally:
        for m in mounts:
            unmount(m)
