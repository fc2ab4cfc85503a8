"""The SEV firmware in the mount: kvm_amd's parameters, apfs/sev/platform and the launch
directories, driven with shell lines and file I/O on real mounts of the default host (which
has ``[sev]``) and of TOML hosts.  Every refusal is checked for its errno, its log line, and
that nothing changed; the owner's side is :mod:`vdev.sev.owner` (what sevctl does).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import threading
from pathlib import Path

import pytest
from conftest import Mount, MountFactory
from helpers import write_error

from apfs.testing import MountError, mounted
from tests.unit.sev_helpers import SEED_EXAMPLE
from vdev.ap.host import DEFAULT_HOST_TOML
from vdev.sev import keys, owner
from vdev.sev.cert import CERT_LEN, Certificate, Usage
from vdev.sev.launch_config import LaunchConfig

PLATFORM = "apfs/sev/platform"
LAUNCH = "apfs/sev/launch"
API = (0, 24)
BUILD = 15


def status(mount: Mount) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in mount.read(f"{PLATFORM}/status").splitlines())


def read_bytes(mount: Mount, relative: str) -> bytes:
    return (mount.root / relative).read_bytes()


def pwrite(mount: Mount, relative: str, offset: int, data: bytes) -> None:
    fd = os.open(mount.root / relative, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def pread(mount: Mount, relative: str, offset: int, size: int) -> bytes:
    fd = os.open(mount.root / relative, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def create(mount: Mount, description: str) -> str:
    """Start a launch; the new guest's directory."""
    mount.write(f"{LAUNCH}/create", description)
    return f"{LAUNCH}/{mount.read(f'{LAUNCH}/create').strip()}"


def refused(mount: Mount, relative: str, text: str | bytes, code: int) -> str:
    """Write ``text``, expect ``code``; the message of the log line it left."""
    with pytest.raises(OSError) as caught:
        mount.write(relative, text)
    assert caught.value.errno == code
    last = mount.refusals()[-1]
    assert (last.path, last.errno) == (relative, code)
    return last.message


# --- layout and formats ---------------------------------------------------------------


def test_kvm_amd_parameters_and_the_platform_files_as_a_shell_sees_them(mount: Mount) -> None:
    shell = mount.bash("cd sys/module/kvm_amd/parameters && cat sev sev_es sev_snp && "
                       "stat -c '%a %n' * && cd $MNT/apfs/sev && ls platform && ls launch && "
                       "cd platform && stat -c '%a %s %n' *")
    assert shell.returncode == 0, shell.stderr
    out = shell.stdout.splitlines()
    assert out[:6] == ["Y", "Y", "N", "444 sev", "444 sev_es", "444 sev_snp"]
    assert out[6:18] == ["cert_chain", "get_id", "init", "pdh_cert", "pdh_gen",
                         "pek_cert_import", "pek_csr", "pek_gen", "platform_reset",
                         "shutdown", "status", "create"]
    assert sorted(out[18:]) == sorted([
        "444 4096 status", "200 4096 init", "200 4096 shutdown", "200 4096 platform_reset",
        "200 4096 pek_gen", "200 4096 pdh_gen", "444 0 pdh_cert", "444 0 cert_chain",
        "400 0 pek_csr", "200 0 pek_cert_import", "444 0 get_id"])
    assert mount.read(f"{PLATFORM}/status") == (
        "api 0.24\nstate INIT\nowner 0\nconfig_es 1\nbuild 15\nguests 0\n")


def test_the_exported_pdh_chain_verifies_and_get_id_is_64_bytes(mount: Mount) -> None:
    pdh, chain = read_bytes(mount, f"{PLATFORM}/pdh_cert"), read_bytes(mount,
                                                                      f"{PLATFORM}/cert_chain")
    assert len(pdh) == CERT_LEN and len(chain) == 3 * CERT_LEN
    assert owner.verify_chain(pdh, chain).usage == Usage.PDH
    assert [Certificate.from_bytes(chain[i:i + CERT_LEN], "c").usage
            for i in range(0, len(chain), CERT_LEN)] == [Usage.PEK, Usage.OCA, Usage.CEK]
    get_id = read_bytes(mount, f"{PLATFORM}/get_id")
    assert len(get_id) == 64 and get_id == read_bytes(mount, f"{PLATFORM}/get_id")


def test_a_toml_host_names_its_sev_firmware_or_has_none(mount_factory: MountFactory) -> None:
    two = mount_factory(DEFAULT_HOST_TOML + '[sev]\napi = "0.17"\nbuild = 3\nsockets = 2\n'
                        "es = false\n")
    assert two.read("sys/module/kvm_amd/parameters/sev_es") == "N\n"
    assert status(two)["api"] == "0.17" and status(two)["build"] == "3"
    assert status(two)["config_es"] == "0"
    assert len(read_bytes(two, f"{PLATFORM}/get_id")) == 128
    off = mount_factory(DEFAULT_HOST_TOML + "[sev]\nenabled = false\n")
    assert off.bash("cat sys/module/kvm_amd/parameters/*").stdout == "N\nN\nN\n"
    assert not (off.root / "apfs/sev").exists()
    none = mount_factory(DEFAULT_HOST_TOML)
    assert not (none.root / "sys/module/kvm_amd").exists()
    assert not (none.root / "apfs/sev").exists()


def test_a_bad_sev_table_is_refused_at_mount_naming_the_key(tmp_path: Path) -> None:
    with (pytest.raises(MountError, match=r"sev\.sockets: 3 is not an integer from 1 to 2"),
          mounted(DEFAULT_HOST_TOML + "[sev]\nsockets = 3\n", where=tmp_path)):
        pass


# --- platform commands ------------------------------------------------------------------


def test_pek_gen_and_pdh_gen_renew_what_the_spec_says(mount: Mount) -> None:
    pdh, chain = read_bytes(mount, f"{PLATFORM}/pdh_cert"), read_bytes(mount,
                                                                      f"{PLATFORM}/cert_chain")
    mount.write(f"{PLATFORM}/pdh_gen", "1\n")
    pdh2, chain2 = read_bytes(mount, f"{PLATFORM}/pdh_cert"), read_bytes(mount,
                                                                        f"{PLATFORM}/cert_chain")
    assert pdh2 != pdh and chain2 == chain
    mount.write(f"{PLATFORM}/pek_gen", "1\n")
    chain3 = read_bytes(mount, f"{PLATFORM}/cert_chain")
    assert chain3[:2 * CERT_LEN] != chain[:2 * CERT_LEN]  # new PEK and OCA
    assert chain3[2 * CERT_LEN:] == chain[2 * CERT_LEN:]  # the CEK is the chip's
    owner.verify_chain(read_bytes(mount, f"{PLATFORM}/pdh_cert"), chain3)
    mount.write(f"{PLATFORM}/pdh_gen", "0\n")  # kstrtobool false: nothing happens
    assert read_bytes(mount, f"{PLATFORM}/cert_chain") == chain3


def test_shutdown_reset_and_the_drivers_auto_init(mount: Mount) -> None:
    chain = read_bytes(mount, f"{PLATFORM}/cert_chain")
    shell = mount.bash(f"cd {PLATFORM} && echo 1 > shutdown && grep state status && "
                       "wc -c < pdh_cert && grep state status && echo 1 > shutdown && "
                       "echo 1 > platform_reset && grep state status")
    assert shell.returncode == 0, shell.stderr
    # PDH_CERT_EXPORT INITs an UNINIT platform, as the driver does, and leaves it INIT.
    assert shell.stdout.splitlines() == ["state UNINIT", "2084", "state INIT", "state UNINIT"]
    assert read_bytes(mount, f"{PLATFORM}/cert_chain")[:2 * CERT_LEN] != chain[:2 * CERT_LEN]
    # PLATFORM_RESET of an INIT platform: the driver SHUTs it DOWN first.
    mount.write(f"{PLATFORM}/platform_reset", "1")
    assert status(mount)["state"] == "UNINIT"
    # A firmware refusal in UNINIT: PDH_GEN auto-INITs, but SHUTDOWN is refused.
    message = refused(mount, f"{PLATFORM}/shutdown", "1\n", errno.EIO)
    assert message == ("SHUTDOWN: not allowed while the platform is UNINIT "
                       "(status INVALID_PLATFORM_STATE 0x01)")


def test_platform_reset_while_working_is_ebusy_and_changes_nothing(mount: Mount) -> None:
    guest = create(mount, "policy=0x1")
    before = (status(mount), read_bytes(mount, f"{PLATFORM}/cert_chain"))
    shell = mount.bash(f"echo 1 > {PLATFORM}/platform_reset")
    assert write_error(errno.EBUSY) in shell.stderr
    assert mount.refusals()[-1].message == "PLATFORM_RESET: the platform is WORKING with 1 guest(s)"
    assert (status(mount), read_bytes(mount, f"{PLATFORM}/cert_chain")) == before
    assert before[0]["state"] == "WORKING" and before[0]["guests"] == "1"
    assert json.loads(mount.read(f"{guest}/status"))["state"] == "launch-update"


def test_pek_csr_signed_by_an_owner_oca_takes_ownership(mount: Mount) -> None:
    csr = Certificate.from_bytes(read_bytes(mount, f"{PLATFORM}/pek_csr"), "csr")
    assert csr.usage == Usage.PEK and csr.sig1.empty and csr.sig2.empty
    oca = keys.make_oca(API)
    assert oca.private is not None
    signed = csr.signed(1, Usage.OCA, oca.private).to_bytes()
    stranger = keys.make_oca(API)
    message = refused(mount, f"{PLATFORM}/pek_cert_import", signed + stranger.cert.to_bytes(),
                      errno.EIO)
    assert message.endswith("no valid signature by the OCA (status BAD_SIGNATURE 0x0a)")
    assert status(mount)["owner"] == "0"
    message = refused(mount, f"{PLATFORM}/pek_cert_import", signed, errno.EINVAL)
    assert message == ("PEK_CERT_IMPORT: 2084 bytes at offset 0; need the PEK and OCA "
                       "certificates, 4168 bytes at offset 0")
    shell_input = mount.root.parent / "import.bin"
    shell_input.write_bytes(signed + oca.cert.to_bytes())
    shell = mount.bash(f"cat {shell_input} > {PLATFORM}/pek_cert_import && "
                       f"grep owner {PLATFORM}/status")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout == "owner 1\n"
    chain = read_bytes(mount, f"{PLATFORM}/cert_chain")
    assert chain[CERT_LEN:2 * CERT_LEN] == oca.cert.to_bytes()
    owner.verify_chain(read_bytes(mount, f"{PLATFORM}/pdh_cert"), chain)


# --- launches ---------------------------------------------------------------------------


def test_an_attested_launch_through_the_launch_files(mount: Mount) -> None:
    pdh = read_bytes(mount, f"{PLATFORM}/pdh_cert")
    owner.verify_chain(pdh, read_bytes(mount, f"{PLATFORM}/cert_chain"))
    policy = 0x0  # debugging allowed: the secret is checked through the debug view
    session = owner.build_session(pdh, policy)
    guest = create(mount, f"policy={policy:#x},dh-cert-file="
                          f"{base64.b64encode(session.godh_cert).decode()},session-file="
                          f"{base64.b64encode(session.session).decode()},memory=8M")
    assert sorted(os.listdir(mount.root / guest)) == [
        "ciphertext", "debug", "finish", "measure", "memory", "remove", "secret", "status",
        "update", "update_vmsa"]
    assert (mount.root / guest / "memory").stat().st_size == 8 << 20
    firmware = os.urandom(3 * 4096)
    pwrite(mount, f"{guest}/memory", 0x10000, firmware)
    mount.write(f"{guest}/update", f"0x10000 {len(firmware)}\n")
    # The host now sees ciphertext; the debug view shows the plaintext.
    assert pread(mount, f"{guest}/ciphertext", 0x10000, len(firmware)) != firmware
    assert pread(mount, f"{guest}/debug", 0x10005, 100) == firmware[5:105]
    measurement = base64.b64decode(mount.read(f"{guest}/measure"))
    assert len(measurement) == 48
    assert mount.read(f"{guest}/measure") == base64.b64encode(measurement).decode() + "\n"
    digest = owner.launch_digest(firmware)
    assert owner.verify_measurement(measurement, session.tik, digest, policy, API, BUILD)
    assert not owner.verify_measurement(measurement, session.tik,
                                        owner.launch_digest(firmware[:-1] + b"x"), policy,
                                        API, BUILD)
    assert json.loads(mount.read(f"{guest}/status")) == {
        "enabled": True, "api-major": 0, "api-minor": 24, "build-id": 15, "policy": 0,
        "state": "launch-secret", "handle": int(guest.rsplit("/", 1)[1])}
    secret = os.urandom(64)
    packet = owner.package_secret(secret, session.tek, session.tik, measurement, API)
    gpa = 0x20000
    fields = (f"packet-header={base64.b64encode(packet.header).decode()} "
              f"secret={base64.b64encode(packet.trans).decode()} gpa={gpa}")
    bad = bytearray(packet.header)
    bad[-1] ^= 1
    before = pread(mount, f"{guest}/ciphertext", gpa, 64)
    message = refused(mount, f"{guest}/secret",
                      fields.replace(base64.b64encode(packet.header).decode(),
                                     base64.b64encode(bytes(bad)).decode()), errno.EIO)
    assert message.endswith("(status BAD_MEASUREMENT 0x0b)")
    assert pread(mount, f"{guest}/ciphertext", gpa, 64) == before
    mount.write(f"{guest}/secret", fields)
    assert pread(mount, f"{guest}/debug", gpa, 64) == secret
    whole = read_bytes(mount, f"{guest}/ciphertext")
    assert len(whole) == 8 << 20
    assert all(secret[i:i + 16] not in whole for i in range(0, 64, 16))
    shell = mount.bash(f"cd {guest} && echo 1 > finish && cat status && echo 1 > remove && "
                       f"ls $MNT/{LAUNCH} && grep -E 'state|guests' $MNT/{PLATFORM}/status")
    assert shell.returncode == 0, shell.stderr
    assert json.loads(shell.stdout.splitlines()[0])["state"] == "running"
    assert shell.stdout.splitlines()[1:] == ["create", "state INIT", "guests 0"]


def test_the_secret_gpa_defaults_to_the_ovmf_secret_area(mount: Mount) -> None:
    from vdev.sev import ovmf

    table = ovmf.build_footer_table({ovmf.SEV_SECRET_GUID: ovmf.area_entry(0x80000, 0x1000)})
    image = os.urandom(0x4000 - len(table)) + table  # the footer ends the image
    assert ovmf.secret_area(image) == ovmf.Area(0x80000, 0x1000)
    pdh = read_bytes(mount, f"{PLATFORM}/pdh_cert")
    session = owner.build_session(pdh, 0)
    guest = create(mount, f"policy=0 dh-cert-file={base64.b64encode(session.godh_cert).decode()}"
                          f" session-file={base64.b64encode(session.session).decode()}")
    pwrite(mount, f"{guest}/memory", 0x100000, image)
    mount.write(f"{guest}/update", f"{0x100000} {len(image)}")
    measurement = base64.b64decode(mount.read(f"{guest}/measure"))
    secret = os.urandom(16 * 1024)  # the kernel's cap: 22 KiB of base64, beyond a page
    packet = owner.package_secret(secret, session.tek, session.tik, measurement, API)
    fields = mount.root.parent / "fields"
    fields.write_text(f"packet-header={base64.b64encode(packet.header).decode()}\n"
                      f"secret={base64.b64encode(packet.trans).decode()}\n")
    shell = mount.bash(f"cat {fields} > {guest}/secret")
    assert shell.returncode == 0, shell.stderr
    assert pread(mount, f"{guest}/debug", 0x80000, len(secret)) == secret


def test_the_seed_launch_file_is_refused_naming_its_key_and_a_valid_one_is_taken(
        mount: Mount) -> None:
    message = refused(mount, f"{LAUNCH}/create", SEED_EXAMPLE, errno.EINVAL)
    assert message.startswith("launch description: dh_pub_qx/dh_pub_qy: (")
    assert message.endswith("is not a point on P-384 (coordinates are little-endian)")
    assert status(mount)["guests"] == "0"
    message = refused(mount, f"{LAUNCH}/create", SEED_EXAMPLE.replace('"00000000"', '"1"'),
                      errno.EINVAL)
    assert message.startswith("launch description: flags: 0x1:")
    draft = owner.build_draft_launch(read_bytes(mount, f"{PLATFORM}/pdh_cert"), 0x1)
    text = LaunchConfig.for_owner(draft.policy, draft.godh_cert, draft.nonce).to_text()
    guest = create(mount, text)
    firmware = os.urandom(4096)
    pwrite(mount, f"{guest}/memory", 0, firmware)
    mount.write(f"{guest}/update", "0 4096")
    measurement = base64.b64decode(mount.read(f"{guest}/measure"))
    assert owner.verify_measurement(measurement, draft.tik, owner.launch_digest(firmware), 0x1,
                                    API, BUILD)
    assert (mount.root / guest / "memory").stat().st_size == 64 << 20  # guest_memory_mib


def test_launch_refusals_name_file_value_and_status_and_change_nothing(mount: Mount) -> None:
    guest = create(mount, "policy=0x1 memory=1M")
    handle = guest.rsplit("/", 1)[1]
    data = os.urandom(4096)
    pwrite(mount, f"{guest}/memory", 0, data)
    cases = [
        (f"{guest}/update", "8 16\n", errno.EIO,
         "LAUNCH_UPDATE_DATA: address 0x8 is not 16-byte aligned (status INVALID_ADDRESS 0x09)"),
        (f"{guest}/update", "0 1048592\n", errno.EIO,
         "LAUNCH_UPDATE_DATA: 0x0+0x100010 is beyond guest memory (0x100000 bytes) "
         "(status INVALID_ADDRESS 0x09)"),
        (f"{guest}/update", "0\n", errno.EINVAL, "update: '0' is not `OFFSET LENGTH`"),
        (f"{guest}/update_vmsa", "0\n", errno.EIO,
         f"LAUNCH_UPDATE_VMSA: guest {handle}'s policy 0x1 is not SEV-ES "
         "(status POLICY_FAILURE 0x07)"),
        (f"{guest}/finish", "1\n", errno.EIO,
         f"LAUNCH_FINISH: not allowed while guest {handle} is LUPDATE "
         "(status INVALID_GUEST_STATE 0x02)"),
        (f"{guest}/secret", "secret=AAAA\n", errno.EINVAL, "secret: packet-header: missing"),
        (f"{LAUNCH}/create", "policy=0x1 color=red\n", errno.EINVAL,
         "launch description: color: unknown sev-guest key (known: policy, handle, "
         "dh-cert-file, session-file, memory)"),
        (f"{LAUNCH}/create", "policy=0x1 handle=99\n", errno.EIO,
         "LAUNCH_START: no guest with handle 99 (status INVALID_GUEST 0x10)"),
        (f"{LAUNCH}/create", f"policy=0x3 handle={handle}\n", errno.EIO,
         f"LAUNCH_START: guest {handle}'s key cannot be shared: NOKS is set in policy 0x1 "
         "or 0x3 (status POLICY_FAILURE 0x07)"),
    ]
    for path, text, code, message in cases:
        assert refused(mount, path, text, code) == message, path
    assert json.loads(mount.read(f"{guest}/status"))["state"] == "launch-update"
    assert os.listdir(mount.root / LAUNCH) == ["create", handle]
    with pytest.raises(OSError) as caught:
        pwrite(mount, f"{guest}/memory", (1 << 20) - 8, b"x" * 16)
    assert caught.value.errno == errno.EFBIG
    # NODBG (policy bit 0) refuses the debug view; the read's log line says why.
    with pytest.raises(OSError) as caught:
        pread(mount, f"{guest}/debug", 0, 16)
    assert caught.value.errno == errno.EIO
    assert (f"{guest}/debug: read refused with EIO (Input/output error): DBG_DECRYPT: guest "
            f"{handle}'s policy 0x1 has NODBG (status POLICY_FAILURE 0x07)") in mount.log()
    assert pread(mount, f"{guest}/ciphertext", 0, 4096) == data  # nothing was encrypted
    mount.write(f"{guest}/update", "0 4096")
    mount.read(f"{guest}/measure")
    assert refused(mount, f"{guest}/update", "0 16", errno.EIO).endswith(
        f"guest {handle} is LSECRET (status INVALID_GUEST_STATE 0x02)")


def test_a_removed_guest_is_gone_and_its_open_files_answer_enodev(mount: Mount) -> None:
    guest = create(mount, "\n")  # all of QEMU's defaults
    fd = os.open(mount.root / guest / "status", os.O_RDONLY)
    try:
        mount.write(f"{guest}/remove", "1\n")
        with pytest.raises(OSError) as caught:
            os.pread(fd, 100, 0)
        assert caught.value.errno == errno.ENODEV
    finally:
        os.close(fd)
    assert not (mount.root / guest).exists()
    assert status(mount)["state"] == "INIT"


def test_a_64_mib_update_runs_off_the_loop_while_other_files_answer(mount: Mount) -> None:
    guest = create(mount, "policy=0 memory=64M")
    image = os.urandom(1 << 20) * 64
    pwrite(mount, f"{guest}/memory", 0, image)
    done = threading.Event()
    errors: list[BaseException] = []

    def update() -> None:
        try:
            mount.write(f"{guest}/update", f"0 {len(image)}")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=update)
    worker.start()
    reads = []
    while not done.is_set() or not reads:
        reads.append((mount.read("sys/bus/ap/ap_domain"), mount.read(f"{PLATFORM}/status")))
    worker.join()
    assert not errors
    assert {r[0] for r in reads} == {"4\n"}
    assert all(r[1].startswith("api 0.24\nstate WORKING\n") for r in reads)
    assert pread(mount, f"{guest}/debug", 5 << 20, 4096) == image[5 << 20:(5 << 20) + 4096]
    measurement = base64.b64decode(mount.read(f"{guest}/measure"))
    assert len(measurement) == 48


# --- --state and apfs/reset -------------------------------------------------------------


def test_keys_and_ownership_survive_a_restart_and_guests_do_not(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with mounted(state=state, where=tmp_path) as first:
        csr = Certificate.from_bytes(read_bytes(first, f"{PLATFORM}/pek_csr"), "csr")
        oca = keys.make_oca(API)
        assert oca.private is not None
        first.write(f"{PLATFORM}/pek_cert_import",
                    csr.signed(1, Usage.OCA, oca.private).to_bytes() + oca.cert.to_bytes())
        exported = (read_bytes(first, f"{PLATFORM}/pdh_cert"),
                    read_bytes(first, f"{PLATFORM}/cert_chain"),
                    read_bytes(first, f"{PLATFORM}/get_id"))
        create(first, "policy=0x1")
        assert status(first)["guests"] == "1"
    with mounted(state=state, where=tmp_path) as second:
        assert (read_bytes(second, f"{PLATFORM}/pdh_cert"),
                read_bytes(second, f"{PLATFORM}/cert_chain"),
                read_bytes(second, f"{PLATFORM}/get_id")) == exported
        assert status(second) == {"api": "0.24", "state": "INIT", "owner": "1",
                                  "config_es": "1", "build": "15", "guests": "0"}
        assert os.listdir(second.root / LAUNCH) == ["create"]
    with mounted(where=tmp_path) as other:  # without --state: another chip
        assert read_bytes(other, f"{PLATFORM}/cert_chain") != exported[1]


def test_keys_an_auto_init_read_makes_are_saved_by_that_read(tmp_path: Path) -> None:
    """After PLATFORM_RESET the platform has no keys; the read of pdh_cert INITs it (the
    driver's auto-INIT), which makes new ones: they are durable when the read returns."""
    state = tmp_path / "state"
    with mounted(state=state, where=tmp_path) as first:
        before = read_bytes(first, f"{PLATFORM}/pdh_cert")
        first.write(f"{PLATFORM}/platform_reset", "1")
        exported = read_bytes(first, f"{PLATFORM}/pdh_cert")
        assert exported != before  # new keys, made by that read
    with mounted(state=state, where=tmp_path) as second:
        assert read_bytes(second, f"{PLATFORM}/pdh_cert") == exported


def test_apfs_reset_reboots_the_platform_with_the_keys_it_had_at_mount(mount: Mount) -> None:
    pdh, chain = read_bytes(mount, f"{PLATFORM}/pdh_cert"), read_bytes(mount,
                                                                      f"{PLATFORM}/cert_chain")
    create(mount, "policy=0x1")
    mount.write(f"{PLATFORM}/pdh_gen", "1")
    assert read_bytes(mount, f"{PLATFORM}/pdh_cert") != pdh
    mount.reset()
    assert read_bytes(mount, f"{PLATFORM}/pdh_cert") == pdh
    assert read_bytes(mount, f"{PLATFORM}/cert_chain") == chain
    assert status(mount)["state"] == "INIT" and status(mount)["guests"] == "0"
    assert os.listdir(mount.root / LAUNCH) == ["create"]
