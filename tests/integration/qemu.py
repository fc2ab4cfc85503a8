"""Boot SeaBIOS in Debian's QEMU with a TPM behind ``-tpmdev emulator`` (the swtpm control
protocol on a UNIX socket), as a user would; read PCRs 0..7 afterwards.

There is no disk: SeaBIOS does its TPM work (Startup, SelfTest, measurements into PCRs 0..7,
separators) during POST and before trying to boot, then loops on "No bootable device".  Its
debug console (I/O port 0x402, ``isa-debugcon``) tells us when it got there; QEMU is then
SIGKILLed.  A SIGTERM would be a graceful exit, on which QEMU sends CMD_SHUTDOWN and swtpm
terminates; after a SIGKILL the TPM stays up and a new control client can pass a data
channel again (CMD_SET_DATAFD) to read the PCRs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import tpm_wire as w
from reference_swtpm import datafd_channel, transmit_on

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 60.0
"""Seconds SeaBIOS may take to reach "No bootable device" (about 0.3 s idle, TCG)."""
DONE = b"No bootable device"
POLL = 0.02


def qemu_available() -> str | None:
    """Why QEMU boots cannot run here, or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (scripts/setup.sh installs qemu-system-x86)"
    if not Path("/usr/share/seabios/bios-256k.bin").exists():
        return "SeaBIOS is not installed (Debian package seabios)"
    return None


def boot_seabios(ctrl: Path, workdir: Path, interface: str = "tpm-tis") -> float:
    """Boot QEMU (TCG, no disk, SeaBIOS, TPM ``interface`` ``tpm-tis`` or ``tpm-crb``)
    against the TPM control socket ``ctrl`` until SeaBIOS gives up booting; kill it; the
    boot's wall time in seconds.  SeaBIOS's debug output is kept in
    ``workdir/seabios.log``."""
    log = workdir / "seabios.log"
    log.unlink(missing_ok=True)
    argv = [QEMU, "-nodefaults", "-display", "none", "-machine", "pc,accel=tcg", "-m", "64",
            "-serial", f"file:{workdir / 'serial.log'}",
            "-chardev", f"file,id=seabios,path={log}",
            "-device", "isa-debugcon,iobase=0x402,chardev=seabios",
            "-chardev", f"socket,id=chrtpm,path={ctrl}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", f"{interface},tpmdev=tpm0"]
    start = time.perf_counter()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        while DONE not in (log.read_bytes() if log.exists() else b""):
            if qemu.poll() is not None:
                raise RuntimeError(f"QEMU exited with {qemu.returncode} before SeaBIOS "
                                   f"finished: {qemu.stderr.read().decode(errors='replace')}")
            if time.perf_counter() - start > BOOT_TIMEOUT:
                raise RuntimeError(f"SeaBIOS did not reach {DONE!r} within {BOOT_TIMEOUT} s; "
                                   f"its log ends: {log.read_bytes()[-300:]!r}")
            time.sleep(POLL)
        return time.perf_counter() - start
    finally:
        qemu.kill()  # no CMD_SHUTDOWN: the TPM keeps its PCRs for us
        qemu.wait(timeout=10)


def read_boot_pcrs(ctrl: Path) -> list[bytes]:
    """PCRs 0..7 of the SHA-256 bank, through a fresh data channel (CMD_SET_DATAFD)."""
    with datafd_channel(ctrl) as sock:
        response = transmit_on(sock, w.command("PCR_Read", params=w.pcr_selection(
            {w.ALG_SHA256: list(range(8))})))
    if w.header(response).rc != 0:
        raise RuntimeError(f"PCR_Read after the boot failed: {response.hex()}")
    reader = w.parameters(response)
    reader.u32()  # pcrUpdateCounter
    for _ in range(reader.u32()):  # the selection read: hash, sizeofSelect, bitmap
        reader.u16()
        reader.take(reader.u8())
    return [reader.tpm2b() for _ in range(reader.u32())]
