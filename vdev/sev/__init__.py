"""The AMD SEV firmware emulator and the guest owner's toolkit (sans-IO: no files, FUSE,
trio or sockets; `cryptography` for every primitive).

Modules, one job each: ``status`` (status codes, :class:`SevError`) · ``crypto``
(primitives) · ``cert`` (the 0x824 certificate) · ``keys`` (the emulated ARK/ASK/CEK/OCA/PEK/
PDH) · ``session`` (the launch protocol's formulas, shared by both ends) · ``platform``
(platform state machine and commands, durable state) · ``guest`` (guest contexts, launch state
machine, guest memory) · ``ovmf`` and ``kernel_hashes`` (what QEMU measures for a direct kernel
boot) · ``owner`` (the guest owner) · ``launch_config`` (the seed's ``[sev-launch]`` file).

For a file system in front of it: one :class:`SevPlatform` per emulated part
(``SevPlatform.from_state(...)`` / ``export_state()`` for ``--state``) and one
:class:`Guests` over it.  Platform files call ``init``/``shutdown``/``platform_reset``/
``pek_gen``/``pdh_gen``/``pek_csr``/``pek_cert_import``/``pdh_cert_export``/``get_id`` and
show ``platform_status()``; a launch directory calls ``Guests.launch_start`` (from
:func:`launch_config.parse_launch_config` or a GODH certificate + session blob), loads memory
with ``host_write``, then ``launch_update_data``/``launch_measure``/``launch_secret``/
``launch_finish``, and shows ``host_read`` (ciphertext), ``dbg_decrypt`` and
``guest_status``.  Every refusal is a :class:`SevError` (errno EIO, ``.status``, a message
naming the command, value and rule) raised before anything changed.  Commands are not
thread-safe: run them one at a time, in order (off the event loop for big updates).
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
