"""The seed's ``[sev-launch]`` configuration file (QEMU RFC 2016, ``-sev config=FILE``).

Owns: parsing and writing the file, each key's meaning in today's SEV API, and refusing
malformed input with a ``ValueError`` whose message names the key.  Must not know: the
firmware (the node layer hands :class:`LaunchConfig` to
:meth:`vdev.sev.guest.Guests.launch_start`), files, FUSE.

Syntax is QEMU's config-file syntax as ``qemu_config_parse`` reads it: a ``[sev-launch]``
group header, then ``name = "value"`` lines (the value double-quoted), ``#`` comments and
blank lines.  Example (the seed's)::

    [sev-launch]
    flags = "00000000"
    policy = "000000"
    dh_pub_qx = "0123456789abcdef0123456789abcdef"
    dh_pub_qy = "0123456789abcdef0123456789abcdef"
    nonce = "0123456789abcdef"
    vcpu_count = "1"
    vcpu_length = "30"
    vcpu_mask = "00ab"

Mapping of each key (every key is optional; a key given twice is refused):

- ``flags``: hex u32, the draft LAUNCH_START flags.  Upstream dropped them: key sharing is now
  a non-zero handle with NOKS clear, which this file cannot name, so only 0 is accepted.
- ``policy``: hex u32 (at most 8 digits), the guest policy (NODBG bit 0, NOKS 1, ES 2, ...).
- ``dh_pub_qx``, ``dh_pub_qy``: hex bytes, the guest owner's Diffie-Hellman public key, each
  coordinate little-endian as in every SEV structure (at most 72 bytes, only 48 count on
  P-384).  Both or neither; the point must be on P-384.  It becomes the GODH certificate.
- ``nonce``: hex bytes, at most 16, zero-padded to the session NONCE[16]; required with a DH
  key.  The draft wraps no keys: TEK and TIK are the KEK and KIK both sides derive from the DH
  secret and this nonce (:func:`vdev.sev.owner.build_draft_launch`).  Without a DH key the
  firmware picks TEK/TIK itself (nothing to attest against).
- ``vcpu_count``, ``vcpu_length``: numbers (decimal, or ``0x`` hex, as QEMU_OPT_NUMBER), the
  draft LAUNCH_FINISH's vCPU count and per-vCPU state length; ``vcpu_mask``: hex bytes, a
  mask QEMU copies into a ``vcpu_length`` buffer, so it may not be longer.  SEV (non-ES)
  measures no vCPU state and upstream dropped these keys: they are kept and shown, not
  measured (SEV-ES measures VMSAs with LAUNCH_UPDATE_VMSA instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vdev.sev.cert import Algo, Certificate, Usage
from vdev.sev.crypto import COORD_LEN, le_bytes, le_int
from vdev.sev.session import NONCE_LEN
from vdev.sev.status import SevError

GROUP = "sev-launch"
KEYS = (
    "flags",
    "policy",
    "dh_pub_qx",
    "dh_pub_qy",
    "nonce",
    "vcpu_count",
    "vcpu_length",
    "vcpu_mask",
)
_LINE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*"([^"]*)"\s*')
_GROUP = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*")
_HEX = re.compile(r"[0-9A-Fa-f]*")


@dataclass(frozen=True)
class LaunchConfig:
    """A validated ``[sev-launch]`` file."""

    flags: int = 0
    policy: int = 0
    dh_pub: tuple[int, int] | None = None  # (qx, qy)
    nonce: bytes | None = None  # 16 bytes when dh_pub is set
    vcpu_count: int | None = None
    vcpu_length: int | None = None
    vcpu_mask: bytes | None = None

    @classmethod
    def for_owner(cls, policy: int, godh_cert: bytes, nonce: bytes) -> LaunchConfig:
        """The file an owner writes for its GODH key and nonce (sevctl's inputs, the seed's
        format)."""
        godh = Certificate.from_bytes(godh_cert, "GODH certificate")
        return cls(policy=policy, dh_pub=(godh.qx, godh.qy), nonce=nonce)

    def godh_cert(self) -> bytes | None:
        """The DH key as the GODH certificate LAUNCH_START takes (None: firmware keys)."""
        if self.dh_pub is None:
            return None
        qx, qy = self.dh_pub
        return Certificate(Usage.PDH, Algo.ECDH_SHA256, qx, qy).to_bytes()

    def to_text(self) -> str:
        """The file, in the seed's format (what the owner CLI writes)."""
        lines = [f"[{GROUP}]", f'flags = "{self.flags:08x}"', f'policy = "{self.policy:08x}"']
        if self.dh_pub is not None and self.nonce is not None:
            qx, qy = self.dh_pub
            lines += [
                f'dh_pub_qx = "{le_bytes(qx, 48).hex()}"',
                f'dh_pub_qy = "{le_bytes(qy, 48).hex()}"',
                f'nonce = "{self.nonce.hex()}"',
            ]
        if self.vcpu_count is not None:
            lines.append(f'vcpu_count = "{self.vcpu_count}"')
        if self.vcpu_length is not None:
            lines.append(f'vcpu_length = "{self.vcpu_length}"')
        if self.vcpu_mask is not None:
            lines.append(f'vcpu_mask = "{self.vcpu_mask.hex()}"')
        return "\n".join(lines) + "\n"


def parse_launch_config(text: str) -> LaunchConfig:
    """Parse and validate; a mistake raises ``ValueError`` naming the key (or line)."""
    values = _read_group(text)
    flags = _hex_u32(values, "flags")
    if flags:
        raise ValueError(
            f"flags: {flags:#x}: the 2016 draft's LAUNCH_START flags (key sharing) have no "
            "equivalent without a guest handle; only 0 is accepted"
        )
    policy = _hex_u32(values, "policy")
    dh_pub = _dh_pub(values)
    nonce = _hex_bytes(values, "nonce", NONCE_LEN)
    if dh_pub is not None and nonce is None:
        raise ValueError("nonce: required with dh_pub_qx/dh_pub_qy (the session's NONCE)")
    if dh_pub is None and nonce is not None:
        raise ValueError("nonce: given without dh_pub_qx/dh_pub_qy, it would not be used")
    vcpu_count = _number(values, "vcpu_count")
    vcpu_length = _number(values, "vcpu_length")
    vcpu_mask = _hex_bytes(values, "vcpu_mask", None)
    if vcpu_count is not None and vcpu_count < 1:
        raise ValueError(f"vcpu_count: {vcpu_count}: a guest has at least one vCPU")
    if vcpu_mask is not None and (vcpu_length is None or len(vcpu_mask) > vcpu_length):
        raise ValueError(
            f"vcpu_mask: {len(vcpu_mask)} bytes do not fit vcpu_length {vcpu_length} "
            "(QEMU copies the mask into a vcpu_length buffer)"
        )
    return LaunchConfig(
        flags,
        policy,
        dh_pub,
        None if nonce is None else nonce.ljust(NONCE_LEN, b"\x00"),
        vcpu_count,
        vcpu_length,
        vcpu_mask,
    )


def _read_group(text: str) -> dict[str, str]:
    group: str | None = None
    seen_group = False
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := _GROUP.fullmatch(line):
            group = match.group(1)
            if group != GROUP:
                raise ValueError(f"line {number}: group [{group}], only [{GROUP}] is known")
            if seen_group:
                raise ValueError(f"line {number}: a second [{GROUP}] group")
            seen_group = True
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ValueError(f'line {number}: {line!r} is not `name = "value"`')
        if group is None:
            raise ValueError(f"line {number}: {match.group(1)} before the [{GROUP}] header")
        key, value = match.groups()
        if key not in KEYS:
            raise ValueError(f"{key}: unknown key (known: {', '.join(KEYS)})")
        if key in values:
            raise ValueError(f"{key}: given twice")
        values[key] = value
    if not seen_group:
        raise ValueError(f"no [{GROUP}] group")
    return values


def _hex_u32(values: dict[str, str], key: str) -> int:
    value = values.get(key)
    if value is None:
        return 0
    if not value or len(value) > 8 or not _HEX.fullmatch(value):
        raise ValueError(f"{key}: {value!r} is not 1 to 8 hex digits (a u32)")
    return int(value, 16)


def _hex_bytes(values: dict[str, str], key: str, limit: int | None) -> bytes | None:
    value = values.get(key)
    if value is None:
        return None
    if not value or len(value) % 2 or not _HEX.fullmatch(value):
        raise ValueError(f"{key}: {value!r} is not a non-empty even number of hex digits")
    data = bytes.fromhex(value)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{key}: {len(data)} bytes, at most {limit}")
    return data


def _number(values: dict[str, str], key: str) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    try:
        number = int(value, 16) if value.lower().startswith("0x") else int(value, 10)
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not a number") from None
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError(f"{key}: {number} is not a u32")
    return number


def _dh_pub(values: dict[str, str]) -> tuple[int, int] | None:
    qx = _hex_bytes(values, "dh_pub_qx", COORD_LEN)
    qy = _hex_bytes(values, "dh_pub_qy", COORD_LEN)
    if qx is None and qy is None:
        return None
    if qx is None or qy is None:
        missing = "dh_pub_qx" if qx is None else "dh_pub_qy"
        raise ValueError(f"{missing}: missing (the DH public key needs both coordinates)")
    point = (le_int(qx), le_int(qy))
    try:
        Certificate(Usage.PDH, Algo.ECDH_SHA256, *point).public_key()
    except SevError:
        raise ValueError(
            f"dh_pub_qx/dh_pub_qy: ({point[0]:#x}, {point[1]:#x}) is not a point on P-384 "
            "(coordinates are little-endian)"
        ) from None
    return point
