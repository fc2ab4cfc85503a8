"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.tpm_helpers import booted
from vdev.tpm.config import TpmConfig
from vdev.tpm.vtpm import VTpm


@pytest.fixture
def vtpm() -> Iterator[VTpm]:
    """A vTPM of the default configuration, booted (in this process while it has none)."""
    tpm = booted(TpmConfig("tpm0"))
    yield tpm
    tpm.close()
