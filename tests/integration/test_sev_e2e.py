"""Issue 8's end-to-end acceptance: an attested SEV launch through a real mount, driven with
shell commands and the owner CLI only (README, "An attested launch").

The inputs are files an owner and a hypervisor have: an OVMF-like firmware image whose
footer table carries the SEV hash-table and secret-area entries (Debian's OVMF lacks them),
a kernel, an initrd, and the kernel-hashes table QEMU places at the hash area.  Everything
else — exporting and verifying the chain, the session, LAUNCH_START, loading and measuring,
verification, the secret — is `cat`, `echo`, `dd` and `apfs sev`.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Mount, Shell
from tests.unit.sev_helpers import HASH_AREA, SECRET_AREA, SEED_EXAMPLE, ovmf_like
from vdev.sev import owner as sevowner
from vdev.sev.kernel_hashes import kernel_hashes_table

FIRMWARE_SIZE = 256 * 1024
MEMORY = 1 << 20  # the guest's RAM (memory=1M); the firmware sits at its top
FIRMWARE_BASE = MEMORY - FIRMWARE_SIZE
CMDLINE = "console=ttyS0 root=/dev/vda"
SECRET = b"luks passphrase: correct horse battery staple, 48B"
SECRET_GUID = "736869e5-84f0-4973-92ec-06879ce3da0b"
NODBG = 0x1


# Load the firmware at the top of RAM and the kernel-hashes table at the firmware's hash
# area, LAUNCH_UPDATE_DATA each (QEMU's order), then read the measurement.
LOAD_AND_MEASURE = f"""
G=$MNT/apfs/sev/launch/$H
dd if=OVMF.fd of=$G/memory bs=4096 seek={FIRMWARE_BASE // 4096} conv=notrunc status=none
echo "{FIRMWARE_BASE:#x} {FIRMWARE_SIZE}" > $G/update
dd if=hashes.bin of=$G/memory bs=16 seek={HASH_AREA.base // 16} conv=notrunc status=none
echo "{HASH_AREA.base:#x} $(stat -c %s hashes.bin)" > $G/update
cat $G/measure > measurement.b64
"""

# The firmware version the owner checks against, from query-sev's fields (status).
VERSION = """
version() { sed -E 's/.*"api-major": ([0-9]+), "api-minor": ([0-9]+), "build-id": ([0-9]+).*/\
--api-major \\1 --api-minor \\2 --build-id \\3/' $MNT/apfs/sev/launch/$H/status; }
"""


@pytest.fixture
def owner_dir(tmp_path: Path) -> Path:
    """The owner's and the hypervisor's files."""
    (tmp_path / "OVMF.fd").write_bytes(ovmf_like(FIRMWARE_SIZE, b"OVMF-like firmware"))
    kernel, initrd = b"bzImage " * 4096, b"initrd " * 1000
    (tmp_path / "bzImage").write_bytes(kernel)
    (tmp_path / "initrd.img").write_bytes(initrd)
    (tmp_path / "hashes.bin").write_bytes(kernel_hashes_table(kernel, initrd, CMDLINE))
    (tmp_path / "disk.key").write_bytes(SECRET)
    return tmp_path


def owner(mount: Mount, where: Path, script: str) -> Shell:
    """Run ``script`` with bash in the owner's directory, ``apfs`` on the PATH, and the
    session's files and functions in scope."""
    bindir = Path(sys.executable).parent
    return mount.bash(f'export PATH="{bindir}:$PATH"\n{VERSION}\n{script}', cwd=where)


def export_and_session(mount: Mount, where: Path, policy: int, name: str = "vm") -> Shell:
    return owner(mount, where, f"""
set -e
cat $MNT/apfs/sev/platform/pdh_cert > pdh.cert
cat $MNT/apfs/sev/platform/cert_chain > cert_chain.cert
cat pdh.cert cert_chain.cert > sev.chain
apfs sev chain sev.chain
apfs sev session --name {name} --chain sev.chain pdh.cert {policy}
""")


def start(mount: Mount, where: Path, policy: int, name: str = "vm") -> str:
    """LAUNCH_START from sevctl's files, as QEMU's sev-guest properties; returns the handle."""
    done = owner(mount, where, f"""
set -e
echo "policy={policy} dh-cert-file=$(cat {name}_godh.b64) session-file=$(cat {name}_session.b64) \
memory=1M" > $MNT/apfs/sev/launch/create
cat $MNT/apfs/sev/launch/create
""")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def verify(mount: Mount, where: Path, handle: str, args: str) -> int:
    """``apfs sev verify``'s exit status for measurement.b64 with these expectations."""
    done = owner(mount, where, f"""
H={handle}
apfs sev verify --measurement measurement.b64 $(version) --tik vm_tik.bin {args}
""")
    return done.returncode


EXPECTED = f"--policy 0 --firmware OVMF.fd --kernel bzImage --initrd initrd.img \
--cmdline '{CMDLINE}'"


def test_attested_launch_verifies_only_the_launched_image_policy_and_command_line(
    mount: Mount, owner_dir: Path
) -> None:
    chain = export_and_session(mount, owner_dir, 0)
    assert chain.returncode == 0, chain.stderr
    assert chain.stdout.splitlines()[-1].startswith("chain: valid, anchored at apfs's emulated")
    handle = start(mount, owner_dir, 0)
    loaded = owner(mount, owner_dir, f"H={handle}\n{LOAD_AND_MEASURE}")
    assert loaded.returncode == 0, loaded.stderr
    assert verify(mount, owner_dir, handle, EXPECTED) == 0

    changed = owner(mount, owner_dir, """
cp OVMF.fd OVMF.changed && printf '\\377' | dd of=OVMF.changed bs=1 seek=100 conv=notrunc \
status=none""")
    assert changed.returncode == 0
    assert verify(mount, owner_dir, handle,
                  EXPECTED.replace("OVMF.fd", "OVMF.changed")) == 1
    assert verify(mount, owner_dir, handle, EXPECTED.replace("--policy 0", "--policy 1")) == 1
    assert verify(mount, owner_dir, handle, EXPECTED.replace(CMDLINE, CMDLINE + " quiet")) == 1

    # A measurement replayed from another launch (the same files, another session) is not
    # this launch's: the owner's TIK does not sign it.
    export_and_session(mount, owner_dir, 0, name="other")
    other = start(mount, owner_dir, 0, name="other")
    replay = owner(mount, owner_dir, f"H={other}\n{LOAD_AND_MEASURE}")
    assert replay.returncode == 0, replay.stderr
    assert verify(mount, owner_dir, handle, EXPECTED) == 1


@pytest.mark.parametrize("policy", [0, NODBG], ids=["debug-allowed", "nodbg"])
def test_injected_secret_is_readable_only_through_debug_and_never_in_ciphertext(
    mount: Mount, owner_dir: Path, policy: int
) -> None:
    assert export_and_session(mount, owner_dir, policy).returncode == 0
    handle = start(mount, owner_dir, policy)
    injected = owner(mount, owner_dir, f"""
set -e
H={handle}
{LOAD_AND_MEASURE}
apfs sev verify --measurement measurement.b64 $(version) --tik vm_tik.bin \
  {EXPECTED.replace("--policy 0", f"--policy {policy}")}
apfs sev secret --tik vm_tik.bin --tek vm_tek.bin --launch-measure-blob measurement.b64 \
  --secret {SECRET_GUID}:disk.key --base64 header.b64 secret.b64
echo "packet-header=$(cat header.b64) secret=$(cat secret.b64)" > $G/secret
echo 1 > $G/finish
cat $G/status
cat $G/ciphertext > ciphertext.bin
dd if=$G/debug bs=16 skip={SECRET_AREA.base // 16} count=8 status=none > debug.bin
""")
    table = sevowner.secret_table({uuid.UUID(SECRET_GUID): SECRET})
    ciphertext = (owner_dir / "ciphertext.bin").read_bytes()
    assert len(ciphertext) == MEMORY
    for plain in (SECRET, table):
        blocks = {plain[i : i + 16] for i in range(len(plain) - 15)}
        assert not any(block in ciphertext for block in blocks)
    if policy & NODBG:
        assert injected.returncode == 1
        assert f"launch/{handle}/debug': Input/output error" in injected.stderr
        assert "DBG_DECRYPT" in mount.log().splitlines()[-1]
        return
    assert injected.returncode == 0, injected.stderr
    assert '"state": "running"' in injected.stdout
    assert (owner_dir / "debug.bin").read_bytes()[: len(table)] == table


def test_seed_example_is_refused_naming_the_key_and_its_mapping_accepted(
    mount: Mount, owner_dir: Path
) -> None:
    (owner_dir / "seed.conf").write_text(SEED_EXAMPLE)
    without_dh = "".join(line + "\n" for line in SEED_EXAMPLE.splitlines()
                         if not line.startswith(("dh_pub", "nonce")))
    (owner_dir / "seed-nodh.conf").write_text(without_dh)
    done = owner(mount, owner_dir, """
cat seed.conf > $MNT/apfs/sev/launch/create
echo "refused=$?"
cat seed-nodh.conf > $MNT/apfs/sev/launch/create && cat $MNT/apfs/sev/launch/create
""")
    lines = done.stdout.splitlines()
    assert lines[0] == "refused=1"
    assert "Invalid argument" in done.stderr
    assert "dh_pub_qx/dh_pub_qy" in mount.log() and "not a point on P-384" in mount.log()
    handle = lines[1]
    status = (mount.root / f"apfs/sev/launch/{handle}/status").read_text()
    assert '"policy": 0, "state": "launch-update"' in status


def test_seed_format_file_generated_by_the_owner_cli_drives_an_attested_launch(
    mount: Mount, owner_dir: Path
) -> None:
    done = owner(mount, owner_dir, f"""
set -e
cat $MNT/apfs/sev/platform/pdh_cert > pdh.cert
cat $MNT/apfs/sev/platform/cert_chain > cert_chain.cert
apfs sev session --chain cert_chain.cert --seed-config launch.conf pdh.cert 0
cat launch.conf > $MNT/apfs/sev/launch/create
H=$(cat $MNT/apfs/sev/launch/create)
G=$MNT/apfs/sev/launch/$H
dd if=OVMF.fd of=$G/memory bs=4096 seek=$(( (64 << 20) / 4096 - {FIRMWARE_SIZE // 4096} )) \
  conv=notrunc status=none
echo "$(( (64 << 20) - {FIRMWARE_SIZE} )) {FIRMWARE_SIZE}" > $G/update
cat $G/measure > measurement.b64
apfs sev verify --measurement measurement.b64 $(version) --tik vm_tik.bin --policy 0 \
  --firmware OVMF.fd
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("measurement: valid")
    config = (owner_dir / "launch.conf").read_text()
    assert config.startswith('[sev-launch]\nflags = "00000000"\npolicy = "00000000"\n')
    assert "dh_pub_qx = " in config and "nonce = " in config
