"""What the SEV nodes parse before the firmware sees anything: the host TOML's ``[sev]``
table and the launch descriptions written to ``apfs/sev/launch/create``."""

from __future__ import annotations

import base64

import pytest

from vdev.sev.config import SevConfig, parse_sev_table
from vdev.sev.launch_config import LaunchConfig
from vdev.sev.launch_request import parse_launch_request
from vdev.sev.owner import build_draft_launch, build_session
from vdev.sev.platform import SevPlatform

MIB = 1 << 20


def test_an_empty_sev_table_is_the_documented_default() -> None:
    assert parse_sev_table({}) == SevConfig(True, (0, 24), 15, 1, True, 64)
    assert parse_sev_table({"api": "1.51", "build": 0, "sockets": 2, "es": False,
                            "enabled": False, "guest_memory_mib": 1}) == SevConfig(
        False, (1, 51), 0, 2, False, 1)


@pytest.mark.parametrize(("table", "message"), [
    ({"colour": 1}, "sev: unknown key 'colour'"),
    ({"api": 0.24}, "sev.api: 0.24 is not \"MAJOR.MINOR\""),
    ({"api": "0.256"}, "sev.api: '0.256' is not"),
    ({"build": 256}, "sev.build: 256 is not an integer from 0 to 255"),
    ({"sockets": True}, "sev.sockets: True is not an integer from 1 to 2"),
    ({"es": "yes"}, "sev.es: 'yes' is not true or false"),
    ({"guest_memory_mib": 0}, "sev.guest_memory_mib: 0 is not an integer"),
])
def test_a_bad_sev_table_names_the_key_and_value(table: dict[str, object],
                                                  message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_sev_table(table)
    assert str(caught.value).startswith(message)


def _pdh() -> bytes:
    platform = SevPlatform(b"chip")
    platform.init()
    return platform.pdh_cert_export().pdh


def test_qemu_sev_guest_properties_and_their_defaults() -> None:
    session = build_session(_pdh(), 0x5)
    text = (f"policy=0x5,handle=3\ndh-cert-file={base64.b64encode(session.godh_cert).decode()}"
            f" session-file={base64.b64encode(session.session).decode()}, memory=2G")
    request = parse_launch_request(text, 64 * MIB)
    assert (request.policy, request.handle, request.memory_size) == (5, 3, 2 << 30)
    assert (request.godh_cert, request.session) == (session.godh_cert, session.session)
    assert request.nonce is None
    default = parse_launch_request("\n", 64 * MIB)
    assert (default.policy, default.handle, default.memory_size, default.godh_cert) == (
        0x1, 0, 64 * MIB, None)
    assert parse_launch_request("memory=512", 0).memory_size == 512 * MIB
    assert parse_launch_request("memory=64K", 0).memory_size == 64 << 10


def test_a_seed_file_is_recognised_by_its_header() -> None:
    draft = build_draft_launch(_pdh(), 0x1)
    text = "# owner's file\n\n" + LaunchConfig.for_owner(0x1, draft.godh_cert,
                                                        draft.nonce).to_text()
    request = parse_launch_request(text, 16 * MIB)
    assert (request.policy, request.memory_size, request.nonce) == (0x1, 16 * MIB, draft.nonce)
    assert request.godh_cert is not None and request.session is None


@pytest.mark.parametrize(("text", "message"), [
    ("policy=1 policy=2", "policy: given twice"),
    ("policy", "'policy': not key=value"),
    ("policy=x", "policy: 'x' is not a number"),
    ("handle=0x100000000", "handle: '0x100000000' is not a u32"),
    ("memory=1T", "memory: '1T' is not a size"),
    ("dh-cert-file=AAAA", "session-file: missing"),
    ("dh-cert-file=!!!! session-file=AAAA", "dh-cert-file: '!!!!' is not base64"),
    ("[sev-launch]\npolicy = \"zz\"\n", "policy: 'zz' is not 1 to 8 hex digits"),
])
def test_a_bad_launch_description_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_launch_request(text, MIB)
    assert str(caught.value).startswith(message)
