"""The SEV platform: its state machine, its keys and the platform commands.

Owns: platform state (UNINIT, INIT, WORKING), which command each state allows (the
:data:`ALLOWED` table, looked up by every command), the persistent keys (OCA, PEK, PDH,
ownership) and their export/restore, the guest table's existence (the guests themselves are
:mod:`vdev.sev.guest`'s).  Must not know: the launch protocol, files, FUSE, trio.

Theory of operation: every command first checks :data:`ALLOWED` for the current state, then
its inputs, and only then changes anything, so a refused command changes nothing.  WORKING is
INIT with at least one guest context: the state is derived from the guest table rather than
stored twice.  The CEK comes from the chip's unique seed (fused on hardware), so it is the
same after PLATFORM_RESET and across restarts; OCA, PEK, PDH and ownership are the persistent
state PLATFORM_RESET wipes and :meth:`SevPlatform.export_state` saves.

Choices where the spec leaves room (documented, tested): PEK_GEN on an externally owned
platform makes it self-owned again (a new PEK needs an OCA signature the platform can only
make with its own OCA); PEK_CERT_IMPORT on an owned platform is ALREADY_OWNED.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from vdev.sev import keys
from vdev.sev.cert import Certificate, Usage
from vdev.sev.keys import KeyPair
from vdev.sev.status import SevError, Status

if TYPE_CHECKING:
    from vdev.sev.guest import Guest

API_VERSION = (0, 24)
BUILD = 15
ID_LEN = 64  # GET_ID: 64 bytes per socket
SOCKETS = 1
FLAG_OWNER = 0x1
FLAG_CONFIG_ES = 0x100
STATE_FORMAT = 1


class PlatformState(IntEnum):
    UNINIT = 0
    INIT = 1
    WORKING = 2


# A guest command is allowed wherever "GUEST" is (INIT and WORKING).
GUEST = "GUEST"
ALLOWED: dict[PlatformState, frozenset[str]] = {
    PlatformState.UNINIT: frozenset({"INIT", "PLATFORM_RESET", "PLATFORM_STATUS", "GET_ID"}),
    PlatformState.INIT: frozenset(
        {
            "SHUTDOWN",
            "PLATFORM_STATUS",
            "PEK_GEN",
            "PEK_CSR",
            "PEK_CERT_IMPORT",
            "PDH_GEN",
            "PDH_CERT_EXPORT",
            "GET_ID",
            GUEST,
        }
    ),
    PlatformState.WORKING: frozenset(
        {"SHUTDOWN", "PLATFORM_STATUS", "PDH_GEN", "PDH_CERT_EXPORT", "GET_ID", GUEST}
    ),
}


@dataclass(frozen=True)
class PlatformStatus:
    api_major: int
    api_minor: int
    state: PlatformState
    flags: int
    build: int
    guest_count: int

    @property
    def owner(self) -> bool:
        return bool(self.flags & FLAG_OWNER)

    def to_bytes(self) -> bytes:
        """The kernel's packed ``struct sev_user_data_status`` (12 bytes)."""
        return struct.pack(
            "<BBBIBI",
            self.api_major,
            self.api_minor,
            self.state,
            self.flags,
            self.build,
            self.guest_count,
        )


@dataclass(frozen=True)
class PdhExport:
    """PDH_CERT_EXPORT's answer: the PDH certificate and the chain PEK || OCA || CEK."""

    pdh: bytes
    chain: bytes


class SevPlatform:
    """One emulated AMD Secure Processor running SEV firmware."""

    def __init__(self, chip_seed: bytes | None = None, *, config_es: bool = True) -> None:
        # config_es: INIT with SEV-ES enabled, as Linux does on every ES-capable part.
        self.chip_seed = chip_seed if chip_seed is not None else os.urandom(32)
        self.api = API_VERSION
        self.build = BUILD
        self.sockets = SOCKETS
        self.config_es = config_es
        self.guests: dict[int, Guest] = {}
        self._next_handle = 1
        self._initialized = False
        self._cek: KeyPair | None = None
        self.oca: KeyPair | None = None
        self.pek: KeyPair | None = None
        self.pdh: KeyPair | None = None
        self.owned = False

    # -- state machine ---------------------------------------------------------------------

    @property
    def state(self) -> PlatformState:
        if not self._initialized:
            return PlatformState.UNINIT
        return PlatformState.WORKING if self.guests else PlatformState.INIT

    def check(self, command: str, allowed: str | None = None) -> None:
        """Refuse ``command`` unless the current state allows it (``allowed`` is the table
        entry to look up, GUEST for guest commands)."""
        if (allowed or command) not in ALLOWED[self.state]:
            raise SevError(
                Status.INVALID_PLATFORM_STATE,
                f"{command}: not allowed while the platform is {self.state.name}",
            )

    @property
    def cek(self) -> KeyPair:
        if self._cek is None:
            self._cek = keys.make_cek(self.chip_seed, self.api)
        return self._cek

    def allocate_handle(self) -> int:
        """A guest handle never used on this platform before (0 means "new guest")."""
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def pdh_key(self) -> KeyPair:
        """The PDH a LAUNCH_START agrees its session with (INIT made sure it exists)."""
        assert self.pdh is not None, "guest commands run only after INIT"
        return self.pdh

    # -- platform commands -----------------------------------------------------------------

    def init(self) -> None:
        """INIT: derive the CEK, and create the OCA, PEK and PDH that are missing."""
        self.check("INIT")
        if self.oca is None:
            self.oca = keys.make_oca(self.api)
            self.owned = False
            self.pek = None
        if self.pek is None:
            self.pek = keys.make_pek(self.oca, self.cek, self.api)
            self.pdh = None
        if self.pdh is None:
            self.pdh = keys.make_pdh(self.pek, self.api)
        self._initialized = True

    def shutdown(self) -> None:
        """SHUTDOWN: back to UNINIT; every guest context is lost, the keys stay."""
        self.check("SHUTDOWN")
        self.guests.clear()
        self._initialized = False

    def platform_reset(self) -> None:
        """PLATFORM_RESET: wipe the persistent state (OCA, PEK, PDH, ownership)."""
        self.check("PLATFORM_RESET")
        self.oca = self.pek = self.pdh = None
        self.owned = False

    def platform_status(self) -> PlatformStatus:
        self.check("PLATFORM_STATUS")
        flags = (FLAG_OWNER if self.owned else 0) | (FLAG_CONFIG_ES if self.config_es else 0)
        return PlatformStatus(
            self.api[0], self.api[1], self.state, flags, self.build, len(self.guests)
        )

    def pek_gen(self) -> None:
        """PEK_GEN: a new self-signed OCA, PEK and PDH; the platform is self-owned after it."""
        self.check("PEK_GEN")
        self.oca = keys.make_oca(self.api)
        self.owned = False
        self.pek = keys.make_pek(self.oca, self.cek, self.api)
        self.pdh = keys.make_pdh(self.pek, self.api)

    def pek_csr(self) -> bytes:
        """PEK_CSR: the PEK certificate with both signature slots empty."""
        self.check("PEK_CSR")
        assert self.pek is not None
        return self.pek.cert.unsigned().to_bytes()

    def pek_cert_import(self, pek_cert: bytes, oca_cert: bytes) -> None:
        """PEK_CERT_IMPORT: take ownership with the owner's OCA and the PEK it signed."""
        self.check("PEK_CERT_IMPORT")
        assert self.pek is not None and self.pek.private is not None
        if self.owned:
            raise SevError(
                Status.ALREADY_OWNED, "PEK_CERT_IMPORT: the platform already has an owner"
            )
        oca = Certificate.from_bytes(oca_cert, "PEK_CERT_IMPORT: OCA certificate")
        pek = Certificate.from_bytes(pek_cert, "PEK_CERT_IMPORT: PEK certificate")
        if oca.usage != Usage.OCA or pek.usage != Usage.PEK:
            raise SevError(
                Status.INVALID_CERTIFICATE,
                f"PEK_CERT_IMPORT: usages {oca.usage:#x}/{pek.usage:#x}, need OCA 0x1001 "
                "and PEK 0x1002",
            )
        if (pek.qx, pek.qy) != (self.pek.cert.qx, self.pek.cert.qy):
            raise SevError(
                Status.INVALID_CERTIFICATE,
                "PEK_CERT_IMPORT: the PEK certificate is not for this platform's PEK "
                "(sign the CSR from PEK_CSR)",
            )
        if not oca.is_signed_by(oca):
            raise SevError(
                Status.BAD_SIGNATURE, "PEK_CERT_IMPORT: the OCA certificate is not self-signed"
            )
        if not pek.is_signed_by(oca):
            raise SevError(
                Status.BAD_SIGNATURE,
                "PEK_CERT_IMPORT: the PEK certificate carries no valid signature by the OCA",
            )
        cek_private = self.cek.private
        assert cek_private is not None
        # The CEK signs the slot the owner's OCA signature does not occupy.
        pek = pek.signed(2 if pek.sig1.usage == Usage.OCA else 1, Usage.CEK, cek_private)
        self.oca = KeyPair(None, oca)
        self.pek = KeyPair(self.pek.private, pek)
        self.pdh = keys.make_pdh(self.pek, self.api)
        self.owned = True

    def pdh_gen(self) -> None:
        self.check("PDH_GEN")
        assert self.pek is not None
        self.pdh = keys.make_pdh(self.pek, self.api)

    def pdh_cert_export(self) -> PdhExport:
        self.check("PDH_CERT_EXPORT")
        assert self.pdh is not None and self.pek is not None and self.oca is not None
        chain = self.pek.cert.to_bytes() + self.oca.cert.to_bytes() + self.cek.cert.to_bytes()
        return PdhExport(self.pdh.cert.to_bytes(), chain)

    def get_id(self, length: int | None = None) -> bytes:
        """GET_ID2: the chip's ids, 64 bytes per socket; a shorter buffer (0 asks for the
        size) is INVALID_LENGTH with the length needed."""
        self.check("GET_ID")
        length = ID_LEN * self.sockets if length is None else length
        needed = ID_LEN * self.sockets
        if length < needed:
            raise SevError(
                Status.INVALID_LENGTH,
                f"GET_ID: buffer of {length} bytes, {needed} needed",
                needed=needed,
            )
        # On hardware each socket's id comes from its chip's fused secret, as the CEK does.
        return b"".join(self._socket_id(socket) for socket in range(self.sockets))

    def _socket_id(self, socket: int) -> bytes:
        label = b"GET_ID" if socket == 0 else b"GET_ID/%d" % socket
        chip_id = keys.derive_private_key(self.chip_seed, label).public_key()
        return chip_id.public_numbers().x.to_bytes(48, "big").ljust(ID_LEN, b"\x00")

    # -- durable state ---------------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The persistent part as JSON data: chip seed, OCA/PEK/PDH (keys and certificates),
        ownership.  Guests are not part of it: they do not survive a restart (as on
        hardware), and neither does INIT (a restarted platform is UNINIT)."""

        def pair(kp: KeyPair | None) -> dict[str, Any] | None:
            if kp is None:
                return None
            scalar = kp.private_scalar()
            return {
                "private": None if scalar is None else f"{scalar:096x}",
                "cert": kp.cert.to_bytes().hex(),
            }

        return {
            "format": STATE_FORMAT,
            "chip_seed": self.chip_seed.hex(),
            "config_es": self.config_es,
            "owned": self.owned,
            "oca": pair(self.oca),
            "pek": pair(self.pek),
            "pdh": pair(self.pdh),
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> SevPlatform:
        """A platform (UNINIT) with the persistent part of :meth:`export_state` back.
        Malformed data raises ``ValueError`` naming the key."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError(f"sev state: format must be {STATE_FORMAT}")
        try:
            seed = bytes.fromhex(data["chip_seed"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("sev state: chip_seed must be a hex string") from None
        platform = cls(seed, config_es=bool(data.get("config_es", True)))
        platform.owned = bool(data.get("owned", False))
        for name in ("oca", "pek", "pdh"):
            setattr(platform, name, _pair_from_state(name, data.get(name)))
        if platform.oca is not None and platform.oca.private is None and platform.pek is None:
            raise ValueError("sev state: an owner's OCA without its PEK cannot be restored")
        return platform


def _pair_from_state(name: str, value: Any) -> KeyPair | None:
    if value is None:
        return None
    try:
        cert = Certificate.from_bytes(bytes.fromhex(value["cert"]), f"sev state: {name}.cert")
        private = value["private"]
        key = None if private is None else keys.key_from_scalar(int(private, 16))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"sev state: {name}: {err}") from None
    except SevError as err:
        raise ValueError(err.message) from None
    if key is not None and key.public_key().public_numbers().x != cert.qx:
        raise ValueError(f"sev state: {name}: private key does not match its certificate")
    return KeyPair(key, cert)
