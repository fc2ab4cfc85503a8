"""The vTPM's socket front ends on real mounts, driven by real clients: ``apfs mount
--tpm-port 0 [--tpm-protocol mssim] [--tpm-socket PATH]`` as an administrator types it, the
TCTI string it prints, then tpm2-pytss, raw sockets playing QEMU, and garbage.  The
tpm2-tools acceptance sequence over these TCTIs is test_tpm2_tools.py's.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from apfs_tpm import TpmMount, tpm_mount
from conftest import apfs
from helpers import daemon_pid, wait_until
from reference_swtpm import recv_exactly

from vdev.tpm import commands
from vdev.tpm import swtpm as sw

U32 = struct.Struct(">I")
READ_CLOCK = bytes.fromhex("80010000000a00000181")
TIMEOUT = 30.0


@pytest.fixture(params=["swtpm", "mssim"])
def tcp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TpmMount]:
    """A default-host mount serving tpm0 on a free port pair in either protocol."""
    with tpm_mount(tmp_path, "--tpm-port", "0", "--tpm-protocol", request.param) as mounted:
        assert mounted.tcti.startswith(request.param + ":"), mounted.stdout
        yield mounted


@pytest.fixture
def qemu_socket(tmp_path: Path) -> Iterator[tuple[TpmMount, Path]]:
    path = tmp_path / "tpm.sock"
    with tpm_mount(tmp_path, "--tpm-socket", str(path)) as mounted:
        yield mounted, path


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def tpm_round_trip(sock: socket.socket, protocol: str, command: bytes) -> bytes:
    """One command over a data (swtpm) or command (mssim) connection."""
    if protocol == "mssim":
        sock.sendall(struct.pack(">IBI", 8, 0, len(command)) + command)
        size = U32.unpack(recv_exactly(sock, 4))[0]
        response = recv_exactly(sock, size)
        assert recv_exactly(sock, 4) == bytes(4)
        return response
    sock.sendall(command)
    header = recv_exactly(sock, 10)
    return header + recv_exactly(sock, commands.response_size(header) - 10)


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed the connection (after whatever reply it sent)."""
    try:
        while chunk := sock.recv(4096):
            del chunk
    except ConnectionResetError:
        pass
    return True


def log_lines(mounted: TpmMount, text: str) -> list[str]:
    return [line for line in mounted.mount.log().splitlines() if text in line]


# -- tpm2-tools and tpm2-pytss -------------------------------------------------------------

def test_apfs_mount_prints_the_tcti_string_and_help_teaches_the_options() -> None:
    done = apfs("mount", "--help", check=True)
    text = " ".join(done.stdout.split())
    for words in ("--tpm-port PORT", "TPM2TOOLS_TCTI", "--tpm-protocol NAME", "mssim",
                  "--tpm-socket PATH", "-tpmdev emulator", "CMD_SET_DATAFD"):
        assert words in text, words


def test_tpm2_pytss_esapi_session_over_the_tcti(tcp: TpmMount) -> None:
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

    name, config = tcp.tcti.split(":", 1)
    with TCTILdr(name, config) as tcti, ESAPI(tcti) as esapi:
        assert len(bytes(esapi.get_random(16))) == 16
        handle, public, *_ = esapi.create_primary(None, "ecc256")
        assert public.publicArea.type == TPM2_ALG.ECC
        esapi.flush_context(handle)
        digest = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        digest.digest.sha256 = b"\x11" * 32
        esapi.pcr_extend(ESYS_TR.PCR16, TPML_DIGEST_VALUES([digest]))
    expected = subprocess.run(["tpm2_pcrread", "-T", tcp.tcti, "sha256:16"], text=True,
                              capture_output=True, check=True, timeout=TIMEOUT).stdout
    value = tcp.mount.read("sys/class/tpm/tpm0/pcr-sha256/16").strip()
    assert f"0x{value}" in expected and value != "0" * 64


# -- malformed frames -----------------------------------------------------------------------

GARBAGE = {
    # data/command port, port + 1: what is sent, the words of the log line
    # swtpm's data port answers any read of 10 bytes or more (the TPM checks the size
    # field); only a command beyond the virtio device's 4096 bytes closes the connection.
    "swtpm": ((bytes.fromhex("80010000100900000000") + bytes(4095), "exceeds TPM_BUFSIZE 4096"),
              (U32.pack(sw.CMD_SET_STATEBLOB) + struct.pack(">III", 0, 1, 1 << 30),
               "exceeds 524288 bytes")),
    "mssim": ((struct.pack(">IBI", 8, 0, 1 << 30), "exceeds the 4096-byte buffer"),
              (U32.pack(0x77), "unknown signal 0x77")),
}


@pytest.mark.parametrize("port_offset", [0, 1])
def test_malformed_frame_closes_that_connection_only(tcp: TpmMount, port_offset: int) -> None:
    """Garbage on a port closes that connection and logs one line; a client connected
    before it keeps working and a sysfs read answers."""
    protocol = tcp.tcti.split(":")[0]
    good = connect(tcp.port)
    tpm_round_trip(good, protocol, commands.get_random(8))
    garbage, words = GARBAGE[protocol][port_offset]
    with connect(tcp.port + port_offset) as bad:
        bad.sendall(garbage)
        assert closed_by_server(bad)
    assert wait_until(lambda: len(log_lines(tcp, words)) == 1), tcp.mount.log()
    with good:
        assert commands.response_code(
            tpm_round_trip(good, protocol, commands.get_random(8))) == 0
    assert re.fullmatch("[0-9A-F]{64}\n", tcp.mount.read("sys/class/tpm/tpm0/pcr-sha256/0"))


def test_swtpm_data_port_answers_a_size_field_that_disagrees_as_swtpm_does(
        tmp_path: Path) -> None:
    """swtpm processes what one read returned: the TPM answers TPM_RC_COMMAND_SIZE at once
    for a size field of 0, 4, 0xffffffff or beyond the bytes sent, and the connection goes
    on."""
    with tpm_mount(tmp_path, "--tpm-port", "0", "--tpm-protocol", "swtpm") as mounted:
        command = commands.get_random(8)
        with connect(mounted.port) as sock:
            for size in (0, 4, 0xFFFFFFFF, 4000):
                wrong = command[:2] + U32.pack(size) + command[6:]
                response = tpm_round_trip(sock, "swtpm", wrong)
                assert commands.response_code(response) == commands.TPM_RC_COMMAND_SIZE, size
            assert commands.response_code(tpm_round_trip(sock, "swtpm", command)) == 0
        assert not log_lines(mounted, "closed")


def test_a_stalled_client_stalls_nobody(tcp: TpmMount) -> None:
    """Half a command, then silence: other clients and sysfs are served meanwhile; the
    early close that follows is logged."""
    protocol = tcp.tcti.split(":")[0]
    stalled = connect(tcp.port)
    command = commands.get_random(8)
    stalled.sendall((struct.pack(">IBI", 8, 0, len(command)) if protocol == "mssim"
                     else b"") + command[:5])
    for _ in range(3):
        with connect(tcp.port) as other:
            assert commands.response_code(tpm_round_trip(other, protocol, command)) == 0
    tcp.mount.read("sys/class/tpm/tpm0/pcr-sha1/0")
    assert not log_lines(tcp, "hung up")
    stalled.close()
    assert wait_until(lambda: len(log_lines(tcp, "hung up in the middle of a request")) == 1)


EXTENDS = 150


def extend_chain(start: bytes, client: str) -> tuple[list[bytes], bytes]:
    """The PCR_Extend digests of ``client`` and the PCR value they lead to from ``start``."""
    digests = [hashlib.sha256(f"{client} {i}".encode()).digest() for i in range(EXTENDS)]
    value = start
    for digest in digests:
        value = hashlib.sha256(value + digest).digest()
    return digests, value


def test_commands_run_in_c_and_in_python_share_the_tpm_one_at_a_time(tcp: TpmMount) -> None:
    """Three socket clients (their commands run in C, apfs/tpm/_pump.c) and a dev/tpm0
    client (its commands in a worker thread, in Python) extend a PCR each, while the
    dev/tpm0 client also makes ECC primaries that hold the TPM for a while: every command
    succeeds, and every PCR ends as hashlib computes it.  A command run while another
    caller held the TPM would break libtpms's state, and a lost or swapped response the
    chains."""
    protocol = tcp.tcti.split(":")[0]
    pcrs = {"socket-a": 10, "socket-b": 11, "socket-c": 12, "dev-tpm0": 13}
    start = {name: bytes.fromhex(tcp.mount.read(f"sys/class/tpm/tpm0/pcr-sha256/{pcr}"))
             for name, pcr in pcrs.items()}
    failures: list[str] = []

    def over_socket(name: str) -> None:
        with connect(tcp.port) as sock:
            for digest in extend_chain(start[name], name)[0]:
                command = commands.pcr_extend(pcrs[name], {"sha256": digest})
                rc = commands.response_code(tpm_round_trip(sock, protocol, command))
                if rc:
                    failures.append(f"{name}: PCR_Extend answered {rc:#x}")

    def over_device(name: str) -> None:
        fd = os.open(tcp.mount.root / "dev/tpm0", os.O_RDWR)
        try:
            for i, digest in enumerate(extend_chain(start[name], name)[0]):
                sent = [commands.pcr_extend(pcrs[name], {"sha256": digest})]
                if i % 30 == 0:
                    sent.append(commands.create_primary("ecc256"))
                for command in sent:
                    os.write(fd, command)
                    response = os.read(fd, 4096)
                    if commands.response_code(response):
                        failures.append(f"{name}: {command[6:10].hex()} answered "
                                        f"{commands.response_code(response):#x}")
                    elif command is not sent[0]:
                        os.write(fd, commands.flush_context(commands.created_handle(response)))
                        os.read(fd, 4096)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=over_device if name == "dev-tpm0" else over_socket,
                                args=(name,)) for name in pcrs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 4)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures[:5]
    for name, pcr in pcrs.items():
        expected = extend_chain(start[name], name)[1]
        assert tcp.mount.read(f"sys/class/tpm/tpm0/pcr-sha256/{pcr}") == \
            expected.hex().upper() + "\n", name


def test_sigterm_closes_the_servers(tmp_path: Path) -> None:
    """SIGTERM removes the socket file, stops listening, and closes a client's idle
    connection too (one the C loop accepted and serves: Servers.close() stops it)."""
    path = tmp_path / "tpm.sock"
    with tpm_mount(tmp_path, "--tpm-port", "0", "--tpm-socket", str(path)) as mounted:
        assert path.is_socket()
        idle = connect(mounted.port)
        assert commands.response_code(tpm_round_trip(idle, "swtpm", READ_CLOCK)) == 0
        pid = daemon_pid(mounted.mount.root)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not path.exists(), timeout=10), "socket file left behind"
        with pytest.raises(OSError):
            connect(mounted.port).close()
        with idle:
            assert closed_by_server(idle)


def test_a_taken_port_or_socket_path_is_refused_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "a").mkdir()
        done = apfs("mount", "--tpm-port", str(port), str(tmp_path / "a"))
        assert done.returncode == 1
        assert f"--tpm-port: cannot listen on 127.0.0.1:{port}" in done.stderr
    not_socket = tmp_path / "file"
    not_socket.write_text("")
    (tmp_path / "b").mkdir()
    done = apfs("mount", "--tpm-socket", str(not_socket), str(tmp_path / "b"))
    assert done.returncode == 1 and "exists and is not a socket" in done.stderr


# -- QEMU's control channel -----------------------------------------------------------------

class Qemu:
    """What QEMU 7.2's ``-tpmdev emulator`` does on the control socket, per the spec's
    "Order seen": the data channel is a socketpair end passed with CMD_SET_DATAFD."""

    def __init__(self, path: Path) -> None:
        self.ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctrl.settimeout(TIMEOUT)
        self.ctrl.connect(str(path))
        self.data, theirs = socket.socketpair()
        self.data.settimeout(TIMEOUT)
        socket.send_fds(self.ctrl, [U32.pack(sw.CMD_SET_DATAFD)], [theirs.fileno()])
        theirs.close()
        self.set_datafd = recv_exactly(self.ctrl, 4)

    def control(self, code: int, payload: bytes = b"", answer: int = 4) -> bytes:
        self.ctrl.sendall(U32.pack(code) + payload)
        return recv_exactly(self.ctrl, answer)

    def command(self, command: bytes) -> bytes:
        """QEMU reads what one read() gives and takes the size from it."""
        self.data.sendall(command)
        response = self.data.recv(4096)
        assert len(response) == commands.response_size(response), response.hex()
        return response

    def close(self) -> None:
        self.data.close()
        self.ctrl.close()


def test_set_datafd_then_qemus_start_sequence_then_a_boot(qemu_socket: tuple[TpmMount,
                                                                               Path]) -> None:
    mounted, path = qemu_socket
    assert f"QEMU: -chardev socket,id=chrtpm0,path={path} -tpmdev emulator,id=tpm0," \
           "chardev=chrtpm0 -device tpm-tis,tpmdev=tpm0" in mounted.stdout
    qemu = Qemu(path)
    assert qemu.set_datafd == bytes(4)
    probe = qemu.command(READ_CLOCK)
    assert probe[:2] == b"\x80\x01"
    assert qemu.control(sw.CMD_GET_CAPABILITY, answer=8) == bytes.fromhex("000000000000ffff")
    assert qemu.control(sw.CMD_STOP) == bytes(4)
    assert qemu.control(sw.CMD_SET_BUFFERSIZE, U32.pack(0), answer=16)[:4] == bytes(4)
    assert qemu.control(sw.CMD_STOP) == bytes(4)
    assert qemu.control(sw.CMD_SET_BUFFERSIZE, U32.pack(0x1000), answer=16)[:8] == \
        bytes.fromhex("0000000000001000")
    assert qemu.command(READ_CLOCK) == bytes.fromhex("80010000000a00000101")  # before INIT
    assert qemu.control(sw.CMD_INIT, U32.pack(0)) == bytes(4)
    assert qemu.control(sw.CMD_GET_TPMESTABLISHED, answer=8) == bytes(8)
    assert qemu.control(sw.CMD_SET_LOCALITY, b"\0\0\0\0") == bytes(4)
    # The firmware's boot: Startup, a measurement into PCR 0.
    assert commands.response_code(qemu.command(commands.startup())) == 0
    assert commands.response_code(qemu.command(
        commands.pcr_extend(0, {"sha256": b"\x42" * 32}))) == 0
    pcr0 = mounted.mount.read("sys/class/tpm/tpm0/pcr-sha256/0")
    assert pcr0 != "0" * 64 + "\n"
    # A second QEMU while the first holds the data channel: TPM_IOERROR.
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.connect(str(path))
    mine, theirs = socket.socketpair()
    socket.send_fds(other, [U32.pack(sw.CMD_SET_DATAFD)], [theirs.fileno()])
    assert recv_exactly(other, 4) == U32.pack(sw.TPM_IOERROR)
    for sock in (other, mine, theirs):
        sock.close()
    # QEMU killed: its data channel hangs up; the next QEMU gets it and sees the PCRs.
    qemu.close()

    def reattached() -> bool:
        again = Qemu(path)
        ok = again.set_datafd == bytes(4)
        if ok:
            response = again.command(commands.pcr_read("sha256", [0]))
            assert commands.parse_pcr_read(response)[0].hex().upper() + "\n" == pcr0
        again.close()
        return ok

    assert wait_until(reattached, timeout=10)


def test_control_request_cut_short_is_answered_after_500_ms(
        qemu_socket: tuple[TpmMount, Path]) -> None:
    """swtpm processes what arrived once its 500 ms are up: INIT without its flags is
    TPM_BAD_PARAMETER (no timing asserted beyond "eventually")."""
    _mounted, path = qemu_socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctrl:
        ctrl.settimeout(TIMEOUT)
        ctrl.connect(str(path))
        ctrl.sendall(U32.pack(sw.CMD_INIT) + b"\0")
        assert recv_exactly(ctrl, 4) == U32.pack(sw.TPM_BAD_PARAMETER)
