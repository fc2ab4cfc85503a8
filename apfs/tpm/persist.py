"""``--state`` for the vTPMs: each TPM's permanent state in ``DIR/tpm-<name>``.

Owns: where a vTPM's state file is, reading it at mount (refused with its path when damaged)
and the :data:`~vdev.tpm.vtpm.Persist` function a :class:`~vdev.tpm.vtpm.VTpm` calls with
every new permanent blob.  The file format is :mod:`vdev.tpm.stateblob`'s (byte for byte
what ``apfs/tpm/<name>/stateblob`` exports); atomic replace, fsync and the lock are
:class:`apfs.state.StateStore`'s, the same as for the AP state.

Only the permanent state is kept (seeds, hierarchy auth, NV, persistent objects, and what a
Shutdown(STATE) saved): the volatile state follows the TPM's rules, so a restart is a power
cycle, and the next mount's Startup(STATE) resumes only after a Shutdown(STATE).
"""

from __future__ import annotations

import errno
import logging

from apfs.state import StateError, StateStore
from vdev.errors import DeviceError
from vdev.sealed import SealError
from vdev.tpm import stateblob
from vdev.tpm.engine import TpmState
from vdev.tpm.vtpm import Persist

log = logging.getLogger("apfs")


def file_name(name: str) -> str:
    """The state file of the ``[[tpm]]`` table ``name`` (names are ``[A-Za-z0-9_-]``)."""
    return f"tpm-{name}"


def saved_state(store: StateStore, name: str) -> TpmState | None:
    """The state saved for ``name``, or None for a TPM that has none yet (then it is
    manufactured).  StateError names the file and what is wrong with it."""
    raw = store.read_file(file_name(name))
    if raw is None:
        return None
    try:
        return stateblob.decode(str(store.directory / file_name(name)), raw)
    except SealError as exc:
        raise StateError(str(exc)) from None


def persister(store: StateStore, name: str) -> Persist:
    """What the vTPM ``name`` calls with each new permanent blob: commit it durably, or
    answer EIO (logged) so the response that needed it is withheld."""
    path = store.directory / file_name(name)

    def persist(permanent: bytes) -> None:
        try:
            store.commit_file(file_name(name), stateblob.encode(TpmState(permanent)))
        except OSError as exc:
            message = (f"{name}: cannot save the TPM state to {path}: {exc.strerror or exc}; "
                       "the response is withheld")
            log.error("apfs: %s", message)
            raise DeviceError(errno.EIO, message) from None

    return persist
