"""SEV guest contexts and the firmware's guest commands (the launch state machine).

Owns: the guest context (handle, policy, ASID, VEK, TEK/TIK, launch digest, guest memory),
the guest state machine (:data:`ALLOWED`: state -> commands, looked up by every command),
LAUNCH_START's session checks, the memory encryption of LAUNCH_UPDATE_DATA/VMSA, LAUNCH_SECRET
and DBG_*, and the host's plain view of guest memory.  Must not know: platform keys' making
(:mod:`vdev.sev.platform` gives the PDH), the formulas (:mod:`vdev.sev.session`), files, FUSE.

Theory of operation: each command runs :meth:`Guests._enter` first (platform state →
INVALID_PLATFORM_STATE, handle → INVALID_GUEST, guest state → INVALID_GUEST_STATE), then
checks its inputs, and only then changes anything: a refused command changes nothing.  A
context exists from LAUNCH_START (UNINIT → LUPDATE) until DECOMMISSION, so the UNINIT state is
the absence of a context (handle 0 asks for a new one).

Guest memory is a ``bytearray`` the context owns, addressed from 0 (a guest physical address
is an offset in it).  The hypervisor writes plaintext into it (:meth:`Guests.host_write`);
LAUNCH_UPDATE_DATA extends the launch digest with that plaintext and encrypts the range in
place, one SHA-256 update and one AES call per command, no copy
(:func:`vdev.sev.crypto.memory_crypt_in_place`; the bytearray has 16 spare bytes after the
guest's RAM for it).  Not thread-safe: a caller that runs commands off its event loop runs
them one at a time, in order.

Choices where the spec leaves room: the debug commands are allowed in every launched state
(LUPDATE, LSECRET, RUNNING) unless the policy has NODBG; a bad WRAP_MAC or secret MAC is
BAD_MEASUREMENT, a POLICY_MAC over another policy POLICY_FAILURE; DECOMMISSION of an active
guest is ACTIVE (KVM deactivates first); LAUNCH_UPDATE_VMSA needs policy ES.
The seed's 2016 draft (a DH public key and a nonce, no wrapped keys) is LAUNCH_START with
``nonce`` and no session: TEK and TIK are then the derived KEK and KIK.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.hazmat.primitives import hashes

from vdev.errors import DeviceError
from vdev.sev import session as proto
from vdev.sev.cert import Algo, Certificate, Usage
from vdev.sev.crypto import (
    BLOCK,
    KEY_LEN,
    MEMORY_SLACK,
    aes128_ctr,
    ecdh_shared_x,
    macs_equal,
    memory_crypt,
    memory_crypt_in_place,
    sha256_context,
)
from vdev.sev.platform import GUEST, SevPlatform
from vdev.sev.status import SevError, Status

PAGE = 4096
VMSA_LEN = 4096
SECRET_MAX = 16 * 1024  # the kernel caps LAUNCH_SECRET blobs at 16 KiB
MAX_ASID = 509
MAX_MEMORY = 1 << 40


class Policy:
    """Guest policy bits (u32)."""

    NODBG = 1 << 0
    NOKS = 1 << 1
    ES = 1 << 2
    NOSEND = 1 << 3
    DOMAIN = 1 << 4
    SEV = 1 << 5

    @staticmethod
    def api_minimum(policy: int) -> tuple[int, int]:
        return (policy >> 16) & 0xFF, (policy >> 24) & 0xFF


class GuestState(IntEnum):
    UNINIT = 0
    LUPDATE = 1
    LSECRET = 2
    RUNNING = 3
    SUPDATE = 4
    RUPDATE = 5
    SENT = 6


_LIFECYCLE = {"ACTIVATE", "DEACTIVATE", "DECOMMISSION", "GUEST_STATUS"}
_DEBUG = {"DBG_DECRYPT", "DBG_ENCRYPT"}
ALLOWED: dict[GuestState, frozenset[str]] = {
    GuestState.UNINIT: frozenset({"LAUNCH_START"}),
    GuestState.LUPDATE: frozenset(
        {"LAUNCH_UPDATE_DATA", "LAUNCH_UPDATE_VMSA", "LAUNCH_MEASURE"} | _LIFECYCLE | _DEBUG
    ),
    GuestState.LSECRET: frozenset({"LAUNCH_SECRET", "LAUNCH_FINISH"} | _LIFECYCLE | _DEBUG),
    GuestState.RUNNING: frozenset(_LIFECYCLE | _DEBUG),
}
# The guest commands this firmware implements (SEND_*/RECEIVE_* are not emulated).
COMMANDS = frozenset().union(*ALLOWED.values())


@dataclass(eq=False)
class Guest:
    """One guest context.  TEK, TIK and the launch digest exist until LAUNCH_FINISH."""

    handle: int
    policy: int
    vek: bytes
    size: int  # guest RAM in bytes; ``memory`` has MEMORY_SLACK more for in-place crypto
    memory: bytearray
    tek: bytes | None
    tik: bytes | None
    state: GuestState = GuestState.LUPDATE
    asid: int = 0
    digest_ctx: hashes.Hash | None = field(default_factory=sha256_context)
    launch_digest: bytes | None = None
    measure: bytes | None = None


@dataclass(frozen=True)
class GuestStatus:
    """GUEST_STATUS: ``struct kvm_sev_guest_status {u32 handle, policy, state}`` + ASID."""

    handle: int
    policy: int
    asid: int
    state: GuestState


class Guests:
    """The firmware's guest commands over the guest table of one :class:`SevPlatform`."""

    def __init__(self, platform: SevPlatform) -> None:
        self.platform = platform

    # -- lookup and checks -----------------------------------------------------------------

    def _enter(self, command: str, handle: int) -> Guest:
        self.platform.check(command, GUEST)
        guest = self.platform.guests.get(handle)
        if guest is None:
            raise SevError(Status.INVALID_GUEST, f"{command}: no guest with handle {handle}")
        if command not in ALLOWED[guest.state]:
            raise SevError(
                Status.INVALID_GUEST_STATE,
                f"{command}: not allowed while guest {handle} is {guest.state.name}",
            )
        return guest

    @staticmethod
    def _range(command: str, guest: Guest, address: int, length: int) -> slice:
        """A 16-byte aligned, non-empty range inside guest memory."""
        if address < 0 or address % BLOCK:
            raise SevError(
                Status.INVALID_ADDRESS, f"{command}: address {address:#x} is not 16-byte aligned"
            )
        if length <= 0 or length % BLOCK:
            raise SevError(
                Status.INVALID_LENGTH,
                f"{command}: length {length} is not a positive multiple of 16",
            )
        if address + length > guest.size:
            raise SevError(
                Status.INVALID_ADDRESS,
                f"{command}: {address:#x}+{length:#x} is beyond guest memory "
                f"({guest.size:#x} bytes)",
            )
        return slice(address, address + length)

    # -- launch ----------------------------------------------------------------------------

    def launch_start(
        self,
        *,
        policy: int,
        memory_size: int,
        handle: int = 0,
        godh_cert: bytes | None = None,
        session: bytes | None = None,
        nonce: bytes | None = None,
    ) -> int:
        """LAUNCH_START: a new guest context in LUPDATE; returns its handle.

        ``handle`` ≠ 0 shares that guest's VEK (same policy, NOKS clear).  With ``godh_cert``
        and ``session`` the owner's wrapped TEK/TIK are unwrapped after both MACs check; with
        ``godh_cert`` and ``nonce`` (the 2016 draft) TEK/TIK are the derived KEK/KIK; with
        neither the firmware picks TEK/TIK.  ``memory_size`` is the guest's RAM (the
        hypervisor's, not a firmware parameter): a positive multiple of 4096.
        """
        command = "LAUNCH_START"
        self.platform.check(command, GUEST)
        source = None
        if handle:
            source = self.platform.guests.get(handle)
            if source is None:
                raise SevError(Status.INVALID_GUEST, f"{command}: no guest with handle {handle}")
        self._check_policy(policy, source)
        if not 0 < memory_size <= MAX_MEMORY or memory_size % PAGE:
            raise SevError(
                Status.INVALID_PARAM,
                f"{command}: memory size {memory_size} is not a positive multiple of 4096 "
                f"up to {MAX_MEMORY}",
            )
        keys = self._transport_keys(policy, godh_cert, session, nonce)
        try:
            memory = bytearray(memory_size + MEMORY_SLACK)
        except MemoryError:
            raise SevError(
                Status.RESOURCE_LIMIT, f"{command}: no room for {memory_size} bytes of guest memory"
            ) from None
        guest = Guest(
            handle=self.platform.allocate_handle(),
            policy=policy,
            vek=source.vek if source is not None else os.urandom(KEY_LEN),
            size=memory_size,
            memory=memory,
            tek=keys.tek,
            tik=keys.tik,
        )
        self.platform.guests[guest.handle] = guest
        return guest.handle

    def _check_policy(self, policy: int, source: Guest | None) -> None:
        command = "LAUNCH_START"
        if not 0 <= policy <= 0xFFFFFFFF:
            raise SevError(Status.INVALID_PARAM, f"{command}: policy {policy:#x} is not a u32")
        minimum = Policy.api_minimum(policy)
        if minimum > self.platform.api:
            raise SevError(
                Status.POLICY_FAILURE,
                f"{command}: policy {policy:#x} needs API {minimum[0]}.{minimum[1]}, the "
                f"firmware is {self.platform.api[0]}.{self.platform.api[1]}",
            )
        if policy & Policy.ES and not self.platform.config_es:
            raise SevError(
                Status.POLICY_FAILURE,
                f"{command}: policy {policy:#x} requires SEV-ES, the platform was not "
                "initialized with CONFIG_ES",
            )
        if source is None:
            return
        if (policy | source.policy) & Policy.NOKS:
            raise SevError(
                Status.POLICY_FAILURE,
                f"{command}: guest {source.handle}'s key cannot be shared: NOKS is set in "
                f"policy {source.policy:#x} or {policy:#x}",
            )
        if policy != source.policy:
            raise SevError(
                Status.POLICY_FAILURE,
                f"{command}: sharing guest {source.handle}'s key needs its policy "
                f"{source.policy:#x}, not {policy:#x}",
            )

    def _transport_keys(
        self, policy: int, godh_cert: bytes | None, session: bytes | None, nonce: bytes | None
    ) -> proto.TransportKeys:
        command = "LAUNCH_START"
        if godh_cert is None:
            if session is not None or nonce is not None:
                raise SevError(
                    Status.INVALID_PARAM, f"{command}: a session or nonce needs a GODH certificate"
                )
            return proto.TransportKeys(os.urandom(KEY_LEN), os.urandom(KEY_LEN))
        if (session is None) == (nonce is None):
            raise SevError(
                Status.INVALID_PARAM,
                f"{command}: a GODH certificate needs either a session blob or a draft nonce",
            )
        if session is not None and len(session) != proto.SESSION_LEN:
            raise SevError(
                Status.INVALID_LENGTH,
                f"{command}: session blob of {len(session)} bytes, need {proto.SESSION_LEN:#x}",
            )
        if nonce is not None and len(nonce) != proto.NONCE_LEN:
            raise SevError(
                Status.INVALID_LENGTH, f"{command}: nonce of {len(nonce)} bytes, need 16"
            )
        godh = Certificate.from_bytes(godh_cert, f"{command}: GODH certificate")
        if godh.usage != Usage.PDH or godh.algo not in (Algo.ECDH_SHA256, Algo.ECDH_SHA384):
            raise SevError(
                Status.INVALID_CERTIFICATE,
                f"{command}: GODH certificate has usage {godh.usage:#x} algo {godh.algo:#x}, "
                "need PDH 0x1003 with ECDH",
            )
        peer = godh.public_key(f"{command}: GODH certificate")
        pdh_private = self.platform.pdh_key().private
        assert pdh_private is not None
        shared = ecdh_shared_x(pdh_private, peer)
        if session is None:
            assert nonce is not None
            wrap = proto.derive_wrap_keys(shared, nonce)
            return proto.TransportKeys(wrap.kek, wrap.kik)
        blob = proto.SessionBlob.from_bytes(session)
        wrap = proto.derive_wrap_keys(shared, blob.nonce)
        if not macs_equal(proto.wrap_mac(wrap, blob), blob.wrap_mac):
            raise SevError(
                Status.BAD_MEASUREMENT,
                f"{command}: session WRAP_MAC does not match (wrong PDH, nonce or tampered keys)",
            )
        keys = proto.unwrap_session(wrap, blob)
        if not macs_equal(proto.policy_mac(keys.tik, policy), blob.policy_mac):
            raise SevError(
                Status.POLICY_FAILURE,
                f"{command}: session POLICY_MAC is not over policy {policy:#x}",
            )
        return keys

    def launch_update_data(self, handle: int, address: int, length: int) -> None:
        """LAUNCH_UPDATE_DATA: extend the launch digest with the plaintext, encrypt in place."""
        guest = self._enter("LAUNCH_UPDATE_DATA", handle)
        span = self._range("LAUNCH_UPDATE_DATA", guest, address, length)
        self._measure_and_encrypt(guest, span)

    def launch_update_vmsa(self, handle: int, address: int) -> None:
        """LAUNCH_UPDATE_VMSA: one vCPU's 4096-byte VMSA, measured and encrypted (SEV-ES)."""
        command = "LAUNCH_UPDATE_VMSA"
        guest = self._enter(command, handle)
        if not guest.policy & Policy.ES:
            raise SevError(
                Status.POLICY_FAILURE,
                f"{command}: guest {handle}'s policy {guest.policy:#x} is not SEV-ES",
            )
        if address % PAGE:
            raise SevError(
                Status.INVALID_ADDRESS, f"{command}: VMSA address {address:#x} is not page aligned"
            )
        self._measure_and_encrypt(guest, self._range(command, guest, address, VMSA_LEN))

    @staticmethod
    def _measure_and_encrypt(guest: Guest, span: slice) -> None:
        assert guest.digest_ctx is not None
        with memoryview(guest.memory) as view:
            guest.digest_ctx.update(view[span])
        memory_crypt_in_place(guest.vek, guest.memory, span.start, span.stop - span.start)

    def launch_measure(self, handle: int) -> bytes:
        """LAUNCH_MEASURE: ``MEASURE[32] || MNONCE[16]``; the guest moves to LSECRET."""
        guest = self._enter("LAUNCH_MEASURE", handle)
        assert guest.digest_ctx is not None and guest.tik is not None
        digest = guest.digest_ctx.finalize()
        mnonce = os.urandom(proto.MNONCE_LEN)
        measure = proto.measure(
            guest.tik, self.platform.api, self.platform.build, guest.policy, digest, mnonce
        )
        guest.digest_ctx, guest.launch_digest, guest.measure = None, digest, measure
        guest.state = GuestState.LSECRET
        return measure + mnonce

    def launch_secret(
        self,
        handle: int,
        header: bytes,
        address: int,
        trans: bytes,
        guest_length: int | None = None,
    ) -> None:
        """LAUNCH_SECRET: check the header's MAC, decrypt with TEK, write under the VEK."""
        command = "LAUNCH_SECRET"
        guest = self._enter(command, handle)
        if len(header) != proto.SECRET_HEADER_LEN:
            raise SevError(
                Status.INVALID_LENGTH,
                f"{command}: header of {len(header)} bytes, need {proto.SECRET_HEADER_LEN}",
            )
        head = proto.SecretHeader.from_bytes(header)
        if head.flags & proto.SECRET_FLAG_COMPRESSED:
            raise SevError(
                Status.UNSUPPORTED, f"{command}: FLAGS {head.flags:#x}: COMPRESSED is not supported"
            )
        if head.flags:
            raise SevError(
                Status.INVALID_PARAM, f"{command}: FLAGS {head.flags:#x} has unknown bits"
            )
        guest_length = len(trans) if guest_length is None else guest_length
        if guest_length != len(trans) or len(trans) > SECRET_MAX:
            raise SevError(
                Status.INVALID_LENGTH,
                f"{command}: guest length {guest_length} and transport length {len(trans)} "
                f"must be equal and at most {SECRET_MAX}",
            )
        span = self._range(command, guest, address, len(trans))
        assert guest.tik is not None and guest.tek is not None and guest.measure is not None
        expected = proto.secret_mac(
            guest.tik, head.flags, head.iv, guest_length, trans, guest.measure, self.platform.api
        )
        if not macs_equal(expected, head.mac):
            raise SevError(
                Status.BAD_MEASUREMENT,
                f"{command}: header MAC does not match this launch's measurement and TIK",
            )
        guest.memory[span] = aes128_ctr(guest.tek, head.iv, trans)
        memory_crypt_in_place(guest.vek, guest.memory, address, len(trans))

    def launch_finish(self, handle: int) -> None:
        """LAUNCH_FINISH: RUNNING; TEK, TIK and the launch digest are zeroed."""
        guest = self._enter("LAUNCH_FINISH", handle)
        guest.tek = guest.tik = guest.launch_digest = guest.measure = None
        guest.state = GuestState.RUNNING

    # -- lifecycle -------------------------------------------------------------------------

    def guest_status(self, handle: int) -> GuestStatus:
        guest = self._enter("GUEST_STATUS", handle)
        return GuestStatus(guest.handle, guest.policy, guest.asid, guest.state)

    def activate(self, handle: int, asid: int) -> None:
        """ACTIVATE: bind an ASID (1..MAX_ASID, not another guest's)."""
        command = "ACTIVATE"
        guest = self._enter(command, handle)
        if not 1 <= asid <= MAX_ASID:
            raise SevError(Status.INVALID_ASID, f"{command}: ASID {asid} is not in 1..{MAX_ASID}")
        if guest.asid and guest.asid != asid:
            raise SevError(
                Status.ACTIVE, f"{command}: guest {handle} is already active on ASID {guest.asid}"
            )
        for other in self.platform.guests.values():
            if other is not guest and other.asid == asid:
                raise SevError(
                    Status.ASID_OWNED, f"{command}: ASID {asid} belongs to guest {other.handle}"
                )
        guest.asid = asid

    def deactivate(self, handle: int) -> None:
        self._enter("DEACTIVATE", handle).asid = 0

    def decommission(self, handle: int) -> None:
        """DECOMMISSION: delete the context (the last one moves the platform to INIT)."""
        guest = self._enter("DECOMMISSION", handle)
        if guest.asid:
            raise SevError(
                Status.ACTIVE,
                f"DECOMMISSION: guest {handle} is active on ASID {guest.asid} (DEACTIVATE first)",
            )
        del self.platform.guests[handle]

    # -- debug -----------------------------------------------------------------------------

    def _debug(self, command: str, handle: int, address: int, length: int) -> tuple[Guest, slice]:
        guest = self._enter(command, handle)
        if guest.policy & Policy.NODBG:
            raise SevError(
                Status.POLICY_FAILURE,
                f"{command}: guest {handle}'s policy {guest.policy:#x} has NODBG",
            )
        return guest, self._range(command, guest, address, length)

    def dbg_decrypt(self, handle: int, address: int, length: int) -> bytes:
        """DBG_DECRYPT: guest memory as the guest sees it (16-byte granularity)."""
        guest, span = self._debug("DBG_DECRYPT", handle, address, length)
        with memoryview(guest.memory) as whole:
            return memory_crypt(guest.vek, address, whole[span])

    def dbg_encrypt(self, handle: int, address: int, data: bytes) -> None:
        """DBG_ENCRYPT: write ``data`` into guest memory under the VEK."""
        guest, span = self._debug("DBG_ENCRYPT", handle, address, len(data))
        guest.memory[span] = data
        memory_crypt_in_place(guest.vek, guest.memory, address, len(data))

    # -- the hypervisor's plain access to guest RAM (no firmware involved) -----------------

    def host_read(self, handle: int, address: int, length: int) -> bytes:
        """What the host sees at ``address`` (ciphertext where the guest's memory is
        encrypted); like a file read, short at the end of memory."""
        guest = self._guest(handle)
        end = min(address + max(length, 0), guest.size)
        return bytes(guest.memory[address:end])

    def host_write(self, handle: int, address: int, data: bytes) -> None:
        """The host writes ``data`` at ``address`` (plaintext, as a loader would)."""
        guest = self._guest(handle)
        if address < 0 or address + len(data) > guest.size:
            raise DeviceError(
                errno.EFBIG,
                f"guest {handle} memory: {address:#x}+{len(data):#x} is beyond its "
                f"{guest.size:#x} bytes",
            )
        guest.memory[address : address + len(data)] = data

    def _guest(self, handle: int) -> Guest:
        guest = self.platform.guests.get(handle)
        if guest is None:
            raise SevError(Status.INVALID_GUEST, f"guest memory: no guest with handle {handle}")
        return guest
