"""TPMs in worker processes (vdev.tpm.worker.TpmWorker) and the pipe codec."""

from __future__ import annotations

import errno
import hashlib
import marshal
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from tests.unit.tpm_helpers import (
    cancelled_rsa_primary,
    extended,
    ok,
    pcr,
    require_libtpms,
    started,
)
from vdev.tpm import codec
from vdev.tpm import commands as cmd
from vdev.tpm.engine import Tpm
from vdev.tpm.errors import TpmError, TpmLibraryError, TpmStateError
from vdev.tpm.worker import TpmWorker

require_libtpms()


@pytest.fixture
def worker() -> Iterator[TpmWorker]:
    yield from started(TpmWorker())


def test_two_workers_and_the_process_tpm_have_independent_pcrs() -> None:
    digests = {name: hashlib.sha256(name.encode()).digest() for name in ("a", "b", "local")}
    tpms = {"a": TpmWorker(), "b": TpmWorker(), "local": Tpm()}
    try:
        assert tpms["a"].pid != tpms["b"].pid
        for tpm in tpms.values():
            tpm.power_on()
            ok(tpm.execute(cmd.startup()))
        for name, tpm in tpms.items():
            ok(tpm.execute(cmd.pcr_extend(16, {"sha256": digests[name]})))
        for name, tpm in tpms.items():
            assert pcr(tpm, "sha256", 16) == extended("sha256", bytes(32), digests[name]), name
    finally:
        for tpm in tpms.values():
            tpm.close()


def test_worker_errors_keep_their_type(worker: TpmWorker) -> None:
    with pytest.raises(TpmStateError, match="power on: the TPM is already powered on"):
        worker.power_on()
    with pytest.raises(TpmLibraryError) as info:
        worker.reset_established(0)
    assert (info.value.function, info.value.rc) == ("TPM_IO_TpmEstablished_Reset", 0x3D)
    with pytest.raises(TpmError) as bad_locality:
        worker.execute(cmd.get_random(8), locality=7)
    assert bad_locality.value.errno == errno.EINVAL
    ok(worker.execute(cmd.get_random(8)))  # the worker is still serving


def test_worker_measurements_flag_and_info(worker: TpmWorker) -> None:
    assert worker.powered and not worker.established()
    worker.hash_start()
    worker.hash_data(b"measured in a worker")
    worker.hash_end()
    assert worker.established()
    digest = hashlib.sha256(b"measured in a worker").digest()
    assert pcr(worker, "sha256", 17) == extended("sha256", bytes(32), digest)
    assert worker.info()["TPMSpecification"]["family"] == "2.0"
    size, low, high = worker.buffer_size()
    assert size == high == 4096 and 0 < low < size


def test_state_moves_between_process_and_worker() -> None:
    digest = hashlib.sha256(b"migrated").digest()
    with TpmWorker() as source:
        source.power_on()
        ok(source.execute(cmd.startup()))
        ok(source.execute(cmd.pcr_extend(16, {"sha256": digest})))
        state = source.get_state()
    with Tpm(state) as target:
        target.power_on()
        assert pcr(target, "sha256", 16) == extended("sha256", bytes(32), digest)
        target.power_off()
        with TpmWorker(target.get_state()) as again:  # permanent only: a fresh boot
            again.power_on()
            ok(again.execute(cmd.startup()))
            assert pcr(again, "sha256", 16) == bytes(32)


def test_concurrent_callers_are_served_one_at_a_time(worker: TpmWorker) -> None:
    digest = hashlib.sha256(b"from a thread").digest()
    extend = cmd.pcr_extend(16, {"sha256": digest})
    threads = [threading.Thread(target=lambda: [ok(worker.execute(extend)) for _ in range(25)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = bytes(32)
    for _ in range(100):
        expected = extended("sha256", expected, digest)
    assert pcr(worker, "sha256", 16) == expected


def test_cancel_reaches_the_running_command(worker: TpmWorker) -> None:
    assert cancelled_rsa_primary(worker) == cmd.TPM_RC_CANCELED
    ok(worker.execute(cmd.get_random(8)))


def test_a_dead_worker_is_reported() -> None:
    worker = TpmWorker()
    try:
        worker.power_on()
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(TpmError, match=rf"process {worker.pid} exited \(status -9\)") as info:
            worker.execute(cmd.startup())
        assert info.value.errno == errno.EIO
        with pytest.raises(TpmError, match="exited"):
            worker.power_off()  # and stays reported
    finally:
        worker.close()
        worker.close()


def test_a_closed_worker_says_so() -> None:
    worker = TpmWorker()
    worker.close()
    with pytest.raises(TpmError, match=rf"TPM worker process {worker.pid} is closed"):
        worker.power_on()


def test_codec_round_trip_and_malformed_frames() -> None:
    values: list[codec.Value] = ["execute", b"\x80\x01", 4, -1, True, False, None, "é"]
    data = codec.frame(values)
    assert codec.frame_length(data[:4]) == len(data) - 4
    decoded = codec.values(data[4:])
    assert decoded == values
    assert [type(v) for v in decoded] == [type(v) for v in values]  # True stays a bool
    with pytest.raises(ValueError, match="malformed worker frame"):
        codec.values(data[4:-1])
    with pytest.raises(ValueError, match="malformed worker frame"):
        codec.values(b"\xff")
    with pytest.raises(ValueError, match="a tuple, not a list"):
        codec.values(marshal.dumps(("execute",)))
    with pytest.raises(ValueError, match="exceeds"):
        codec.frame_length(b"\xff\xff\xff\xff")
    with pytest.raises(TypeError, match="cannot encode float"):
        codec.frame([1.5])  # type: ignore[list-item]
