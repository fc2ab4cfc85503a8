"""The table of Crypto Express card types the AP bus can host.

Owns: per type name (``CEX5C``) the values real hardware and the zcrypt drivers report in
sysfs — ``hwtype``/``raw_hwtype``, ``ap_functions``, queue ``depth``, ``max_msg_size`` — the
host drivers that bind its card and queue devices, and the MODE text lszcrypt derives from
``ap_functions``.

Must not know: bus state, bindings, mdevs, FUSE.

Values: hwtype numbers are AP_DEVICE_TYPE_* from drivers/s390/crypto/ap_bus.h.
``ap_functions`` bits are the AP_FUNC_* facility bits in inv-bit order (bit 0 = 0x80000000):
APSC 0, MEX4K 1, CRT4K 2, COPRO 3, ACCEL 4, EP11 5, APXA 6.  CEX4 and newer run on APXA
machines and report APSC, so a CEX5C shows ``0x92000000`` (lszcrypt -V ``S--D--N--``).
``max_msg_size`` is AP_DEFAULT_MAX_MSG_SIZE (12 KiB), what the kernel shows when TAPQ does
not report a size; depth 8 is what lszcrypt prints as QDEPTH ``08`` on real CEX cards.
"""

from __future__ import annotations

from dataclasses import dataclass

AP_FUNC_APSC = 0x80000000
AP_FUNC_MEX4K = 0x40000000
AP_FUNC_CRT4K = 0x20000000
AP_FUNC_COPRO = 0x10000000
AP_FUNC_ACCEL = 0x08000000
AP_FUNC_EP11 = 0x04000000
AP_FUNC_APXA = 0x02000000

MODE_ACCEL = "Accelerator"
MODE_CCA = "CCA-Coproc"
MODE_EP11 = "EP11-Coproc"

DEFAULT_DEPTH = 8
DEFAULT_MAX_MSG_SIZE = 12 * 1024


@dataclass(frozen=True, slots=True)
class CardType:
    """One row of :data:`CARD_TYPES`; ``name`` is what the card's ``type`` file shows."""

    name: str
    hwtype: int
    functions: int
    mode: str
    card_driver: str
    queue_driver: str
    depth: int = DEFAULT_DEPTH
    max_msg_size: int = DEFAULT_MAX_MSG_SIZE

    @property
    def raw_hwtype(self) -> int:
        """The type TAPQ reports; equal to ``hwtype`` because no card runs in toleration mode."""
        return self.hwtype


_CEX4_ACCEL = AP_FUNC_APSC | AP_FUNC_MEX4K | AP_FUNC_CRT4K | AP_FUNC_ACCEL | AP_FUNC_APXA
_CEX4_CCA = AP_FUNC_APSC | AP_FUNC_COPRO | AP_FUNC_APXA
_CEX4_EP11 = AP_FUNC_APSC | AP_FUNC_EP11 | AP_FUNC_APXA

_CEX2A = ("cex2acard", "cex2aqueue")
_PCIXCC = ("pcixcccard", "pcixccqueue")
_CEX4 = ("cex4card", "cex4queue")


def _cex4_family(generation: int, hwtype: int) -> dict[str, CardType]:
    """The A/C/P variants of one CEX4-or-newer generation (they share hwtype and drivers)."""
    return {
        f"CEX{generation}{suffix}": CardType(f"CEX{generation}{suffix}", hwtype, functions, mode,
                                             *_CEX4)
        for suffix, functions, mode in (
            ("A", _CEX4_ACCEL, MODE_ACCEL),
            ("C", _CEX4_CCA, MODE_CCA),
            ("P", _CEX4_EP11, MODE_EP11),
        )
    }


CARD_TYPES: dict[str, CardType] = {
    "CEX2A": CardType("CEX2A", 6, AP_FUNC_ACCEL, MODE_ACCEL, *_CEX2A),
    "CEX2C": CardType("CEX2C", 7, AP_FUNC_COPRO, MODE_CCA, *_PCIXCC),
    "CEX3A": CardType("CEX3A", 8, AP_FUNC_MEX4K | AP_FUNC_CRT4K | AP_FUNC_ACCEL, MODE_ACCEL,
                      *_CEX2A),
    "CEX3C": CardType("CEX3C", 9, AP_FUNC_COPRO, MODE_CCA, *_PCIXCC),
    **_cex4_family(4, 10),
    **_cex4_family(5, 11),
    **_cex4_family(6, 12),
    **_cex4_family(7, 13),
    **_cex4_family(8, 14),
}
