"""`apfs sev`: the guest owner's CLI against the emulated firmware in process — sevctl's
files in and out, every verdict an exit status, every refusal naming the file or option."""

from __future__ import annotations

import base64
import uuid
from hashlib import sha256
from pathlib import Path

import pytest

from apfs import cli
from tests.unit import test_sev_sevctl_vectors as vectors
from tests.unit.sev_helpers import HASH_AREA, SECRET_AREA, ovmf_like, started_platform
from vdev.sev import Guests, Policy, SevPlatform
from vdev.sev import keys as sevkeys
from vdev.sev.kernel_hashes import kernel_hashes_table
from vdev.sev.launch_config import parse_launch_config
from vdev.sev.platform import API_VERSION, BUILD

FIRMWARE_SIZE = 64 * 1024
KEY_B64 = base64.b64encode(bytes(16)).decode()
MEMORY = 0x100000


def apfs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["sev", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def owner_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def platform() -> tuple[SevPlatform, Guests]:
    return started_platform()


def export(platform: SevPlatform, where: Path) -> None:
    """What the platform's export nodes give: the PDH alone, PEK|OCA|CEK, and sevctl's
    export file PDH|PEK|OCA|CEK."""
    pdh_export = platform.pdh_cert_export()
    (where / "pdh.cert").write_bytes(pdh_export.pdh)
    (where / "cert_chain.cert").write_bytes(pdh_export.chain)
    (where / "sev.chain").write_bytes(pdh_export.pdh + pdh_export.chain)


def launch(guests: Guests, policy: int, firmware: bytes, kernel: bytes | None = None,
           cmdline: str | None = None, **start: bytes) -> tuple[int, bytes]:
    """Play QEMU: LAUNCH_START with the owner's files, firmware at the top of memory, the
    kernel-hashes table where the footer table says; returns (handle, measurement)."""
    handle = guests.launch_start(policy=policy, memory_size=MEMORY, **start)
    guests.activate(handle, handle)
    base = MEMORY - len(firmware)
    guests.host_write(handle, base, firmware)
    guests.launch_update_data(handle, base, len(firmware))
    if kernel is not None:
        table = kernel_hashes_table(kernel, None, cmdline)
        guests.host_write(handle, HASH_AREA.base, table)
        guests.launch_update_data(handle, HASH_AREA.base, len(table))
    return handle, guests.launch_measure(handle)


def session_start(where: Path, name: str = "vm") -> dict[str, bytes]:
    return {
        "godh_cert": base64.b64decode((where / f"{name}_godh.b64").read_bytes()),
        "session": base64.b64decode((where / f"{name}_session.b64").read_bytes()),
    }


def version_args() -> list[str]:
    return ["--api-major", str(API_VERSION[0]), "--api-minor", str(API_VERSION[1]),
            "--build-id", str(BUILD)]


# -- chain ------------------------------------------------------------------------------------


def test_chain_of_every_exported_form_verifies_and_names_the_emulated_roots(
    capsys: pytest.CaptureFixture[str], owner_dir: Path, platform: tuple[SevPlatform, Guests]
) -> None:
    export(platform[0], owner_dir)
    sev_chain = (owner_dir / "sev.chain").read_bytes()
    (owner_dir / "sev.chain.b64").write_bytes(base64.b64encode(sev_chain))
    roots = sevkeys.emulated_ask().cert.to_bytes() + sevkeys.emulated_ark().cert.to_bytes()
    (owner_dir / "full.chain").write_bytes(sev_chain + roots)  # sevctl export --full
    for argv in (["sev.chain"], ["--pdh", "pdh.cert", "cert_chain.cert"], ["sev.chain.b64"],
                 ["full.chain"]):
        status, out, _ = apfs(capsys, "chain", *argv)
        assert status == 0, argv
        assert out.splitlines()[-1].startswith("chain: valid, anchored at apfs's emulated AMD")
        assert "not AMD's keys" in out


def test_a_chain_whose_pek_is_changed_fails_with_status_1(
    capsys: pytest.CaptureFixture[str], owner_dir: Path, platform: tuple[SevPlatform, Guests]
) -> None:
    export(platform[0], owner_dir)
    data = bytearray((owner_dir / "sev.chain").read_bytes())
    data[0x824 + 0x20] ^= 1  # a byte of the PEK's public key
    (owner_dir / "sev.chain").write_bytes(bytes(data))
    status, out, _ = apfs(capsys, "chain", "sev.chain")
    assert status == 1
    assert out.startswith("chain: INVALID: chain: the PEK is not signed by the OCA")


def test_a_chain_file_of_a_wrong_length_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], owner_dir: Path
) -> None:
    (owner_dir / "short.chain").write_bytes(b"\x01" * 100)
    status, out, err = apfs(capsys, "chain", "short.chain")
    assert status == 2 and out == ""
    assert err == "apfs sev chain: CHAIN short.chain: 100 bytes, not 6252 or 8336 or 12504 " \
                  "bytes, and: not base64\n"
    status, _, err = apfs(capsys, "chain", "cert_chain.missing")
    assert status == 2 and "CHAIN 'cert_chain.missing': no such file, and: not base64" in err


# -- session, measure, verify -------------------------------------------------------------------


def test_session_writes_sevctls_files_and_the_firmware_accepts_them(
    capsys: pytest.CaptureFixture[str], owner_dir: Path, platform: tuple[SevPlatform, Guests]
) -> None:
    export(platform[0], owner_dir)
    assert apfs(capsys, "session", "--chain", "sev.chain", "pdh.cert", "0x1") == (0, "", "")
    names = sorted(path.name for path in owner_dir.glob("vm_*"))
    assert names == ["vm_godh.b64", "vm_session.b64", "vm_tek.bin", "vm_tik.bin"]
    assert len((owner_dir / "vm_tik.bin").read_bytes()) == 16
    handle, _ = launch(platform[1], 1, ovmf_like(FIRMWARE_SIZE), **session_start(owner_dir))
    assert platform[1].guest_status(handle).policy == 1


def test_session_refuses_a_pdh_whose_chain_is_broken(
    capsys: pytest.CaptureFixture[str], owner_dir: Path, platform: tuple[SevPlatform, Guests]
) -> None:
    export(platform[0], owner_dir)
    other, _ = started_platform()
    (owner_dir / "other.cert").write_bytes(other.pdh_cert_export().pdh)
    status, _, err = apfs(capsys, "session", "--chain", "cert_chain.cert", "other.cert", "0")
    assert status == 1
    assert err.startswith("apfs sev session: --chain cert_chain.cert: chain: the PDH is not "
                          "signed by the PEK")
    assert not list(owner_dir.glob("vm_*"))
    status, _, err = apfs(capsys, "session", "--chain", "sev.chain", "other.cert", "0")
    assert status == 2
    assert err == "apfs sev session: PDH other.cert: not the PDH that CHAIN sev.chain starts with\n"


def test_measure_matches_the_firmware_and_verify_accepts_only_this_launch(
    capsys: pytest.CaptureFixture[str], owner_dir: Path, platform: tuple[SevPlatform, Guests]
) -> None:
    export(platform[0], owner_dir)
    apfs(capsys, "session", "--name", "g", "pdh.cert", "1")
    firmware, kernel = ovmf_like(FIRMWARE_SIZE), b"bzImage" * 1000
    (owner_dir / "OVMF.fd").write_bytes(firmware)
    (owner_dir / "bzImage").write_bytes(kernel)
    _, measured = launch(platform[1], 1, firmware, kernel, "console=ttyS0",
                         **session_start(owner_dir, "g"))
    blob = base64.b64encode(measured).decode()
    files = ["--firmware", "OVMF.fd", "--kernel", "bzImage", "--cmdline", "console=ttyS0"]
    launch_args = [*version_args(), "--tik", "g_tik.bin", *files]

    status, out, _ = apfs(capsys, "measure", "--policy", "1", "--launch-measure-blob", blob,
                          *launch_args)
    assert (status, out) == (0, blob + "\n")
    status, out, _ = apfs(capsys, "verify", "--measurement", blob, "--policy", "0x1",
                          *launch_args)
    assert status == 0 and out.startswith("measurement: valid")

    def verdict(*argv: str, measurement: str = blob) -> int:
        return apfs(capsys, "verify", "--measurement", measurement, *version_args(),
                    "--tik", "g_tik.bin", *argv)[0]

    assert verdict("--policy", "3", *files) == 1
    assert verdict("--policy", "1", *files[:4], "--cmdline", "console=ttyS1") == 1
    changed = bytearray(firmware)
    changed[100] ^= 0xFF
    (owner_dir / "OVMF.changed").write_bytes(bytes(changed))
    assert verdict("--policy", "1", "--firmware", "OVMF.changed", *files[2:]) == 1
    # Another launch of the same files under another session: its measurement, or its
    # MEASURE with this launch's nonce, is not this launch's.
    apfs(capsys, "session", "--name", "h", "pdh.cert", "1")
    _, other = launch(platform[1], 1, firmware, kernel, "console=ttyS0",
                      **session_start(owner_dir, "h"))
    for replayed in (other, other[:32] + measured[32:]):
        assert verdict("--policy", "1", *files,
                       measurement=base64.b64encode(replayed).decode()) == 1
    assert verdict("--policy", "1", *files) == 0


def test_measure_from_a_raw_digest_and_a_measurement_file(
    capsys: pytest.CaptureFixture[str], owner_dir: Path, platform: tuple[SevPlatform, Guests]
) -> None:
    """QEMU's measurement saved as base64 text, the launch digest as base64 (sevctl's
    --launch-digest), the output as 48 raw bytes (--outfile)."""
    export(platform[0], owner_dir)
    apfs(capsys, "session", "pdh.cert", "0")
    firmware = ovmf_like(FIRMWARE_SIZE)
    _, measured = launch(platform[1], 0, firmware, **session_start(owner_dir))
    (owner_dir / "measurement").write_bytes(base64.b64encode(measured) + b"\n")
    digest = base64.b64encode(sha256(firmware).digest()).decode()
    status, out, _ = apfs(capsys, "measure", *version_args(), "--policy", "0", "--tik",
                          "vm_tik.bin", "--launch-digest", digest, "--nonce",
                          base64.b64encode(measured[32:]).decode(), "--outfile", "m.bin")
    assert (status, out) == (0, "Wrote outfile: m.bin\n")
    assert (owner_dir / "m.bin").read_bytes() == measured
    assert apfs(capsys, "verify", "--measurement", "measurement", *version_args(), "--policy",
                "0", "--tik", "vm_tik.bin", "--launch-digest", digest)[0] == 0


def test_measure_refusals_name_the_option(
    capsys: pytest.CaptureFixture[str], owner_dir: Path
) -> None:
    (owner_dir / "tik").write_bytes(b"k" * 15)
    (owner_dir / "plain.fd").write_bytes(b"\x00" * 4096)
    (owner_dir / "bzImage").write_bytes(b"kernel")
    base = ["measure", *version_args(), "--policy", "0", "--nonce", KEY_B64]
    cases = {
        ("--tik", "tik", "--firmware", "plain.fd"):
            "--tik tik: 15 bytes, not 16 bytes, and: not base64",
        ("--tik", KEY_B64, "--kernel", "bzImage"):
            "one of --firmware or --launch-digest is required",
        ("--tik", KEY_B64, "--firmware", "plain.fd", "--kernel", "bzImage"):
            "--firmware plain.fd: launch digest: the firmware has no SEV hash-table entry",
        ("--tik", KEY_B64, "--firmware", "missing.fd"):
            "--firmware missing.fd: No such file or directory",
    }
    for argv, message in cases.items():
        status, _, err = apfs(capsys, *base, *argv)
        assert status == 2 and err.startswith(f"apfs sev measure: {message}"), err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sev", "measure", "--api-major", "256", "--api-minor", "0", "--build-id",
                  "0", "--policy", "0", "--tik", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --api-major: 256 does not fit a byte (SEV API fields are u8)" in err


# -- secret -------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [0, Policy.NODBG])
def test_secret_is_accepted_by_launch_secret_and_lands_in_guest_memory(
    capsys: pytest.CaptureFixture[str], owner_dir: Path, platform: tuple[SevPlatform, Guests],
    policy: int,
) -> None:
    export(platform[0], owner_dir)
    apfs(capsys, "session", "pdh.cert", str(int(policy)))
    guests = platform[1]
    handle, measured = launch(guests, policy, ovmf_like(FIRMWARE_SIZE),
                              **session_start(owner_dir))
    (owner_dir / "measurement").write_text(base64.b64encode(measured).decode())
    (owner_dir / "disk.key").write_bytes(b"correct horse battery staple")
    guid = "736869e5-84f0-4973-92ec-06879ce3da0b"
    status, out, _ = apfs(capsys, "secret", "--tik", "vm_tik.bin", "--tek", "vm_tek.bin",
                          "--launch-measure-blob", "measurement", "--secret",
                          f"{guid}:disk.key", "--base64", "header.b64", "secret.b64")
    assert status == 0
    assert out == "Wrote header to: header.b64\nWrote payload to: secret.b64\n"
    header = base64.b64decode((owner_dir / "header.b64").read_bytes())
    trans = base64.b64decode((owner_dir / "secret.b64").read_bytes())
    assert len(header) == 52
    guests.launch_secret(handle, header, SECRET_AREA.base, trans)
    table = guests.host_read(handle, SECRET_AREA.base, len(trans))
    assert b"correct horse" not in table
    if policy & Policy.NODBG:
        return
    plain = guests.dbg_decrypt(handle, SECRET_AREA.base, len(trans))
    assert plain[:16] == uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b").bytes_le
    assert plain[20:36] == uuid.UUID(guid).bytes_le
    assert plain[40:68] == b"correct horse battery staple"


def test_a_secret_table_of_a_multiple_of_16_gets_16_zero_bytes_as_sevctl_pads(
    capsys: pytest.CaptureFixture[str], owner_dir: Path
) -> None:
    """sevctl's build_table pads ``16 - len % 16``: 20 + (20 + 24) = 64 bytes become 80."""
    (owner_dir / "secret").write_bytes(b"s" * 24)
    status, _, _ = apfs(capsys, "secret", "--tik", KEY_B64, "--tek", KEY_B64,
                        "--launch-measure-blob", base64.b64encode(bytes(48)).decode(),
                        "--secret", f"{uuid.UUID(int=1)}:secret", "header", "payload")
    assert status == 0
    assert len((owner_dir / "payload").read_bytes()) == 80


def test_secret_refusals_name_the_entry(
    capsys: pytest.CaptureFixture[str], owner_dir: Path
) -> None:
    blob = base64.b64encode(bytes(48)).decode()
    keys = ["--tik", KEY_B64, "--tek", KEY_B64, "--launch-measure-blob", blob]
    cases = {
        "nocolon": "--secret nocolon: not UUID:FILE",
        "not-a-uuid:f": "--secret not-a-uuid:f: 'not-a-uuid' is not a UUID",
        f"{uuid.UUID(int=1)}:missing": f"--secret {uuid.UUID(int=1)}: missing: No such file",
    }
    for spec, message in cases.items():
        status, _, err = apfs(capsys, "secret", *keys, "--secret", spec, "h", "p")
        assert status == 2 and err.startswith(f"apfs sev secret: {message}"), err
    assert not (owner_dir / "h").exists()


# -- sevctl's own test vectors, through the CLI (tests/unit/sev_vectors) ----------------------


def test_measure_reproduces_sevctl_measurement_build(
    capsys: pytest.CaptureFixture[str], owner_dir: Path
) -> None:
    """sevctl tests/measurementbuild.rs: the same options give the same base64."""
    (owner_dir / "tik.bin").write_bytes(vectors.MEASURE_TIK)
    (owner_dir / "vmlinuz").write_bytes(vectors.KERNEL)
    (owner_dir / "initrd").write_bytes(vectors.INITRD)
    common = ["--api-major", "0x01", "--api-minor", "40", "--build-id", "40", "--tik",
              "tik.bin", "--nonce", base64.b64encode(vectors.MEASURE_NONCE).decode()]
    ovmf = str(vectors.DATA / "OVMF.amdsev.fd_trimmed")
    cases = {
        ("--policy", "0x03", "--launch-digest",
         "xkvRAfyaSizgonxAjZIAkR8TmolUabBKQKb6KJCDDSM="):
            "lswbxWxI9gckya16JQvdFtpYmNO4b+3inAPpqsgoBI7DE/q1EcIWsVBbGy6pkDxA",
        ("--policy", "0x03", "--firmware", ovmf, "--kernel", "vmlinuz", "--initrd", "initrd",
         "--cmdline", vectors.CMDLINE):
            "h3auYbWQnVW7EGLWN4Hf9SN0oEYMPU2sK4bLnefWPwvDE/q1EcIWsVBbGy6pkDxA",
    }
    for argv, expected in cases.items():
        assert apfs(capsys, "measure", *common, *argv) == (0, expected + "\n", "")


def test_measure_of_sev_es_measures_each_vcpus_vmsa(
    capsys: pytest.CaptureFixture[str], owner_dir: Path
) -> None:
    """SEV-ES (policy NODBG|ES, 4 vCPUs, API 1.49 build 6), as sevctl's test."""
    blob = "/o0nzDKE5XgtVnUZWPhUea/WZYrTKLExR7KCwuMdbActvpWfXTFk21KMZIAAhQny"
    (owner_dir / "tik.bin").write_bytes(vectors.MEASURE_TIK)
    argv = ["measure", "--api-major", "1", "--api-minor", "49", "--build-id", "6",
            "--policy", "0x05", "--tik", "tik.bin", "--launch-measure-blob", blob,
            "--firmware", str(vectors.DATA / "OVMF.amdsev.fd_trimmed")]
    vcpus = ["--num-cpus", "4", "--vmsa-cpu0", str(vectors.DATA / "vmsa0.bin"),
             "--vmsa-cpu1", str(vectors.DATA / "vmsa1.bin")]
    assert apfs(capsys, *argv, *vcpus) == (0, blob + "\n", "")
    status, _, err = apfs(capsys, *argv)
    assert status == 2
    assert err.startswith("apfs sev measure: policy 0x5 has the ES bit: --num-cpus, "
                          "--vmsa-cpu0 and --vmsa-cpu1 are required")


def test_secret_reproduces_sevctl_secret_build(
    capsys: pytest.CaptureFixture[str], owner_dir: Path
) -> None:
    """sevctl tests/secretbuild.rs (two secrets, a fixed IV): the same header and payload."""
    for name, key in (("tek.bin", vectors.SECRET_TEK), ("tik.bin", vectors.SECRET_TIK)):
        (owner_dir / name).write_bytes(key)
    specs = []
    for index, (guid, data) in enumerate((vectors.SECRET1, vectors.SECRET2)):
        (owner_dir / f"secret{index}").write_bytes(data)
        specs += ["--secret", f"{guid}:secret{index}"]
    status, _, _ = apfs(capsys, "secret", "--tek", "tek.bin", "--tik", "tik.bin",
                        "--launch-measure-blob", base64.b64encode(vectors.SECRET_MEASURE).decode(),
                        "--iv", base64.b64encode(vectors.SECRET_IV).decode(), *specs,
                        "header", "payload")
    assert status == 0
    header = base64.b64encode((owner_dir / "header").read_bytes()).decode()
    payload = base64.b64encode((owner_dir / "payload").read_bytes()).decode()
    assert (header, payload) == vectors.built(vectors.SECRET1, vectors.SECRET2)
    assert header == "AAAAAKxUdO1N0yx9mJ7FI9klWeyZ3r0dOEKHUOhIRqzGYYvTJgdMtBPL1nK6GD9aGET7Ng=="


# -- the seed's format --------------------------------------------------------------------------


def test_seed_config_from_a_session_drives_an_attested_launch(
    capsys: pytest.CaptureFixture[str], owner_dir: Path, platform: tuple[SevPlatform, Guests]
) -> None:
    export(platform[0], owner_dir)
    status, _, _ = apfs(capsys, "session", "--chain", "sev.chain", "--seed-config",
                        "launch.conf", "sev.chain", "0x3")
    assert status == 0
    assert not (owner_dir / "vm_session.b64").exists()
    text = (owner_dir / "launch.conf").read_text()
    assert text.startswith('[sev-launch]\nflags = "00000000"\npolicy = "00000003"\n')
    config = parse_launch_config(text)
    godh = base64.b64decode((owner_dir / "vm_godh.b64").read_bytes())
    assert config.godh_cert() == godh
    firmware = ovmf_like(FIRMWARE_SIZE)
    (owner_dir / "OVMF.fd").write_bytes(firmware)
    _, measured = launch(platform[1], config.policy, firmware, godh_cert=godh,
                         nonce=config.nonce)
    status, _, _ = apfs(capsys, "verify", "--measurement", base64.b64encode(measured).decode(),
                        *version_args(), "--policy", "3", "--tik", "vm_tik.bin",
                        "--firmware", "OVMF.fd")
    assert status == 0


def test_help_teaches_the_files_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["sev", "session", "--help"])
    out = capsys.readouterr().out
    for words in ("vm_godh.b64", "N_session.b64", "sevctl session", "Exit status: 0",
                  "[sev-launch]"):
        assert words in out
