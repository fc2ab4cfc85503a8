"""MOUNT/dev/tpm0 and MOUNT/dev/tpmrm0 on real mounts, driven as users drive the devices.

System calls (os.open/write/read/pread) for the kernel's errno table, bash ``exec 3<>`` for
what a shell sees, and two tpm2-pytss ESAPI processes for the resource manager (the
tpm2-tools acceptance sequence through the device TCTI is test_tpm2_tools.py's).  The TPM
itself is inspected through ``dev/tpm0``.
"""

from __future__ import annotations

import errno
import os
import random
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mount, MountFactory
from helpers import daemon_pid
from tpm2_tools import run_acceptance

from apfs.background import BACKGROUND_NICE
from vdev.ap.host import DEFAULT_HOST_TOML
from vdev.tpm import commands as cmd

GET_RANDOM_8 = cmd.get_random(8)
TRANSIENT, LOADED_SESSION, SAVED_SESSION = 0x80000000, 0x02000000, 0x03000000


def get_handles(first: int) -> bytes:
    return cmd.get_capability(1, first, 64)


def handles(response: bytes) -> list[int]:
    assert cmd.response_code(response) == 0, response.hex()
    (count,) = struct.unpack_from(">I", response, 15)
    return list(struct.unpack_from(f">{count}I", response, 19))


class Opened:
    """An open TPM device file: write a command, read its response."""

    def __init__(self, path: Path, flags: int = 0) -> None:
        self.fd = os.open(path, os.O_RDWR | flags)

    def send(self, command: bytes) -> bytes:
        assert os.write(self.fd, command) == len(command)
        return os.read(self.fd, 4096)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def tpm0(mount: Mount) -> Iterator[Opened]:
    opened = Opened(mount.root / "dev/tpm0")
    yield opened
    opened.close()


def failure(call, *args) -> int:
    with pytest.raises(OSError) as caught:
        call(*args)
    return caught.value.errno


# -- the nodes --------------------------------------------------------------------------


def test_dev_lists_tpm0_and_tpmrm0_as_root_only_files(mount: Mount) -> None:
    shell = mount.bash("ls -l dev | tail -n +2 | cut -d' ' -f1,5,9")
    assert shell.stdout.splitlines() == ["-rw------- 0 tpm0", "-rw------- 0 tpmrm0"]


def test_both_flavors_show_the_devices_of_every_vtpm(mount_factory: MountFactory) -> None:
    toml = DEFAULT_HOST_TOML.replace("[host]", '[host]\nflavor = "vfio_ap"')
    mount = mount_factory(toml + '\n[[tpm]]\nname = "first"\n[[tpm]]\nname = "second"\n')
    assert sorted(os.listdir(mount.root / "dev")) == ["tpm0", "tpm1", "tpmrm0", "tpmrm1"]
    for node in ("tpm1", "tpmrm1"):  # the second vTPM runs in a worker process
        shell = mount.bash(f"tpm2_getrandom -T device:dev/{node} --hex 16")
        assert shell.returncode == 0 and len(shell.stdout) == 32, shell.stderr


# -- seed driver semantics and the kernel's errno table ------------------------------------


def test_a_command_over_4096_bytes_is_e2big(tpm0: Opened, mount: Mount) -> None:
    command = cmd.command(cmd.TPM_CC_GET_RANDOM, struct.pack(">H", 8) + bytes(4090))
    assert failure(os.write, tpm0.fd, command) == errno.E2BIG
    refusal = mount.refusals()[-1]
    assert (refusal.path, refusal.errno) == ("dev/tpm0", errno.E2BIG)
    assert "command of 4102 bytes exceeds the 4096-byte buffer" in refusal.message


def test_a_second_write_before_reading_is_ebusy(tpm0: Opened, mount: Mount) -> None:
    os.write(tpm0.fd, GET_RANDOM_8)
    assert failure(os.write, tpm0.fd, GET_RANDOM_8) == errno.EBUSY
    assert "20-byte response is unread" in mount.refusals()[-1].message
    assert len(os.read(tpm0.fd, 4096)) == 20


def test_responses_are_read_in_pieces_and_then_eof(tpm0: Opened) -> None:
    os.write(tpm0.fd, GET_RANDOM_8)
    header = os.read(tpm0.fd, 10)
    tag, size, rc = struct.unpack(">HII", header)
    assert (tag, size, rc) == (cmd.TPM_ST_NO_SESSIONS, 20, 0)
    pieces = [os.read(tpm0.fd, 3) for _ in range(4)]
    assert [len(p) for p in pieces] == [3, 3, 3, 1]
    assert os.read(tpm0.fd, 4096) == b""


def test_the_response_never_exceeds_the_buffer(tpm0: Opened) -> None:
    # Every property and every command attribute: the TPM's largest answers.
    for command in (cmd.get_capability(6, 0x100, 1000), cmd.get_capability(2, 0, 1000)):
        response = tpm0.send(command)
        assert cmd.response_code(response) == 0
        assert len(response) == cmd.response_size(response) <= 4096


def test_short_commands_are_einval_and_an_empty_one_enodata(tpm0: Opened) -> None:
    assert failure(os.write, tpm0.fd, b"\x80\x01\x00") == errno.EINVAL
    assert failure(os.write, tpm0.fd, GET_RANDOM_8[:-1]) == errno.EINVAL
    assert failure(os.write, tpm0.fd, b"\x80\x01\x00\x00\x00\x00") == errno.ENODATA
    assert cmd.response_code(tpm0.send(GET_RANDOM_8 + b"ignored")) == 0


def test_a_partial_read_frees_the_file_but_an_empty_read_never_reaches_it(
        tpm0: Opened) -> None:
    os.write(tpm0.fd, GET_RANDOM_8)
    os.read(tpm0.fd, 1)
    os.write(tpm0.fd, GET_RANDOM_8)  # the rest of the first response is dropped
    # The kernel's read(fd, buf, 0) discards a pending response; FUSE sends no READ for 0
    # bytes, so through a mount the response stays (a known gap, README).
    assert os.read(tpm0.fd, 0) == b""
    assert len(os.read(tpm0.fd, 4096)) == 20


def test_tpm0_is_exclusive_and_close_drops_the_response(mount: Mount) -> None:
    path = mount.root / "dev/tpm0"
    first = os.open(path, os.O_RDWR)
    try:
        assert failure(os.open, path, os.O_RDWR) == errno.EBUSY
        rm = os.open(mount.root / "dev/tpmrm0", os.O_RDWR)  # any number of tpmrm openers
        os.close(rm)
        os.write(first, GET_RANDOM_8)
    finally:
        os.close(first)
    again = os.open(path, os.O_RDWR)  # free again once closed (release is asynchronous)
    try:
        assert os.read(again, 4096) == b""
    finally:
        os.close(again)


def test_tpmrm0_is_not_seekable_and_tpm0_ignores_offsets(mount: Mount, tpm0: Opened) -> None:
    rm = Opened(mount.root / "dev/tpmrm0")
    try:
        os.write(rm.fd, GET_RANDOM_8)
        assert failure(os.pread, rm.fd, 10, 0) == errno.ESPIPE
        assert failure(os.lseek, rm.fd, 0, os.SEEK_SET) == errno.ESPIPE
        assert len(os.read(rm.fd, 4096)) == 20
    finally:
        rm.close()
    # FUSE cannot refuse lseek alone, so tpm0 stays seekable; its own cursor decides.
    os.write(tpm0.fd, GET_RANDOM_8)
    assert os.pread(tpm0.fd, 10, 1000) == struct.pack(">HII", 0x8001, 20, 0)
    assert len(os.read(tpm0.fd, 4096)) == 10


def test_nonblocking_opens_work_and_report_execution_errors_from_read(mount: Mount) -> None:
    opened = Opened(mount.root / "dev/tpmrm0", os.O_NONBLOCK)  # as tpm2-tss opens it
    try:
        assert cmd.response_code(opened.send(GET_RANDOM_8)) == 0
        # A handle that is not in the space: the write succeeds, the read fails.
        assert os.write(opened.fd, cmd.flush_context(0x80FFFFFF)) == 14
        assert failure(os.read, opened.fd, 4096) == errno.EINVAL
        refusal = mount.log().splitlines()[-1]
        assert "dev/tpmrm0: read refused with EINVAL" in refusal
        assert "handle 0x80ffffff is not an object of this space" in refusal
        assert cmd.response_code(opened.send(GET_RANDOM_8)) == 0
    finally:
        opened.close()


def test_a_shell_drives_tpm0_with_exec(mount: Mount) -> None:
    shell = mount.bash(r"""
        exec 3<> dev/tpm0
        printf '\x80\x01\x00\x00\x00\x0c\x00\x00\x01\x7b\x00\x08' >&3
        dd bs=10 count=1 status=none <&3 | od -An -tx1
        dd bs=10 count=1 status=none <&3 | wc -c
        exec 4<> dev/tpm0 || echo "second open refused"
        printf '\x80\x01\x00' >&3
        exec 3>&-
        exec 3<> dev/tpm0 && echo "reopened"
    """)
    assert shell.stdout.splitlines() == [
        " 80 01 00 00 00 14 00 00 00 00", "10", "second open refused", "reopened"]
    assert "dev/tpm0: Device or resource busy" in shell.stderr
    assert "write error: Invalid argument" in shell.stderr


# -- the resource manager: two processes, each its own space --------------------------------

CLIENT = textwrap.dedent("""
    import sys
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_SE
    from tpm2_pytss.types import TPMT_SYM_DEF

    esys = ESAPI(TCTILdr("device", sys.argv[1]))
    keys = [esys.create_primary(None, alg)[0] for alg in sys.argv[2:]]
    session = esys.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)

    def listed():
        data = esys.get_capability(TPM2_CAP.HANDLES, 0x80000000, 64)[1]
        return " ".join(hex(h) for h in data.data.handles)

    print(" ".join(hex(esys.tr_get_tpm_handle(k)) for k in keys), flush=True)
    print(hex(esys.tr_get_tpm_handle(session)), flush=True)
    print(listed(), flush=True)
    sys.stdin.readline()  # both clients hold their objects now
    print(listed(), flush=True)
    # exits without flushing anything: closing tpmrm0 must
""")


def test_two_processes_with_tpmrm0_see_only_their_own_handles_and_close_flushes(
        mount: Mount, tpm0: Opened) -> None:
    rm = str(mount.root / "dev/tpmrm0")
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT, rm, *algs],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for algs in (["ecc", "rsa"], ["ecc"])]
    try:
        first = [clients[0].stdout.readline().split() for _ in range(3)]  # type: ignore[union-attr]
        second = [clients[1].stdout.readline().split() for _ in range(3)]  # type: ignore[union-attr]
        # Virtual handles, the same numbers in both spaces; sessions keep the TPM's handles.
        assert first[0] == ["0x80ffffff", "0x80fffffe"] and second[0] == ["0x80ffffff"]
        assert first[1] != second[1] and all(s[1][0].startswith("0x200") for s in (first, second))
        assert first[2] == first[0] and second[2] == second[0]
        # Meanwhile another opener of tpmrm0 sees none of them, and the TPM holds none loaded.
        shell = mount.bash(f"tpm2_getcap -T device:{rm} handles-transient")
        assert shell.returncode == 0 and shell.stdout == "", shell.stderr
        assert handles(tpm0.send(get_handles(TRANSIENT))) == []
        outputs = [c.communicate("go\n", timeout=60)[0].split() for c in clients]
        assert outputs == [first[0], second[0]]
    finally:
        for client in clients:
            client.kill()
            client.wait()
    assert [c.returncode for c in clients] == [0, 0]
    # Both closed: their sessions are flushed (release runs right after close returns).
    for _ in range(500):
        left = handles(tpm0.send(get_handles(LOADED_SESSION)))
        left += handles(tpm0.send(get_handles(SAVED_SESSION)))
        if not left:
            break
        os.sched_yield()
    assert left == [] and handles(tpm0.send(get_handles(TRANSIENT))) == []


# -- no exception escapes: random writes, reads and closes on both nodes --------------------


def test_random_traffic_on_both_nodes_keeps_the_mount_and_the_tpm_working(
        mount: Mount, tmp_path: Path) -> None:
    rng = random.Random(7)
    valid = [GET_RANDOM_8, get_handles(TRANSIENT), cmd.create_primary("ecc256"),
             cmd.flush_context(0x80FFFFFF), cmd.pcr_read("sha256", [0, 1]),
             b"\x80\x01\x00\x00\x00\x08\x00\x00"]  # shorter than a header
    nodes = [mount.root / "dev/tpm0", mount.root / "dev/tpmrm0"]
    opened: list[int] = []
    for _ in range(400):
        action = rng.random()
        try:
            if not opened or action < 0.1:
                opened.append(os.open(rng.choice(nodes), os.O_RDWR | rng.choice(
                    [0, os.O_NONBLOCK])))
            elif action < 0.2:
                os.close(opened.pop(rng.randrange(len(opened))))
            elif action < 0.6:
                command = bytearray(rng.choice(valid))
                if rng.random() < 0.5:  # damage it: size, tag, code, length
                    where = rng.randrange(len(command))
                    command[where] = rng.randrange(256)
                    command = command[:rng.randrange(len(command) + 1)] if \
                        rng.random() < 0.3 else command + rng.randbytes(rng.randrange(5000))
                os.write(rng.choice(opened), bytes(command))
            else:
                os.read(rng.choice(opened), rng.choice([0, 1, 10, 4096]))
        except OSError as exc:
            assert exc.errno in (errno.EBUSY, errno.EINVAL, errno.E2BIG, errno.ENODATA,
                                 errno.ENOMEM, errno.ENOENT, errno.EFAULT), exc
    for fd in opened:
        os.close(fd)
    assert "internal error" not in mount.log()
    tpm0 = Opened(mount.root / "dev/tpm0")  # what tpm0 users left loaded
    for handle in handles(tpm0.send(get_handles(TRANSIENT))):
        assert cmd.response_code(tpm0.send(cmd.flush_context(handle))) == 0
    tpm0.close()
    run_acceptance(f"device:{mount.root}/dev/tpmrm0", tmp_path / "after", resource_manager=True)


def test_a_command_in_the_queue_runs_at_background_priority(mount: Mount,
                                                           tpm0: Opened) -> None:
    """A primary (not a quick command) runs in a worker thread at nice BACKGROUND_NICE
    (apfs.background): the request loop's thread keeps its priority."""
    pid = daemon_pid(mount.root)
    assert pid is not None
    handle = cmd.created_handle(tpm0.send(cmd.create_primary("ecc256")))
    tpm0.send(cmd.flush_context(handle))
    nice = {int(tid): nice_of_task(pid, tid) for tid in os.listdir(f"/proc/{pid}/task")}
    assert nice[pid] == 0, nice
    assert BACKGROUND_NICE in nice.values(), nice


def nice_of_task(pid: int, tid: str) -> int:
    """Field 19 of /proc/PID/task/TID/stat (after the command name in parentheses)."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])
