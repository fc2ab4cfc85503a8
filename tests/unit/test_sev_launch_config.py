"""The seed's ``[sev-launch]`` file: its example, each key's mapping, refusals naming the key,
and a valid seed-format file an owner generates driving a whole attested launch."""

from __future__ import annotations

import pytest

from tests.unit.sev_helpers import SECRET_AREA, SEED_EXAMPLE, started_platform
from vdev.sev import Policy
from vdev.sev import owner as sevowner
from vdev.sev.launch_config import LaunchConfig, parse_launch_config


def without(text: str, *keys: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if line.split(" ")[0] not in keys)


def test_seed_example_is_refused_naming_the_dh_key() -> None:
    """The example's DH coordinates are placeholders, not a point on P-384."""
    with pytest.raises(ValueError, match=r"^dh_pub_qx/dh_pub_qy: .* not a point on P-384"):
        parse_launch_config(SEED_EXAMPLE)


def test_seed_example_without_dh_key_maps_every_key() -> None:
    config = parse_launch_config(without(SEED_EXAMPLE, "dh_pub_qx", "dh_pub_qy", "nonce"))
    assert config == LaunchConfig(
        flags=0, policy=0, vcpu_count=1, vcpu_length=30, vcpu_mask=b"\x00\xab"
    )
    assert config.godh_cert() is None  # the firmware picks TEK/TIK


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('flags = "00000001"', "flags"),
        ('policy = "xyz"', "policy"),
        ('policy = "123456789"', "policy"),
        ('policy = ""', "policy"),
        ('nonce = "0123456789abcdef0123456789abcdef00"', "nonce"),
        ('nonce = "123"', "nonce"),
        ('vcpu_count = "one"', "vcpu_count"),
        ('vcpu_count = "0"', "vcpu_count"),
        ('vcpu_length = "-1"', "vcpu_length"),
        ('vcpu_mask = "00ab00ab"\nvcpu_length = "3"', "vcpu_mask"),
        ('vcpu_mask = "zz"', "vcpu_mask"),
        ('handle = "1"', "handle"),
        ('policy = "1"\npolicy = "2"', "policy"),
        ("policy = 1", "line"),
        ('dh_pub_qx = "01"', "dh_pub_qy"),
    ],
)
def test_malformed_config_is_refused_naming_the_key(line: str, key: str) -> None:
    base = without(
        SEED_EXAMPLE,
        "dh_pub_qx",
        "dh_pub_qy",
        "nonce",
        *(entry.split(" ")[0] for entry in line.splitlines()),
    )
    with pytest.raises(ValueError) as err:
        parse_launch_config(base + line + "\n")
    assert str(err.value).startswith(key)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('policy = "0"\n', "before the [sev-launch] header"),
        ('[sev]\npolicy = "0"\n', "only [sev-launch]"),
        ("# nothing\n", "no [sev-launch] group"),
        ("[sev-launch]\n[sev-launch]\n", "a second [sev-launch]"),
    ],
)
def test_malformed_structure_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_launch_config(text)


def test_comments_blank_lines_and_0x_numbers() -> None:
    config = parse_launch_config(
        '# a guest\n\n[sev-launch]\n  policy = "5"\nvcpu_length = "0x30"\n'
    )
    assert (config.policy, config.vcpu_length) == (Policy.NODBG | Policy.ES, 0x30)


@pytest.mark.parametrize("policy", [0x0, Policy.NODBG | Policy.NOKS])
def test_owner_generated_seed_file_drives_an_attested_launch(policy: int) -> None:
    platform, guests = started_platform()
    export = platform.pdh_cert_export()
    sevowner.verify_chain(export.pdh, export.chain)
    draft = sevowner.build_draft_launch(export.pdh, policy)
    text = LaunchConfig.for_owner(policy, draft.godh_cert, draft.nonce).to_text()
    assert text.startswith('[sev-launch]\nflags = "00000000"\n')
    config = parse_launch_config(text)
    assert config.policy == policy and config.nonce == draft.nonce

    handle = guests.launch_start(
        policy=config.policy, memory_size=0x10000, godh_cert=config.godh_cert(), nonce=config.nonce
    )
    firmware = b"\xeb\xfe" * 2048
    guests.host_write(handle, 0x8000, firmware)
    guests.launch_update_data(handle, 0x8000, len(firmware))
    measurement = guests.launch_measure(handle)
    digest = sevowner.launch_digest(firmware)
    assert sevowner.verify_measurement(
        measurement, draft.tik, digest, policy, platform.api, platform.build
    )
    secret = sevowner.package_secret(
        bytes(range(32)), draft.tek, draft.tik, measurement, platform.api
    )
    guests.launch_secret(handle, secret.header, SECRET_AREA.base, secret.trans)
    guests.launch_finish(handle)
