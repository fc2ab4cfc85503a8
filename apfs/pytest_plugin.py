"""The pytest plugin of :mod:`apfs.testing` (entry point ``pytest11``: installed with apfs,
active in every pytest run of that environment; ``-p no:apfs`` turns it off).

Fixtures, each a :class:`apfs.testing.Mount`:

- ``apfs_mount``: a host mounted for one test under its ``tmp_path``, unmounted after it.
- ``apfs_session_mount``: one mount per host for the whole run (per xdist worker), reset to
  the configured state (``Mount.reset()``) before each test that uses it: as isolated as
  ``apfs_mount`` for what ``apfs/reset`` restores, without a mount per test.  A test that
  killed its daemon gets a new mount in the next test.

The host is the embedded default, or ``--apfs-config FILE`` for the whole run, or
``@pytest.mark.apfs_config(CONFIG)`` for a test, class or module: TOML text (``str``) or a
file (``pathlib.Path``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from apfs.testing import Config, Mount, mounted

MARKER = "apfs_config"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("apfs").addoption(
        "--apfs-config", metavar="FILE",
        help="host (TOML) mounted by the apfs_mount and apfs_session_mount fixtures; "
             "default: apfs's embedded default host")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(config): the host mounted by this test's apfs fixtures: "
                   "TOML text (str) or a file (pathlib.Path)")


def _config(request: pytest.FixtureRequest) -> Config:
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if len(marker.args) != 1 or marker.kwargs:
            raise pytest.UsageError(f"{request.node.nodeid}: @pytest.mark.{MARKER} takes one "
                                    "argument, TOML text (str) or a file (pathlib.Path); got "
                                    f"args={marker.args!r} kwargs={marker.kwargs!r}")
        return marker.args[0]
    option = request.config.getoption("apfs_config")
    return request.config.invocation_params.dir / option if option else None


@pytest.fixture
def apfs_mount(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mount]:
    """A host mounted for this test only (see the module's documentation)."""
    with mounted(_config(request), where=tmp_path) as mount:
        yield mount


class SessionMounts:
    """The run's long-lived mounts, one per host, made on first use."""

    def __init__(self, where: Path) -> None:
        self._where = where
        self._stack = ExitStack()
        self._mounts: dict[str | Path | None, tuple[ExitStack, Mount]] = {}

    def get(self, config: Config) -> Mount:
        """The mount of ``config`` in its configured state."""
        key = config if config is None or isinstance(config, str) else Path(config).resolve()
        if key in self._mounts:
            stack, mount = self._mounts[key]
            if mount.daemon is not None and mount.daemon.poll() is None:
                mount.reset()
                return mount
            stack.close()  # an earlier test killed its daemon: clear the dead mount
        stack = self._stack.enter_context(ExitStack())
        mount = stack.enter_context(mounted(config, where=self._where))
        self._mounts[key] = (stack, mount)
        return mount

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def apfs_session_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionMounts]:
    """The session mounts behind ``apfs_session_mount``, unmounted at the end of the run."""
    mounts = SessionMounts(tmp_path_factory.mktemp("apfs-session"))
    try:
        yield mounts
    finally:
        mounts.close()


@pytest.fixture
def apfs_session_mount(request: pytest.FixtureRequest,
                       apfs_session_mounts: SessionMounts) -> Mount:
    """A host mounted once for the run, reset before this test (see above)."""
    return apfs_session_mounts.get(_config(request))
