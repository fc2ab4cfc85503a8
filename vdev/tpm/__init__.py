"""The vTPM: libtpms behind a sans-IO engine, the virtio TPM device, ``[[tpm]]`` tables.

``libtpms`` (ctypes binding) → ``engine.Tpm`` (one per process) / ``worker.TpmWorker`` (one
per child process, same API) → ``virtio.VirtioTpm`` (the seed 002 device contract);
``commands`` builds the few TPM commands apfs sends itself; ``config`` parses ``[[tpm]]``;
``provision`` applies its manufacturing choices (PCR banks); ``vtpm`` is one configured
vTPM as a host shows it (boot, the contents of its sysfs and control files).
"""

from vdev.tpm.engine import Tpm, TpmEngine, TpmState
from vdev.tpm.errors import TpmError, TpmInUse, TpmLibraryError, TpmStateError, TpmUnavailable
from vdev.tpm.worker import TpmWorker

__all__ = [
    "Tpm",
    "TpmEngine",
    "TpmError",
    "TpmInUse",
    "TpmLibraryError",
    "TpmState",
    "TpmStateError",
    "TpmUnavailable",
    "TpmWorker",
]
