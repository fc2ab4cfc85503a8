"""The SEV firmware as control files see it: each file's content and each write's command.

Owns: one host's :class:`~vdev.sev.platform.SevPlatform` and :class:`~vdev.sev.guest.Guests`,
the text and binary formats of the platform and launch files (README, SEV), the Linux PSP
driver's own rules around the firmware (auto-INIT, EBUSY), the launch directories' life, and
the errno of every refusal.  Must not know: FUSE, paths, trio, the state files
(:mod:`apfs.host` saves :meth:`SevNode.export_state`).

Errno of a refusal (what a write() or read() returns; the log line names the file, the
value, and for a firmware refusal the status name and code):

- a firmware status (any of :class:`~vdev.sev.status.Status`): EIO, as the Linux driver
  returns for every firmware error (``sev_do_cmd``; the status goes to the ioctl's ``error``
  field, which a file cannot carry, so it is in the log line instead);
- PLATFORM_RESET while the platform is WORKING: EBUSY (``sev_ioctl_do_reset``);
- malformed input the driver or QEMU would refuse before the firmware (not a number, not
  base64, a launch description with a bad key, PEK_CERT_IMPORT of the wrong length): EINVAL;
- guest memory written beyond its end: EFBIG.

The driver's behaviour mirrored here: PEK_GEN, PDH_GEN, PEK_CSR, PEK_CERT_IMPORT and
PDH_CERT_EXPORT INIT an UNINIT platform first and leave it INIT (``sev_ioctl_do_pek_pdh_gen``
and friends before the SEV-SNP rework); PLATFORM_RESET of an INIT platform SHUTs it DOWN first.
The platform is INIT from boot on, as Linux's PSP probe initializes it when SEV is on.

Commands are not thread-safe (:mod:`vdev.sev.guest`): every entry point holds one lock, and
the FUSE layer queues them on this object (:attr:`busy`), so a 64 MiB LAUNCH_UPDATE_DATA
runs in a worker thread while other files are served.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from vdev.errors import DeviceError
from vdev.kparse import kstrtobool, kstrtoul
from vdev.sev import ovmf
from vdev.sev.cert import CERT_LEN
from vdev.sev.config import SevConfig
from vdev.sev.crypto import BLOCK
from vdev.sev.guest import Guests, GuestState
from vdev.sev.launch_request import parse_fields, parse_launch_request
from vdev.sev.platform import PlatformState, SevPlatform

T = TypeVar("T")

QMP_STATE = {
    GuestState.UNINIT: "uninit",
    GuestState.LUPDATE: "launch-update",
    GuestState.LSECRET: "launch-secret",
    GuestState.RUNNING: "running",
    GuestState.SUPDATE: "send-update",
    GuestState.RUPDATE: "receive-update",
    GuestState.SENT: "sent",
}
"""QEMU's ``SevState`` names for ``query-sev``'s ``state``."""

SECRET_KEYS = ("packet-header", "secret", "gpa")
FOOTER_SPAN = 0x10000 + ovmf.FOOTER_OFFSET
"""The footer table's length is a u16: it lies within this many bytes of an image's end."""


def _einval(message: str) -> DeviceError:
    return DeviceError(errno.EINVAL, message)


class SevNode:
    """One host's SEV firmware and its launch directories."""

    def __init__(self, config: SevConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.platform = self._configured(SevPlatform())
        self.guests = Guests(self.platform)
        self.launches: dict[str, Launch] = {}
        """Directory name (the guest's handle) → its launch, in creation order."""
        self.last_created = 0
        self._saved: dict[str, Any] = {}
        self._saved_from: tuple[object, ...] = (None,) * 5
        with self.exclusive():
            self.platform.init()

    def _configured(self, platform: SevPlatform) -> SevPlatform:
        platform.api = self.config.api
        platform.build = self.config.build
        platform.sockets = self.config.sockets
        platform.config_es = self.config.es
        return platform

    @property
    def busy(self) -> bool:
        """A command is running: one started now would wait (the FUSE layer's Worker)."""
        return self._lock.locked()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the firmware: one command at a time."""
        with self._lock:
            try:
                yield
            finally:
                self._note_keys()

    def _note_keys(self) -> None:
        """Re-export the durable part when a command replaced a key or the owner (they are
        replaced, never changed in place), so :meth:`export_state` never waits for a
        running command: ``--state`` exports after every accepted write, AP ones included."""
        platform = self.platform
        now = (platform, platform.oca, platform.pek, platform.pdh, platform.owned)
        if any(a is not b for a, b in zip(now, self._saved_from, strict=True)):
            self._saved = platform.export_state()
            self._saved_from = now

    # -- durable state (the platform's keys and ownership; guests never survive) --------

    def export_state(self) -> dict[str, Any]:
        """The platform's durable part as of the last command (never waits for one)."""
        return self._saved

    def check_state(self, data: Any) -> SevPlatform:
        """The platform ``data`` describes; ValueError (naming the key) if it is malformed."""
        platform = SevPlatform.from_state(data)
        if platform.chip_seed != self.platform.chip_seed and self.launches:
            raise ValueError("sev state: another chip's state cannot replace a running one")
        return platform

    def restore_state(self, data: Any) -> None:
        """Take the keys and ownership of ``data`` (checked by :meth:`check_state`); running
        guests stay, unless the platform is left without a PDH (then it is UNINIT)."""
        saved = self.check_state(data)
        with self.exclusive():
            if saved.chip_seed != self.platform.chip_seed:
                # At mount (--state): this chip booted afresh, the saved one takes its place.
                self.platform = self._configured(saved)
                self.guests = Guests(self.platform)
                self.platform.init()
                return
            platform = self.platform
            platform.oca, platform.pek, platform.pdh = saved.oca, saved.pek, saved.pdh
            platform.owned = saved.owned
            if self.platform.pdh is None and self.platform.state != PlatformState.UNINIT:
                self.platform.shutdown()
                self.launches.clear()

    def reboot(self) -> None:
        """``apfs/reset``: the platform as at boot, with its current keys: every guest gone,
        INIT (a restart, as a host reboot would)."""
        with self.exclusive():
            self.platform = self._configured(
                SevPlatform.from_state(self.platform.export_state()))
            self.guests = Guests(self.platform)
            self.launches.clear()
            self.platform.init()

    # -- the platform directory ---------------------------------------------------------

    def show_status(self) -> str:
        """PLATFORM_STATUS, one ``name value`` line per field."""
        with self.exclusive():
            status = self.platform.platform_status()
        return (f"api {status.api_major}.{status.api_minor}\nstate {status.state.name}\n"
                f"owner {int(status.owner)}\nconfig_es {int(self.platform.config_es)}\n"
                f"build {status.build}\nguests {status.guest_count}\n")

    def _store(self, name: str, text: str, command: Callable[[], None]) -> None:
        if kstrtobool(text, name=name):
            with self.exclusive():
                command()

    def store_init(self, text: str) -> None:
        self._store("init", text, self.platform.init)

    def store_shutdown(self, text: str) -> None:
        def shutdown() -> None:
            self.platform.shutdown()
            self.launches.clear()

        self._store("shutdown", text, shutdown)

    def store_platform_reset(self, text: str) -> None:
        def reset() -> None:
            state = self.platform.state
            if state == PlatformState.WORKING:
                raise DeviceError(errno.EBUSY, f"PLATFORM_RESET: the platform is WORKING "
                                  f"with {len(self.platform.guests)} guest(s)")
            if state == PlatformState.INIT:
                self.platform.shutdown()
            self.platform.platform_reset()

        self._store("platform_reset", text, reset)

    def store_pek_gen(self, text: str) -> None:
        self._store("pek_gen", text, lambda: self._initialized(self.platform.pek_gen))

    def store_pdh_gen(self, text: str) -> None:
        self._store("pdh_gen", text, lambda: self._initialized(self.platform.pdh_gen))

    def _initialized(self, command: Callable[[], T]) -> T:
        """The driver's auto-INIT: an UNINIT platform is INITed before ``command``."""
        if self.platform.state == PlatformState.UNINIT:
            self.platform.init()
        return command()

    def read_pdh_cert(self) -> bytes:
        with self.exclusive():
            return self._initialized(self.platform.pdh_cert_export).pdh

    def read_cert_chain(self) -> bytes:
        """PEK || OCA || CEK, as PDH_CERT_EXPORT's cert_chain buffer."""
        with self.exclusive():
            return self._initialized(self.platform.pdh_cert_export).chain

    def read_pek_csr(self) -> bytes:
        with self.exclusive():
            return self._initialized(self.platform.pek_csr)

    def write_pek_cert_import(self, offset: int, data: bytes) -> None:
        """PEK_CERT_IMPORT: the owner-signed PEK certificate then the OCA certificate, in one
        write of 2 x 0x824 bytes at offset 0 (the ioctl takes both buffers at once)."""
        if offset != 0 or len(data) != 2 * CERT_LEN:
            raise _einval(f"PEK_CERT_IMPORT: {len(data)} bytes at offset {offset}; need the "
                          f"PEK and OCA certificates, {2 * CERT_LEN} bytes at offset 0")
        with self.exclusive():
            self._initialized(lambda: self.platform.pek_cert_import(
                data[:CERT_LEN], data[CERT_LEN:]))

    def read_get_id(self) -> bytes:
        """GET_ID: 64 bytes per socket."""
        with self.exclusive():
            return self.platform.get_id()

    # -- launches -------------------------------------------------------------------------

    def show_create(self) -> str:
        """The handle (directory name) of the last guest created, 0 before the first."""
        return f"{self.last_created}\n"

    def store_create(self, text: str) -> None:
        """LAUNCH_START from a launch description (:mod:`vdev.sev.launch_request`)."""
        try:
            request = parse_launch_request(text, self.config.guest_memory_mib << 20)
        except ValueError as exc:
            raise _einval(f"launch description: {exc}") from None
        with self.exclusive():
            handle = self.guests.launch_start(
                policy=request.policy, memory_size=request.memory_size, handle=request.handle,
                godh_cert=request.godh_cert, session=request.session, nonce=request.nonce)
            self.launches[str(handle)] = Launch(self, handle)
            self.last_created = handle

    def _remove(self, launch: Launch) -> None:
        with self.exclusive():
            self.guests.decommission(launch.handle)
            del self.launches[str(launch.handle)]


class Launch:
    """One guest's launch directory (``apfs/sev/launch/<handle>``)."""

    def __init__(self, node: SevNode, handle: int) -> None:
        self.node = node
        self.handle = handle
        self.size = node.platform.guests[handle].size
        self.measurement: bytes | None = None
        """LAUNCH_MEASURE's 48 bytes, kept as QEMU keeps them for query-sev-launch-measure."""
        self.secret_gpa: int | None = None
        """The secret area of the last measured firmware image that has one (OVMF footer)."""

    def _run(self, command: Callable[[], T]) -> T:
        with self.node.exclusive():
            return command()

    def write_memory(self, offset: int, data: bytes) -> None:
        """The hypervisor loads plaintext at ``offset`` (a guest physical address)."""
        self._run(lambda: self.node.guests.host_write(self.handle, offset, data))

    def read_ciphertext(self, offset: int, size: int) -> bytes:
        """Guest memory as the host sees it: ciphertext wherever the guest's key covers it."""
        return self._run(lambda: self.node.guests.host_read(self.handle, offset, size))

    def read_debug(self, offset: int, size: int) -> bytes:
        """DBG_DECRYPT of the 16-byte blocks covering the range (refused under NODBG)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        start = offset - offset % BLOCK
        stop = -(-end // BLOCK) * BLOCK
        plain = self._run(lambda: self.node.guests.dbg_decrypt(self.handle, start, stop - start))
        return plain[offset - start : end - start]

    def store_update(self, text: str) -> None:
        """LAUNCH_UPDATE_DATA of ``OFFSET LENGTH`` (numbers, 0x for hex)."""
        words = text.split()
        if len(words) != 2:
            raise _einval(f"update: {text.strip()[:40]!r} is not `OFFSET LENGTH`")
        offset = kstrtoul(words[0], name="update offset")
        length = kstrtoul(words[1], name="update length")

        def update() -> None:
            guests = self.node.guests
            # The plaintext is gone after the command: find the OVMF secret area first.
            tail = guests.host_read(self.handle, max(offset, offset + length - FOOTER_SPAN),
                                    min(length, FOOTER_SPAN))
            guests.launch_update_data(self.handle, offset, length)
            area = _secret_area(tail)
            if area is not None:
                self.secret_gpa = area

        self._run(update)

    def store_update_vmsa(self, text: str) -> None:
        """LAUNCH_UPDATE_VMSA of the 4096-byte VMSA at ``ADDRESS`` (SEV-ES)."""
        address = kstrtoul(text, name="update_vmsa")
        self._run(lambda: self.node.guests.launch_update_vmsa(self.handle, address))

    def show_measure(self) -> str:
        """query-sev-launch-measure: base64 of MEASURE || MNONCE.  The first read takes
        the measurement (LAUNCH_MEASURE: LUPDATE → LSECRET), later reads show it again."""

        def measure() -> bytes:
            if self.measurement is None:
                self.measurement = self.node.guests.launch_measure(self.handle)
            return self.measurement

        return base64.b64encode(self._run(measure)).decode() + "\n"

    def write_secret(self, offset: int, data: bytes) -> None:
        """sev-inject-launch-secret: ``packet-header=B64 secret=B64 [gpa=N]`` in one write
        at offset 0.  Not a page-limited text attribute: a 16 KiB secret (the kernel's cap)
        is 22 KiB of base64."""
        try:
            if offset != 0:
                raise ValueError(f"written at offset {offset}: the fields go in one write")
            fields = parse_fields(data.decode("ascii"), SECRET_KEYS, "secret")
            header = _decode(fields, "packet-header")
            secret = _decode(fields, "secret")
            gpa = int(fields["gpa"], 0) if "gpa" in fields else self.secret_gpa
        except (ValueError, UnicodeDecodeError) as exc:
            raise _einval(f"secret: {exc}") from None
        if gpa is None:
            raise _einval("secret: no gpa given, and no firmware image measured so far has "
                          "an OVMF secret area to default to")
        self._run(lambda: self.node.guests.launch_secret(self.handle, header, gpa, secret))

    def store_finish(self, text: str) -> None:
        if kstrtobool(text, name="finish"):
            self._run(lambda: self.node.guests.launch_finish(self.handle))

    def show_status(self) -> str:
        """query-sev's fields, as QMP returns them (one JSON object)."""
        node = self.node
        status = self._run(lambda: node.guests.guest_status(self.handle))
        return json.dumps({
            "enabled": True,
            "api-major": node.platform.api[0],
            "api-minor": node.platform.api[1],
            "build-id": node.platform.build,
            "policy": status.policy,
            "state": QMP_STATE[status.state],
            "handle": status.handle,
        }) + "\n"

    def store_remove(self, text: str) -> None:
        """DECOMMISSION: the guest context and this directory go away."""
        if kstrtobool(text, name="remove"):
            self.node._remove(self)


def _decode(fields: dict[str, str], key: str) -> bytes:
    if key not in fields:
        raise ValueError(f"{key}: missing")
    try:
        return base64.b64decode(fields[key], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{key}: {fields[key][:40]!r} is not base64") from None


def _secret_area(tail: bytes) -> int | None:
    try:
        area = ovmf.secret_area(tail)
    except ValueError:  # not a firmware image after all: nothing to default to
        return None
    return None if area is None else area.base

