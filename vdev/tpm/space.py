"""The TPM resource manager behind ``/dev/tpmrm<N>``: the kernel's ``tpm2-space.c``.

Owns: :class:`CommandTable` (the TPMA_CC list the driver reads once at probe) and
:class:`Space` (one open file's 3 transient-object slots and 3 sessions).

Must not know: files, FUSE, threads.  A :class:`Space` sends TPM commands only through the
``send`` function it is handed for one command (:meth:`Space.execute`), which its caller runs
while holding the TPM for the whole sequence (:meth:`vdev.tpm.vtpm.VTpm.exclusive`), as the
kernel holds ``tpm_mutex`` from ``tpm2_prepare_space`` to ``tpm2_commit_space``.

Theory of operation (mirrors the kernel's functions, named in the comments):

- Between commands an opener's objects are not in the TPM: each is a saved context (its slot
  holds ``SAVED``), its sessions are saved contexts that keep their handles.
- Before a command (``tpm2_prepare_space``): ContextLoad every saved object and session, then
  rewrite the virtual handles ``0x80FFFFFF - i`` of the command's handle area (cHandles of
  its TPMA_CC) to the physical ones; an unknown 0x80xxxxxx handle is EINVAL.
- After it (``tpm2_commit_space``): a new object handle in the response (rHandle) takes a free
  slot and is answered as its virtual handle, a new session a session slot (no slot: ENOMEM);
  GetCapability(HANDLES) lists only this space's objects, by their virtual handles; then
  every object is ContextSaved and flushed, every session ContextSaved.
- Any failure flushes what the sequence loaded and leaves the space as it was before the
  command (the kernel works on a copy, ``chip->work_space``).
- A command the TPM did not list at probe gets a 10-byte reply with the resource manager's
  TPM_RC_COMMAND_CODE (``0x000B0143``); the TPM never sees it.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from vdev.errors import DeviceError
from vdev.tpm import commands

Send = Callable[[bytes], bytes]
"""Sends one command to the TPM and returns its response (the held TPM)."""

TPM_CC_CONTEXT_LOAD = commands.TPM_CC_CONTEXT_LOAD
TPM_CC_CONTEXT_SAVE = commands.TPM_CC_CONTEXT_SAVE
TPM_CC_FLUSH_CONTEXT = commands.TPM_CC_FLUSH_CONTEXT
TPM_CC_GET_CAPABILITY = commands.TPM_CC_GET_CAPABILITY
TPM_CC_FIRST = 0x11F
TPM_CAP_HANDLES = 1
TPM_CAP_COMMANDS = 2
TPM_PT_TOTAL_COMMANDS = 0x129

HT_MASK = 0xFF000000
HT_HMAC_SESSION = 0x02000000
HT_POLICY_SESSION = 0x03000000
HT_TRANSIENT = 0x80000000

# TPMA_CC (TPM 2.0 Part 2 §8.9): commandIndex, cHandles, rHandle, V.
ATTR_CHANDLES_SHIFT = 25
ATTR_RHANDLE = 1 << 28
ATTR_VENDOR = 1 << 29
CC_MASK = 0xFFFF | ATTR_VENDOR

TPM_RC_HANDLE = 0x08B
TPM_RC_REFERENCE_H0 = 0x910
TSS2_RESMGR_TPM_RC_LAYER = 11 << 16
UNSUPPORTED_REPLY = struct.pack(">HII", commands.TPM_ST_NO_SESSIONS, commands.HEADER_SIZE,
                                TSS2_RESMGR_TPM_RC_LAYER | commands.TPM_RC_COMMAND_CODE)
"""What ``tpm_dev_transmit`` synthesises for a command the TPM does not implement."""

NR_OBJECTS = 3
NR_SESSIONS = 3
SPACE_BUFFER_SIZE = 16384
"""TPM2_SPACE_BUFFER_SIZE: each of the context and session buffers (Linux ≥ 5.8)."""
FREE = 0
SAVED = 0xFFFFFFFF
"""A slot holding a saved context (the kernel's ``~0``)."""
CONTEXT_HEADER = struct.Struct(">QIIH")
"""TPMS_CONTEXT up to the blob: sequence, savedHandle, hierarchy, blob size."""


def _rc_value(rc: int) -> int:
    """``tpm2_rc_value``: a format-1 code without its handle/parameter number."""
    return rc & 0xBF if rc & 0x80 else rc


class CommandTable:
    """TPMA_CC of every command the TPM implements, by command code (``cc_attrs_tbl``)."""

    def __init__(self, attributes: dict[int, int]) -> None:
        self._attributes = attributes

    def __len__(self) -> int:
        return len(self._attributes)

    @staticmethod
    def probe_commands(total: int) -> bytes:
        """The GetCapability(COMMANDS) the driver sends at probe for ``total`` commands."""
        return commands.get_capability(TPM_CAP_COMMANDS, TPM_CC_FIRST, total)

    @classmethod
    def parse(cls, response: bytes) -> CommandTable:
        """From a GetCapability(COMMANDS) response (``tpm2_get_cc_attrs_tbl``).  As the
        kernel does, ContextSave and FlushContext count one handle, so that the handle they
        name (FlushContext's is a parameter) is translated like a handle-area one."""
        rc = commands.response_code(response)
        if rc != commands.TPM_RC_SUCCESS:
            raise ValueError(f"GetCapability(COMMANDS) failed with TPM response code {rc:#x}")
        (count,) = struct.unpack_from(">I", response, commands.HEADER_SIZE + 5)
        attributes: dict[int, int] = {}
        for (attrs,) in struct.iter_unpack(">I", response[commands.HEADER_SIZE + 9:][:4 * count]):
            cc = attrs & CC_MASK
            if cc in (TPM_CC_CONTEXT_SAVE, TPM_CC_FLUSH_CONTEXT):
                attrs = attrs & ~(7 << ATTR_CHANDLES_SHIFT) | 1 << ATTR_CHANDLES_SHIFT
            attributes[cc] = attrs
        return cls(attributes)

    def get(self, cc: int) -> int | None:
        return self._attributes.get(cc & CC_MASK)

    @staticmethod
    def handles(attrs: int) -> int:
        return attrs >> ATTR_CHANDLES_SHIFT & 7


@dataclass
class _Slots:
    """A space's tables and saved contexts (``struct tpm_space``), copied per command."""

    objects: list[int] = field(default_factory=lambda: [FREE] * NR_OBJECTS)
    object_contexts: list[bytes] = field(default_factory=lambda: [b""] * NR_OBJECTS)
    sessions: list[int] = field(default_factory=lambda: [FREE] * NR_SESSIONS)
    session_contexts: list[bytes] = field(default_factory=lambda: [b""] * NR_SESSIONS)

    def copy(self) -> _Slots:
        return _Slots(list(self.objects), list(self.object_contexts), list(self.sessions),
                      list(self.session_contexts))


def virtual_handle(slot: int) -> int:
    return HT_TRANSIENT | (0xFFFFFF - slot)


class Space:
    """The resource-manager state of one open ``tpmrm`` file (``tpm_space``)."""

    def __init__(self, node: str, table: CommandTable,
                 buffer_size: int = SPACE_BUFFER_SIZE) -> None:
        self.node = node
        self.table = table
        self.buffer_size = buffer_size
        self._slots = _Slots()

    @property
    def virtual_handles(self) -> list[int]:
        """The virtual handles of this space's objects."""
        return [virtual_handle(i) for i, h in enumerate(self._slots.objects) if h != FREE]

    @property
    def session_handles(self) -> list[int]:
        return [h for h in self._slots.sessions if h != FREE]

    def execute(self, command: bytes, send: Send) -> bytes:
        """One command through the space (``tpm_dev_transmit`` with a space).  Raises
        :class:`DeviceError` (EINVAL, ENOMEM, ENOENT, EFAULT) as the kernel's write fails."""
        if len(command) < commands.HEADER_SIZE:  # tpm2_find_and_validate_cc
            raise DeviceError(errno.EINVAL, f"{self.node}: command of {len(command)} bytes is "
                                            f"shorter than a {commands.HEADER_SIZE}-byte header")
        (cc,) = struct.unpack_from(">I", command, 6)
        attrs = self.table.get(cc)
        if attrs is None:
            return UNSUPPORTED_REPLY
        handles = CommandTable.handles(attrs)
        if len(command) < commands.HEADER_SIZE + 4 * handles:
            raise DeviceError(errno.EINVAL, f"{self.node}: command {cc:#x} of {len(command)} "
                                            f"bytes is shorter than its header and "
                                            f"{handles} handles")
        work = self._slots.copy()
        try:
            self._load(work, send)
            response = send(self._map_command(work, cc, handles, command))
            response = self._map_response_header(work, cc, attrs, response, send)
            response = self._map_response_body(work, cc, response)
            self._save(work, send)
        except BaseException:
            _flush_loaded(work, send)
            raise
        self._slots = work
        return response

    def close(self, send: Send) -> None:
        """``tpm2_del_space``: flush the sessions; the objects are saved contexts already."""
        for handle in self.session_handles:
            _flush(send, handle)
        self._slots = _Slots()

    # -- tpm2_prepare_space ----------------------------------------------------------------

    def _load(self, work: _Slots, send: Send) -> None:
        for i, handle in enumerate(work.objects):
            if handle == SAVED:
                work.objects[i] = self._load_context(work.object_contexts[i], send)
        for i, handle in enumerate(work.sessions):
            if handle == FREE:
                continue
            try:
                loaded = self._load_context(work.session_contexts[i], send)
            except _Gone:
                work.sessions[i] = FREE  # flushed outside the space: forget it
                continue
            if loaded != handle:
                raise DeviceError(errno.EFAULT, f"{self.node}: session {handle:#010x} was "
                                                f"restored to the wrong handle {loaded:#010x}")

    def _load_context(self, context: bytes, send: Send) -> int:
        """``tpm2_load_context``: the loaded handle; :class:`_Gone` when the TPM refuses it
        as replayed or flushed (TPM_RC_HANDLE, TPM_RC_REFERENCE_H0)."""
        response = send(commands.command(TPM_CC_CONTEXT_LOAD, context))
        rc = commands.response_code(response)
        if _rc_value(rc) == TPM_RC_HANDLE or rc == TPM_RC_REFERENCE_H0:
            raise _Gone(errno.ENOENT, f"{self.node}: ContextLoad refused with {rc:#x}: the "
                                      "context was flushed or loaded outside the space")
        if rc != commands.TPM_RC_SUCCESS:
            raise DeviceError(errno.EFAULT, f"{self.node}: ContextLoad failed with TPM "
                                            f"response code {rc:#x}")
        return struct.unpack_from(">I", response, commands.HEADER_SIZE)[0]

    def _map_command(self, work: _Slots, cc: int, handles: int, command: bytes) -> bytes:
        """``tpm2_map_command``: virtual → physical in the handle area."""
        mapped = bytearray(command)
        for n in range(handles):
            offset = commands.HEADER_SIZE + 4 * n
            (handle,) = struct.unpack_from(">I", mapped, offset)
            if handle & HT_MASK != HT_TRANSIENT:
                continue
            slot = 0xFFFFFF - (handle & 0xFFFFFF)
            if slot >= NR_OBJECTS or work.objects[slot] == FREE:
                raise DeviceError(errno.EINVAL, f"{self.node}: command {cc:#x}: handle "
                                                f"{handle:#010x} is not an object of this "
                                                f"space (its handles: {self._names(work)})")
            struct.pack_into(">I", mapped, offset, work.objects[slot])
        return bytes(mapped)

    # -- tpm2_commit_space -----------------------------------------------------------------

    def _map_response_header(self, work: _Slots, cc: int, attrs: int, response: bytes,
                             send: Send) -> bytes:
        if commands.response_code(response) != commands.TPM_RC_SUCCESS:
            return response
        if not attrs & ATTR_RHANDLE:
            return response
        (handle,) = struct.unpack_from(">I", response, commands.HEADER_SIZE)
        kind = handle & HT_MASK
        if kind == HT_TRANSIENT:
            slots, what, limit = work.objects, "transient objects", NR_OBJECTS
        elif kind in (HT_HMAC_SESSION, HT_POLICY_SESSION):
            slots, what, limit = work.sessions, "sessions", NR_SESSIONS
        else:
            return response  # the kernel logs "unknown handle" and passes it through
        if FREE not in slots:
            _flush(send, handle)
            raise DeviceError(errno.ENOMEM, f"{self.node}: command {cc:#x}: out of slots for "
                                            f"{handle:#010x} (a space holds {limit} {what})")
        slot = slots.index(FREE)
        slots[slot] = handle
        if kind != HT_TRANSIENT:
            return response  # sessions keep their handles
        mapped = bytearray(response)
        struct.pack_into(">I", mapped, commands.HEADER_SIZE, virtual_handle(slot))
        return bytes(mapped)

    def _map_response_body(self, work: _Slots, cc: int, response: bytes) -> bytes:
        """GetCapability(HANDLES): this space's objects by virtual handle, no one else's."""
        if cc != TPM_CC_GET_CAPABILITY or \
                commands.response_code(response) != commands.TPM_RC_SUCCESS:
            return response
        if len(response) < commands.HEADER_SIZE + 9:
            raise DeviceError(errno.EFAULT, f"{self.node}: GetCapability response of "
                                            f"{len(response)} bytes is too short")
        more, capability, count = struct.unpack_from(">BII", response, commands.HEADER_SIZE)
        if capability != TPM_CAP_HANDLES:
            return response
        if len(response) != commands.HEADER_SIZE + 9 + 4 * count:
            raise DeviceError(errno.EFAULT, f"{self.node}: GetCapability(HANDLES) response of "
                                            f"{len(response)} bytes for {count} handles")
        shown = []
        for (handle,) in struct.iter_unpack(">I", response[commands.HEADER_SIZE + 9:]):
            if handle & HT_MASK != HT_TRANSIENT:
                shown.append(handle)
            elif handle in work.objects:
                shown.append(virtual_handle(work.objects.index(handle)))
        body = struct.pack(">BII", more, capability, len(shown))
        body += b"".join(struct.pack(">I", h) for h in shown)
        return struct.pack(">HII", struct.unpack_from(">H", response)[0],
                           commands.HEADER_SIZE + len(body), 0) + body

    def _save(self, work: _Slots, send: Send) -> None:
        """``tpm2_save_space``: objects saved and flushed, sessions saved."""
        used = 0
        for i, handle in enumerate(work.objects):
            if handle in (FREE, SAVED):
                continue
            try:
                context = self._save_context(handle, send, used)
            except _Gone:
                work.objects[i] = FREE  # FlushContext of its virtual handle: slot freed
                continue
            used += len(context)
            _flush(send, handle)
            work.objects[i], work.object_contexts[i] = SAVED, context
        used = 0
        for i, handle in enumerate(work.sessions):
            if handle == FREE:
                continue
            try:
                context = self._save_context(handle, send, used)
            except _Gone:
                work.sessions[i] = FREE
                continue
            used += len(context)
            work.session_contexts[i] = context

    def _save_context(self, handle: int, send: Send, used: int) -> bytes:
        response = send(commands.command(TPM_CC_CONTEXT_SAVE, struct.pack(">I", handle)))
        rc = commands.response_code(response)
        if _rc_value(rc) == TPM_RC_REFERENCE_H0:
            raise _Gone(errno.ENOENT, f"{self.node}: {handle:#010x} is no longer loaded")
        if rc != commands.TPM_RC_SUCCESS:
            raise DeviceError(errno.EFAULT, f"{self.node}: ContextSave of {handle:#010x} "
                                            f"failed with TPM response code {rc:#x}")
        context = response[commands.HEADER_SIZE:]
        if used + len(context) > self.buffer_size:
            raise DeviceError(errno.ENOMEM, f"{self.node}: out of backing storage: contexts of "
                                            f"{used + len(context)} bytes exceed the "
                                            f"{self.buffer_size}-byte space buffer")
        return context

    @staticmethod
    def _names(work: _Slots) -> str:
        names = [f"{virtual_handle(i):#010x}" for i, h in enumerate(work.objects) if h != FREE]
        return ", ".join(names) or "none"


class _Gone(DeviceError):
    """A context the TPM no longer has (``-ENOENT`` inside tpm2-space.c)."""


def _flush(send: Send, handle: int) -> None:
    """``tpm2_flush_context``: its result is ignored, as the kernel's is."""
    send(commands.flush_context(handle))


def _flush_loaded(work: _Slots, send: Send) -> None:
    """``tpm2_flush_space``: what a failed sequence left loaded (objects and sessions).

    Best effort: the failure may be the TPM itself (powered off), which holds nothing."""
    for handle in [h for h in work.objects if h not in (FREE, SAVED)] + \
            [h for h in work.sessions if h != FREE]:
        try:
            _flush(send, handle)
        except Exception:  # the original failure is what the caller reports
            return
