"""The AMD SEV firmware emulator and the guest owner's toolkit (sans-IO).

``status`` (status codes, :class:`SevError`) · ``crypto`` (primitives) · ``cert`` (the 0x824
certificate) · ``keys`` (the emulated ARK/ASK/CEK/OCA/PEK/PDH) · ``session`` (the launch
protocol's formulas, shared by both ends) · ``platform`` (platform state machine and commands,
durable state) · ``guest`` (guest contexts, launch state machine, guest memory) · ``ovmf`` and
``kernel_hashes`` (what QEMU measures for a direct kernel boot) · ``owner`` (the guest owner)
· ``launch_config`` (the seed's ``[sev-launch]`` file).
"""

from vdev.sev.guest import Guests, GuestState, Policy
from vdev.sev.platform import PlatformState, SevPlatform
from vdev.sev.status import SevError, Status

__all__ = [
    "GuestState",
    "Guests",
    "PlatformState",
    "Policy",
    "SevError",
    "SevPlatform",
    "Status",
]
