"""``apfs mount`` with a vTPM front end, as an administrator types it, for the TPM tests:
the mount, the TCTI string it printed, and always an unmount."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import apfs, unmount

from apfs.testing import Mount

_TCTI = re.compile(r"^TPM2TOOLS_TCTI=(\w+:host=127\.0\.0\.1,port=(\d+))$", re.MULTILINE)


@dataclass(frozen=True)
class TpmMount:
    mount: Mount
    tcti: str
    """What ``apfs mount`` printed for ``--tpm-port`` (empty without it)."""
    port: int
    stdout: str
    """Everything ``apfs mount`` printed (the TCTI and QEMU lines)."""


@contextlib.contextmanager
def tpm_mount(where: Path, *options: str) -> Iterator[TpmMount]:
    """``apfs mount OPTIONS --log where/apfs.log where/mnt`` of the default host."""
    root = where / "mnt"
    root.mkdir(parents=True)
    done = apfs("mount", *options, "--log", str(where / "apfs.log"), str(root))
    assert done.returncode == 0, done.stderr
    try:
        match = _TCTI.search(done.stdout)
        yield TpmMount(Mount(root), match[1] if match else "", int(match[2]) if match else 0,
                       done.stdout)
    finally:
        unmount(Mount(root))
