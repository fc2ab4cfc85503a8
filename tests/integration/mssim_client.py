"""A raw client of the Microsoft simulator (mssim) protocol, as tpm2-tss's mssim TCTI
speaks it: commands framed by their own length prefix on the command port, bare ``u32``
signals on the platform port (command port + 1).  Big-endian throughout."""

from __future__ import annotations

import socket
import struct

from reference_swtpm import recv_exactly

from vdev.tpm.mssim import TPM_SEND_COMMAND

IO_TIMEOUT = 30.0
U32 = struct.Struct(">I")


def send_command(port: int, command: bytes, locality: int = 0) -> bytes:
    """TPM_SEND_COMMAND: ``u32 8, u8 locality, u32 N, N bytes`` → ``u32 M, M bytes, u32 0``.
    The length prefix frames the command, so any bytes, whatever their header says, reach
    the TPM as one command."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(U32.pack(TPM_SEND_COMMAND) + bytes([locality])
                     + U32.pack(len(command)) + command)
        (size,) = U32.unpack(recv_exactly(sock, 4))
        response = recv_exactly(sock, size)
        (trailer,) = U32.unpack(recv_exactly(sock, 4))
    if trailer != 0:
        raise ConnectionError(f"mssim response trailer {trailer:#x}, expected 0")
    return response


def signal(platform_port: int, code: int) -> None:
    """One platform-port signal (POWER_ON 1, RESET 17, ...), which answers ``u32 0``."""
    with socket.create_connection(("127.0.0.1", platform_port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(U32.pack(code))
        (result,) = U32.unpack(recv_exactly(sock, 4))
    if result != 0:
        raise ConnectionError(f"mssim platform signal {code} answered {result:#x}")
