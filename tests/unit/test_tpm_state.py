"""``--state`` for the vTPMs, on the host the daemon builds (real libtpms, real files).

A restart is a new :class:`~apfs.host.Host` from the same state directory, as a new daemon
builds it.  What must survive: NV indices, persistent objects (EvictControl), what a
Shutdown(STATE) saved; what must not: PCRs after any other shutdown.  A damaged state file is
refused with its path; a save that fails withholds the response.
"""

from __future__ import annotations

import errno
import hashlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from apfs.host import Host, build_host
from apfs.state import StateError
from tests.unit.tpm_helpers import ok, require_libtpms
from vdev.ap.host import DEFAULT_HOST_TOML
from vdev.errors import DeviceError
from vdev.sealed import SealError, seal
from vdev.tpm import commands as cmd
from vdev.tpm import stateblob
from vdev.tpm.engine import TpmState
from vdev.tpm.vtpm import VTpm

require_libtpms()

INDEX = 0x01000010
PERSISTENT = 0x81000001
TWO_TPMS = DEFAULT_HOST_TOML + '[[tpm]]\nname = "first"\n[[tpm]]\nname = "second"\n'


@contextmanager
def host(state: Path, config: Path | None = None) -> Iterator[Host]:
    built = build_host(None if config is None else str(config), None, state)
    try:
        yield built
    finally:
        built.close()


def nv_value(tpm: VTpm) -> bytes:
    return cmd.parse_nv_read(ok(tpm.transmit(cmd.nv_read(INDEX, INDEX, 8))))


def pcr(tpm: VTpm, index: int) -> bytes:
    return cmd.parse_pcr_read(ok(tpm.transmit(cmd.pcr_read("sha256", [index]))))[0]


def extend(tpm: VTpm, index: int, data: bytes) -> None:
    digests = {bank: hashlib.new(bank, data).digest() for bank in cmd.HASH_ALGS}
    ok(tpm.transmit(cmd.pcr_extend(index, digests)))


def test_nv_and_a_persistent_key_survive_a_restart_and_pcrs_reset(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with host(state) as first:
        tpm = first.tpms["tpm0"]
        ok(tpm.transmit(cmd.nv_define_space(cmd.TPM_RH_OWNER, INDEX, 8, cmd.NV_ORDINARY_OWNER)))
        ok(tpm.transmit(cmd.nv_write(INDEX, INDEX, b"survives")))
        key = cmd.created_handle(ok(tpm.transmit(cmd.create_primary("ecc256"))))
        public = cmd.public_area(ok(tpm.transmit(cmd.read_public(key))), cmd.HEADER_SIZE)
        ok(tpm.transmit(cmd.evict_control(cmd.TPM_RH_OWNER, key, PERSISTENT)))
        extend(tpm, 16, b"gone after a restart")
        assert pcr(tpm, 16) != bytes(32)
    assert sorted(p.name for p in state.iterdir()) == ["lock", "state", "tpm-tpm0"]
    with host(state) as second:
        tpm = second.tpms["tpm0"]
        assert nv_value(tpm) == b"survives"
        response = ok(tpm.transmit(cmd.read_public(PERSISTENT)))
        assert cmd.public_area(response, cmd.HEADER_SIZE) == public
        assert pcr(tpm, 16) == bytes(32)  # no Shutdown(STATE): a cold boot


def test_shutdown_state_then_restart_resumes_the_pcrs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with host(state) as first:
        tpm = first.tpms["tpm0"]
        extend(tpm, 7, b"secure boot policy")  # PCRs 0-15 are saved by Shutdown(STATE)
        measured = pcr(tpm, 7)
        ok(tpm.transmit(cmd.shutdown(cmd.TPM_SU_STATE)))
    with host(state) as resumed:
        assert pcr(resumed.tpms["tpm0"], 7) == measured
    # The saved state resumes once: the next restart without a Shutdown(STATE) is cold.
    with host(state) as cold:
        assert pcr(cold.tpms["tpm0"], 7) == bytes(32)


def test_a_worker_process_tpm_is_durable_too(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text(TWO_TPMS)
    state = tmp_path / "state"
    with host(state, config) as first:
        second_tpm = first.tpms["tpm1"]
        assert "worker" in second_tpm.show_info()
        ok(second_tpm.transmit(cmd.nv_define_space(cmd.TPM_RH_OWNER, INDEX, 8,
                                                   cmd.NV_ORDINARY_OWNER)))
        ok(second_tpm.transmit(cmd.nv_write(INDEX, INDEX, b"worker!!")))
    assert {"tpm-first", "tpm-second"} <= {p.name for p in state.iterdir()}
    with host(state, config) as again:
        assert nv_value(again.tpms["tpm1"]) == b"worker!!"
        first_nv = again.tpms["tpm0"].transmit(cmd.nv_read(INDEX, INDEX, 8))
        assert cmd.response_code(first_nv) != cmd.TPM_RC_SUCCESS  # each TPM its own file


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_tpm_state_file_is_refused_with_its_path(tmp_path: Path,
                                                           damage: str) -> None:
    state = tmp_path / "state"
    with host(state):
        pass
    path = state / "tpm-tpm0"
    data = path.read_bytes()
    if damage == "flip":
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:]
    else:
        data = data[:len(data) - 100] if damage == "truncate" else b""
    path.write_bytes(data)
    with pytest.raises(StateError) as caught, host(state):
        pass
    reason = {"flip": "corrupted: the SHA-256", "truncate": "truncated",
              "empty": "not an apfs TPM state blob: it is empty"}[damage]
    assert str(caught.value).startswith(f"{path}: ")
    assert reason in str(caught.value)


def test_a_blob_libtpms_refuses_is_refused_with_its_path(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with host(state):
        pass
    path = state / "tpm-tpm0"
    # Intact envelope, damaged libtpms blob: libtpms's own checks catch it.
    permanent = stateblob.decode("x", path.read_bytes()).permanent
    path.write_bytes(stateblob.encode(TpmState(permanent[:40] + bytes(60) + permanent[100:])))
    with pytest.raises(StateError, match=f"^{path}: libtpms refused the saved TPM state"), \
            host(state):
        pass


def test_a_failed_save_withholds_the_response(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with host(state) as mounted:
        tpm = mounted.tpms["tpm0"]
        ok(tpm.transmit(cmd.nv_define_space(cmd.TPM_RH_OWNER, INDEX, 8, cmd.NV_ORDINARY_OWNER)))
        # The commit's temporary file cannot be created: a real failing save (EISDIR).
        (state / "tpm-tpm0.tmp").mkdir()
        with pytest.raises(DeviceError) as caught:
            tpm.transmit(cmd.nv_write(INDEX, INDEX, b"withheld"))
        assert caught.value.errno == errno.EIO
        assert f"cannot save the TPM state to {state / 'tpm-tpm0'}" in caught.value.message
        # Commands that change no permanent state are unaffected; the next save works.
        ok(tpm.transmit(cmd.get_random(8)))
        (state / "tpm-tpm0.tmp").rmdir()
        ok(tpm.transmit(cmd.nv_write(INDEX, INDEX, b"accepted")))
    with host(state) as again:
        assert nv_value(again.tpms["tpm0"]) == b"accepted"


# -- the blob format -----------------------------------------------------------------------

STATE = TpmState(bytes(range(256)) * 8, b"volatile")


def test_stateblob_round_trip_and_every_truncation_refused() -> None:
    data = stateblob.encode(STATE)
    assert data.startswith(b"apfs-tpm-state 1 ")
    assert stateblob.decode("f", data) == STATE
    for length in range(len(data)):
        with pytest.raises(SealError, match=r"^f: "):
            stateblob.decode("f", data[:length])


def test_stateblob_every_byte_damaged_is_refused() -> None:
    data = stateblob.encode(STATE)
    for at in range(len(data)):
        damaged = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
        with pytest.raises(SealError, match=r"^f: "):
            stateblob.decode("f", damaged)


def test_stateblob_body_checks() -> None:
    with pytest.raises(SealError, match="the permanent blob is empty"):
        stateblob.decode("f", stateblob.encode(TpmState(b"")))

    overrun = seal(stateblob.MAGIC, stateblob.VERSION, struct.pack(">I", 99) + b"x")
    with pytest.raises(SealError, match="permanent blob's 99 bytes overrun"):
        stateblob.decode("f", overrun)
