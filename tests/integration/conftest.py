"""Real mounts for integration tests, from the apfs pytest plugin (:mod:`apfs.testing`).

``mount`` is the plugin's ``apfs_mount``; the factories mount more hosts with
:func:`apfs.testing.mounted`, so every mount here is made and unmounted by the same code a
downstream project uses.  ``apfs()`` runs the CLI itself, for the tests of the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from apfs.testing import Mount, Shell, mounted
from apfs.testing import unmount as unmount_path

if not os.path.exists("/dev/fuse"):
    pytest.exit("integration tests need /dev/fuse (modprobe fuse)", returncode=1)

__all__ = ["APFS", "Mount", "Shell", "apfs", "unmount"]

APFS = str(Path(sys.executable).with_name("apfs"))
"""The venv's console script: the command an administrator types."""


def apfs(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``apfs ARGS``; with ``check`` a non-zero exit fails the test."""
    return subprocess.run([APFS, *args], capture_output=True, text=True, check=check,
                          timeout=60)


def unmount(mount: Mount) -> None:
    """Clear a mount made with ``apfs mount`` by a test, whatever state its daemon is in."""
    unmount_path(mount.root)


@pytest.fixture
def mount(apfs_mount: Mount) -> Mount:
    """The embedded default host (the seed's), mounted fresh for one test."""
    return apfs_mount


@pytest.fixture
def places(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mount point, state directory) for tests of ``--state``; any mount made on the mount
    point is undone."""
    root = tmp_path / "mnt"
    root.mkdir()
    try:
        yield root, tmp_path / "state"
    finally:
        unmount(Mount(root))


MountFactory = Callable[..., Mount]


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    """Mount any number of hosts (optionally from a TOML text) in fresh directories."""
    yield from _factory(tmp_path)


@pytest.fixture(scope="module")
def module_mount_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountFactory]:
    """Like ``mount_factory``, but the mounts live for a whole test module (for tests that
    only ever refuse writes, or that share one long-lived mount on purpose)."""
    yield from _factory(tmp_path_factory.mktemp("module"))


def _factory(where: Path) -> Iterator[MountFactory]:
    with ExitStack() as stack:
        def make(config_text: str | None = None) -> Mount:
            return stack.enter_context(mounted(config_text, where=where))

        yield make
