"""The resource manager (vdev.tpm.space) against a real libtpms TPM: tpm2-space.c's rules.

Spaces are driven the way /dev/tpmrm0 drives them (``VTpm.exclusive``); what the TPM itself
holds is checked with raw GetCapability(HANDLES) commands, as through /dev/tpm0.
"""

from __future__ import annotations

import errno
import os
import struct
import threading

import pytest

from tests.unit.tpm_helpers import ok, require_libtpms
from vdev.errors import DeviceError
from vdev.tpm import commands as cmd
from vdev.tpm.space import (
    ATTR_RHANDLE,
    TPM_CC_CONTEXT_LOAD,
    TPM_CC_CONTEXT_SAVE,
    TPM_CC_FLUSH_CONTEXT,
    UNSUPPORTED_REPLY,
    CommandTable,
    Space,
)
from vdev.tpm.vtpm import VTpm

require_libtpms()

TPM_RH_NULL = 0x40000007
TPM_CC_READ_PUBLIC = 0x173
TPM_CC_START_AUTH_SESSION = 0x176
TPM_RC_OBJECT_MEMORY = 0x902
TRANSIENT, LOADED_SESSION, SAVED_SESSION = 0x80000000, 0x02000000, 0x03000000


class Opener:
    """One open /dev/tpmrm0: its space, and commands sent through it."""

    def __init__(self, vtpm: VTpm, buffer_size: int | None = None) -> None:
        self.vtpm = vtpm
        self.space = Space("/dev/tpmrm0", vtpm.command_table) if buffer_size is None else \
            Space("/dev/tpmrm0", vtpm.command_table, buffer_size)

    def send(self, command: bytes) -> bytes:
        return self.vtpm.exclusive(lambda send: self.space.execute(command, send))

    def primary(self, key: str = "ecc256") -> int:
        return cmd.created_handle(self.send(cmd.create_primary(key)))

    def session(self) -> int:
        return struct.unpack_from(">I", ok(self.send(start_auth_session())), 10)[0]

    def close(self) -> None:
        self.vtpm.exclusive(self.space.close)


def start_auth_session() -> bytes:
    """An unbound, unsalted HMAC session with SHA-256 (what tpm2-tools starts)."""
    body = struct.pack(">II", TPM_RH_NULL, TPM_RH_NULL) + struct.pack(">H", 16) + os.urandom(16)
    body += struct.pack(">HBHH", 0, 0x00, 0x0010, 0x000B)
    return cmd.command(TPM_CC_START_AUTH_SESSION, body)


def read_public(handle: int) -> bytes:
    return cmd.command(TPM_CC_READ_PUBLIC, struct.pack(">I", handle))


def handles(response: bytes) -> list[int]:
    (count,) = struct.unpack_from(">I", ok(response), 15)
    return list(struct.unpack_from(f">{count}I", response, 19))


def get_handles(first: int) -> bytes:
    return cmd.get_capability(1, first, 64)


def in_tpm(vtpm: VTpm, first: int) -> list[int]:
    """What the TPM itself holds from ``first`` on (as a /dev/tpm0 user sees it)."""
    return handles(vtpm.transmit(get_handles(first)))


def test_the_probe_reads_every_command_and_patches_flushcontext(vtpm: VTpm) -> None:
    table = vtpm.command_table
    total = struct.unpack(">I", ok(vtpm.transmit(cmd.get_capability(6, 0x129, 1)))[-4:])[0]
    assert len(table) == total > 100
    for cc in (TPM_CC_FLUSH_CONTEXT, TPM_CC_CONTEXT_SAVE, TPM_CC_READ_PUBLIC):
        assert CommandTable.handles(table.get(cc) or 0) == 1
    assert CommandTable.handles(table.get(TPM_CC_START_AUTH_SESSION) or 0) == 2
    assert (table.get(TPM_CC_CONTEXT_LOAD) or 0) & ATTR_RHANDLE


def test_objects_get_virtual_handles_and_live_in_the_tpm_only_during_a_command(
        vtpm: VTpm) -> None:
    opener = Opener(vtpm)
    assert [opener.primary(), opener.primary()] == [0x80FFFFFF, 0x80FFFFFE]
    assert opener.space.virtual_handles == [0x80FFFFFF, 0x80FFFFFE]
    assert in_tpm(vtpm, TRANSIENT) == []
    assert handles(opener.send(get_handles(TRANSIENT))) == [0x80FFFFFF, 0x80FFFFFE]
    ok(opener.send(read_public(0x80FFFFFE)))


def test_two_openers_see_only_their_own_objects(vtpm: VTpm) -> None:
    first, second = Opener(vtpm), Opener(vtpm)
    assert first.primary("ecc256") == second.primary("rsa2048") == 0x80FFFFFF
    first.primary()
    assert handles(first.send(get_handles(TRANSIENT))) == [0x80FFFFFF, 0x80FFFFFE]
    assert handles(second.send(get_handles(TRANSIENT))) == [0x80FFFFFF]
    # The same virtual handle names each opener's own key: ECC (0x0023) vs RSA (0x0001).
    assert ok(first.send(read_public(0x80FFFFFF)))[12:14] == b"\x00\x23"
    assert ok(second.send(read_public(0x80FFFFFF)))[12:14] == b"\x00\x01"


def test_a_handle_not_in_the_space_is_einval_and_changes_nothing(vtpm: VTpm) -> None:
    opener = Opener(vtpm)
    opener.primary()
    for handle in (0x80FFFFFE, 0x80000000):
        with pytest.raises(DeviceError) as refused:
            opener.send(read_public(handle))
        assert refused.value.errno == errno.EINVAL
        assert f"handle {handle:#010x} is not an object of this space " \
               "(its handles: 0x80ffffff)" in refused.value.message
    ok(opener.send(read_public(0x80FFFFFF)))
    assert in_tpm(vtpm, TRANSIENT) == []


def test_flushcontext_of_a_virtual_handle_frees_its_slot(vtpm: VTpm) -> None:
    opener = Opener(vtpm)
    opener.primary()
    opener.primary()
    ok(opener.send(cmd.flush_context(0x80FFFFFF)))
    assert opener.space.virtual_handles == [0x80FFFFFE]
    assert opener.primary() == 0x80FFFFFF


def test_contextsave_and_contextload_go_through_virtual_handles(vtpm: VTpm) -> None:
    opener = Opener(vtpm)
    opener.primary()
    saved = ok(opener.send(cmd.command(TPM_CC_CONTEXT_SAVE, struct.pack(">I", 0x80FFFFFF))))
    ok(opener.send(cmd.flush_context(0x80FFFFFF)))
    loaded = ok(opener.send(cmd.command(TPM_CC_CONTEXT_LOAD, saved[10:])))
    assert struct.unpack_from(">I", loaded, 10)[0] == 0x80FFFFFF
    ok(opener.send(read_public(0x80FFFFFF)))


def test_a_command_the_tpm_does_not_list_gets_the_resource_managers_reply(
        vtpm: VTpm) -> None:
    reply = Opener(vtpm).send(cmd.command(0x1FF))
    assert reply == UNSUPPORTED_REPLY == bytes.fromhex("80010000000a000b0143")


def test_a_command_shorter_than_its_header_or_handle_area_is_einval(vtpm: VTpm) -> None:
    for command, rule in ((cmd.command(TPM_CC_READ_PUBLIC), "its header and 1 handles"),
                          (b"\x80\x01\x00\x00\x00\x08\x00\x00", "a 10-byte header")):
        with pytest.raises(DeviceError) as refused:
            Opener(vtpm).send(command)
        assert refused.value.errno == errno.EINVAL
        assert f"shorter than {rule}" in refused.value.message


def test_sessions_keep_their_handles_are_saved_between_commands_and_flushed_at_close(
        vtpm: VTpm) -> None:
    first, second = Opener(vtpm), Opener(vtpm)
    sessions = [first.session(), second.session()]
    assert all(h & 0xFF000000 == LOADED_SESSION for h in sessions)
    assert first.space.session_handles == sessions[:1]
    assert in_tpm(vtpm, LOADED_SESSION) == []  # both saved, none loaded
    assert sorted(in_tpm(vtpm, SAVED_SESSION)) == sorted(sessions)  # listed by handle
    ok(first.send(cmd.get_random(8)))  # loaded and saved again around a command
    first.close()
    second.close()
    assert in_tpm(vtpm, LOADED_SESSION) == in_tpm(vtpm, SAVED_SESSION) == []


def test_the_tpms_three_object_slots_answer_a_fourth_object(vtpm: VTpm) -> None:
    """libtpms holds 3 loaded objects, as many as a space: with 3 in the space a 4th cannot
    even be created (TPM_RC_OBJECT_MEMORY), before the space would answer ENOMEM."""
    opener = Opener(vtpm)
    for _ in range(3):
        opener.primary()
    assert cmd.response_code(opener.send(cmd.create_primary("ecc256"))) == TPM_RC_OBJECT_MEMORY
    assert opener.space.virtual_handles == [0x80FFFFFF, 0x80FFFFFE, 0x80FFFFFD]
    assert in_tpm(vtpm, TRANSIENT) == []


def test_contexts_beyond_the_space_buffer_are_enomem_and_the_space_stays(vtpm: VTpm) -> None:
    opener = Opener(vtpm, buffer_size=2000)  # one RSA-2048 context (1258 bytes) fits
    opener.primary("rsa2048")
    with pytest.raises(DeviceError) as refused:
        opener.primary("rsa2048")
    assert refused.value.errno == errno.ENOMEM
    assert "exceed the 2000-byte space buffer" in refused.value.message
    assert opener.space.virtual_handles == [0x80FFFFFF]
    assert in_tpm(vtpm, TRANSIENT) == []
    ok(opener.send(read_public(0x80FFFFFF)))


def test_a_sequence_holds_the_tpm_against_every_other_command(vtpm: VTpm) -> None:
    """Another opener's command (or a tpm0 user's) waits until the whole sequence is done."""
    inside, release = threading.Event(), threading.Event()
    others: list[bytes] = []

    def sequence(send) -> None:
        ok(send(cmd.get_random(8)))
        inside.set()
        assert release.wait(10)

    holder = threading.Thread(target=vtpm.exclusive, args=(sequence,))
    holder.start()
    assert inside.wait(10)
    other = threading.Thread(target=lambda: others.append(vtpm.transmit(cmd.get_random(8))))
    other.start()
    other.join(0.2)
    assert others == [] and vtpm.busy
    release.set()
    holder.join(10)
    other.join(10)
    assert len(others) == 1 and not vtpm.busy
