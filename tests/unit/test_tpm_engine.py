"""The in-process vTPM engine (vdev.tpm.engine.Tpm) against the real libtpms."""

from __future__ import annotations

import errno
import hashlib
import struct
import threading
import time
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
from vdev.errors import WouldWait
from vdev.inline import NO_WAIT
from vdev.tpm import commands as cmd
from vdev.tpm.engine import FifoLock, Tpm, TpmState
from vdev.tpm.errors import TpmError, TpmInUse, TpmLibraryError, TpmStateError

require_libtpms()

SHA256_ZERO = bytes(32)
TPM_BAD_LOCALITY = 0x3D  # TPM 1.2-style TPM_RESULT libtpms uses for the established flag


@pytest.fixture
def tpm() -> Iterator[Tpm]:
    yield from started(Tpm())


def test_startup_then_get_random(tpm: Tpm) -> None:
    response = ok(tpm.execute(cmd.get_random(32)))
    (size,) = struct.unpack_from(">H", response, cmd.HEADER_SIZE)
    assert size == 32 and len(response) == cmd.HEADER_SIZE + 2 + 32
    assert cmd.response_size(response) == len(response)
    # Two draws of 32 random bytes are equal with probability 2**-256.
    assert ok(tpm.execute(cmd.get_random(32)))[12:] != response[12:]


def test_second_startup_is_refused(tpm: Tpm) -> None:
    assert cmd.response_code(tpm.execute(cmd.startup())) == cmd.TPM_RC_INITIALIZE


def test_pcr_extend_then_read_matches_hashlib(tpm: Tpm) -> None:
    d256 = hashlib.sha256(b"apfs measured this").digest()
    d1 = hashlib.sha1(b"and this, in sha1").digest()
    ok(tpm.execute(cmd.pcr_extend(16, {"sha256": d256, "sha1": d1})))
    ok(tpm.execute(cmd.pcr_extend(16, {"sha256": d256, "sha1": d1})))
    once = extended("sha256", SHA256_ZERO, d256)
    assert pcr(tpm, "sha256", 16) == extended("sha256", once, d256)
    assert pcr(tpm, "sha1", 16) == extended("sha1", extended("sha1", bytes(20), d1), d1)
    assert pcr(tpm, "sha256", 15) == SHA256_ZERO  # only the extended PCR moved


def test_get_capability_pcrs_and_family(tpm: Tpm) -> None:
    response = ok(tpm.execute(cmd.get_capability(cmd.TPM_CAP_PCRS, 0, 1)))
    capability, count = struct.unpack_from(">II", response, 11)
    assert capability == cmd.TPM_CAP_PCRS
    banks, offset = {}, 19
    for _ in range(count):
        alg, size = struct.unpack_from(">HB", response, offset)
        banks[alg] = response[offset + 3:offset + 3 + size]
        offset += 3 + size
    # libtpms 0.9 allocates all four banks, all 24 PCRs each.
    assert banks == {alg: b"\xff\xff\xff" for alg, _ in cmd.HASH_ALGS.values()}

    response = ok(tpm.execute(cmd.get_capability(cmd.TPM_CAP_TPM_PROPERTIES,
                                                 cmd.TPM_PT_FIXED, 1)))
    prop, value = struct.unpack_from(">II", response, 19)
    assert (prop, value.to_bytes(4, "big")) == (cmd.TPM_PT_FIXED, b"2.0\0")


@pytest.mark.parametrize(("command", "rc"), [
    (cmd.command(0x1FF), cmd.TPM_RC_COMMAND_CODE),                    # unknown code
    (cmd.get_random(8)[:-1], cmd.TPM_RC_COMMAND_SIZE),                # size field > bytes
    (struct.pack(">HII", 0x8000, 12, 0x17B) + b"\0\x08", 0x01E),      # TPM_RC_BAD_TAG
    (cmd.command(cmd.TPM_CC_GET_RANDOM, b"\0\x08\0\0"), 0x095),  # trailing: TPM_RC_SIZE
])
def test_malformed_commands_answer_their_response_code(tpm: Tpm, command: bytes,
                                                       rc: int) -> None:
    response = tpm.execute(command)
    assert response == struct.pack(">HII", cmd.TPM_ST_NO_SESSIONS, 10, rc)


def test_commands_before_startup_answer_initialize() -> None:
    with Tpm() as tpm:
        tpm.power_on()
        assert cmd.response_code(tpm.execute(cmd.get_random(8))) == cmd.TPM_RC_INITIALIZE


def test_locality_comes_from_the_caller() -> None:
    with Tpm() as tpm:
        tpm.power_on()
        ok(tpm.execute(cmd.startup(), locality=3))
        # TCG PC client: after Startup the last byte of PCR 0 is Startup's locality.
        assert pcr(tpm, "sha256", 0) == bytes(31) + b"\x03"
        d = hashlib.sha256(b"x").digest()
        extend_17 = cmd.pcr_extend(17, {"sha256": d})
        assert cmd.response_code(tpm.execute(extend_17, locality=0)) == cmd.TPM_RC_LOCALITY
        ok(tpm.execute(extend_17, locality=3))
        with pytest.raises(TpmError) as info:
            tpm.execute(cmd.get_random(8), locality=5)
        assert info.value.errno == errno.EINVAL and "locality 5" in info.value.message


def test_power_off_refuses_commands_and_power_on_needs_startup(tpm: Tpm) -> None:
    d = hashlib.sha256(b"lost at power off").digest()
    ok(tpm.execute(cmd.pcr_extend(16, {"sha256": d})))
    tpm.power_off()
    assert not tpm.powered
    with pytest.raises(TpmStateError, match="execute: the TPM is powered off"):
        tpm.execute(cmd.get_random(8))
    with pytest.raises(TpmStateError, match="power off: the TPM is powered off"):
        tpm.power_off()
    tpm.power_on()
    with pytest.raises(TpmStateError, match="already powered on"):
        tpm.power_on()
    assert cmd.response_code(tpm.execute(cmd.get_random(8))) == cmd.TPM_RC_INITIALIZE
    ok(tpm.execute(cmd.startup()))
    assert pcr(tpm, "sha256", 16) == SHA256_ZERO


def test_reset_needs_startup_again(tpm: Tpm) -> None:
    tpm.reset()
    assert tpm.powered
    assert cmd.response_code(tpm.execute(cmd.get_random(8))) == cmd.TPM_RC_INITIALIZE
    ok(tpm.execute(cmd.startup()))


def test_shutdown_state_survives_a_power_cycle(tpm: Tpm) -> None:
    d = hashlib.sha256(b"kept by Shutdown(STATE)").digest()
    ok(tpm.execute(cmd.pcr_extend(10, {"sha256": d})))
    ok(tpm.execute(cmd.pcr_extend(16, {"sha256": d})))
    ok(tpm.execute(cmd.shutdown(cmd.TPM_SU_STATE)))
    tpm.power_off()
    tpm.power_on()
    ok(tpm.execute(cmd.startup(cmd.TPM_SU_STATE)))
    # PCRs 0-15 are saved by Shutdown(STATE); the resettable PCR 16 is not.
    assert pcr(tpm, "sha256", 10) == extended("sha256", SHA256_ZERO, d)
    assert pcr(tpm, "sha256", 16) == SHA256_ZERO


def test_state_round_trip_into_a_new_instance() -> None:
    d = hashlib.sha256(b"carried over").digest()
    with Tpm() as first:
        first.power_on()
        ok(first.execute(cmd.startup()))
        ok(first.execute(cmd.pcr_extend(16, {"sha256": d})))
        state = first.get_state()
    assert state.permanent and state.volatile
    with Tpm(state) as second:
        assert second.get_state() == state  # powered off: the blobs as given
        second.power_on()
        # The volatile blob resumed the running TPM: started, PCR 16 still extended.
        assert pcr(second, "sha256", 16) == extended("sha256", SHA256_ZERO, d)
        # It resumes one power-on only; the next one starts from the permanent state.
        second.power_off()
        assert second.get_state().volatile == b""
        second.power_on()
        ok(second.execute(cmd.startup()))
        assert pcr(second, "sha256", 16) == SHA256_ZERO


def test_set_state_refusals_change_nothing(tpm: Tpm) -> None:
    state = tpm.get_state()
    with pytest.raises(TpmStateError, match="set state: the TPM is powered on"):
        tpm.set_state(state)
    tpm.power_off()
    with pytest.raises(TpmLibraryError) as info:
        tpm.set_state(TpmState(b"not a permall blob"))
    assert info.value.function == "TPMLIB_SetState"
    with pytest.raises(TpmLibraryError):
        tpm.set_state(TpmState(state.permanent, b"not a volatile blob"))
    with pytest.raises(TpmError, match="permanent state blob is empty"):
        tpm.set_state(TpmState(b""))
    assert tpm.get_state().permanent == state.permanent
    tpm.power_on()
    ok(tpm.execute(cmd.startup()))
    tpm.close()
    with pytest.raises(TpmLibraryError):
        Tpm(TpmState(b"garbage"))
    with Tpm(TpmState(state.permanent)) as again:  # the refused one gave libtpms back
        again.power_on()
        ok(again.execute(cmd.startup()))


def test_hash_sequence_at_locality_4_extends_pcr_17(tpm: Tpm) -> None:
    assert pcr(tpm, "sha256", 17) == b"\xff" * 32  # 17-22 start at all ones
    tpm.hash_start()
    tpm.hash_data(b"DRTM ")
    tpm.hash_data(b"payload")
    tpm.hash_end()
    # _TPM_Hash_End after Startup: PCR 17 is reset to zero, then extended with the digest.
    for bank in ("sha1", "sha256", "sha384"):
        digest = hashlib.new(bank, b"DRTM payload").digest()
        assert pcr(tpm, bank, 17) == extended(bank, bytes(len(digest)), digest)


def test_hash_sequence_after_reset_lands_in_pcr_17(tpm: Tpm) -> None:
    tpm.reset()
    ok(tpm.execute(cmd.startup()))
    tpm.hash_start()
    tpm.hash_data(b"after reset")
    tpm.hash_end()
    assert pcr(tpm, "sha256", 17) == extended(
        "sha256", SHA256_ZERO, hashlib.sha256(b"after reset").digest())


def test_established_flag(tpm: Tpm) -> None:
    assert not tpm.established()
    tpm.hash_start()
    tpm.hash_end()
    assert tpm.established()
    with pytest.raises(TpmLibraryError) as info:
        tpm.reset_established(0)
    assert info.value.rc == TPM_BAD_LOCALITY
    assert tpm.established()
    tpm.reset_established(3)
    assert not tpm.established()
    tpm.hash_start()
    tpm.hash_end()
    tpm.power_off()
    tpm.power_on()
    assert tpm.established()  # it survives a power cycle, as TPM_ACCESS's bit does
    tpm.close()
    with Tpm() as fresh:  # libtpms keeps the flag in a global: a new TPM must not inherit it
        fresh.power_on()
        assert not fresh.established()


def test_one_tpm_per_process(tpm: Tpm) -> None:
    with pytest.raises(TpmInUse, match=r"one TPM per process.*TpmWorker") as info:
        Tpm()
    assert info.value.errno == errno.EBUSY
    tpm.close()
    tpm.close()  # idempotent
    with Tpm() as again:
        again.power_on()  # a fresh TPM: manufactured anew
        ok(again.execute(cmd.startup()))


def test_info(tpm: Tpm) -> None:
    info = tpm.info()
    assert info["TPMSpecification"]["family"] == "2.0"
    assert info["libtpms"]["version"].startswith("0.")
    assert info["libtpms"]["profiles"] in (True, False)


def test_cancel_stops_a_running_command(tpm: Tpm) -> None:
    assert cancelled_rsa_primary(tpm) == cmd.TPM_RC_CANCELED
    # A cancel is no standing order: the next command runs to completion.
    handle = cmd.created_handle(ok(tpm.execute(cmd.create_primary("ecc256"))))
    ok(tpm.execute(cmd.flush_context(handle)))


def test_buffer_size(tpm: Tpm) -> None:
    size, low, high = tpm.buffer_size()
    assert size == high == 4096 and 0 < low < size
    with pytest.raises(TpmStateError, match="buffer size 3000: the TPM is powered on"):
        tpm.buffer_size(3000)
    tpm.power_off()
    assert tpm.buffer_size(3000) == (3000, low, high)
    assert tpm.buffer_size(1) == (low, low, high)  # clamped by libtpms
    assert tpm.buffer_size(1 << 20) == (high, low, high)
    tpm.buffer_size(3000)
    tpm.close()
    with Tpm() as fresh:  # a process global in libtpms: a new TPM must not inherit it
        assert fresh.buffer_size() == (high, low, high)


def test_fifo_lock_serves_in_arrival_order() -> None:
    lock, order = FifoLock(), []

    def take(n: int) -> None:
        with lock:
            order.append(n)

    threads = []
    with lock:
        for n in range(5):
            threads.append(threading.Thread(target=take, args=(n,)))
            threads[-1].start()
            # Queued before the next one starts (bounded wait, no timing asserted).
            deadline = time.monotonic() + 10
            while lock.native.waiting <= n and time.monotonic() < deadline:
                time.sleep(0.001)
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3, 4]


def test_a_caller_that_may_not_wait_is_refused_a_held_lock_and_nothing_changes() -> None:
    lock = FifoLock()
    with NO_WAIT, lock:  # free: taken as by anyone
        assert lock.busy
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            assert release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    with NO_WAIT, pytest.raises(WouldWait):
        lock.__enter__()
    assert not lock.native.waiting  # it did not queue
    release.set()
    holder.join()
    with lock:  # and the lock works on
        pass
