"""The ``--state`` directory: file format checks and the lock, without a mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from apfs.host import Host, ap_only, load_config
from apfs.state import StateError, StateStore, config_fingerprint, decode, encode
from vdev.ap.host import HostConfig

FINGERPRINT = config_fingerprint(load_config(None).host)
STATE = Host(ap_only(load_config(None))).export_state()
PATH = Path("/srv/apfs/state")


def test_encode_decode_round_trip() -> None:
    assert decode(PATH, encode(FINGERPRINT, STATE), FINGERPRINT) == STATE


def test_every_truncation_is_refused_with_the_path() -> None:
    data = encode(FINGERPRINT, STATE)
    for length in range(len(data)):
        with pytest.raises(StateError, match=f"^{PATH}: "):
            decode(PATH, data[:length], FINGERPRINT)


def test_every_single_bit_flip_is_refused_with_the_path() -> None:
    data = encode(FINGERPRINT, STATE)
    for at in range(len(data)):
        for bit in range(8):
            damaged = data[:at] + bytes([data[at] ^ 1 << bit]) + data[at + 1:]
            with pytest.raises(StateError, match=f"^{PATH}: "):
                decode(PATH, damaged, FINGERPRINT)


def test_newer_format_and_other_configuration_are_refused() -> None:
    data = encode(FINGERPRINT, STATE).replace(b"apfs-state 1 ", b"apfs-state 2 ", 1)
    with pytest.raises(StateError, match="format version '2'; this apfs reads version 1"):
        decode(PATH, data, FINGERPRINT)
    other = config_fingerprint(HostConfig.grid(2, 2))
    with pytest.raises(StateError, match="saved for a different host configuration"):
        decode(PATH, encode(other, STATE), FINGERPRINT)


def test_fingerprint_follows_meaning_not_spelling() -> None:
    spelled = HostConfig.from_toml('[host]\ndomains = ["ff", "0x04", "47", "AB"]\n'
                                   '[[card]]\nid = 6\ntype = "CEX5A"\n'
                                   '[[card]]\nid = "05"\ntype = "CEX5C"\n')
    assert config_fingerprint(spelled) == FINGERPRINT
    assert config_fingerprint(HostConfig.grid(2, 2)) != FINGERPRINT


def test_store_commits_loads_and_locks(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "state"
    store = StateStore(directory, FINGERPRINT)
    store.open()
    assert store.load() is None
    store.commit(STATE)
    assert store.load() == STATE
    assert sorted(p.name for p in directory.iterdir()) == ["lock", "state"]

    second = StateStore(directory, FINGERPRINT)
    with pytest.raises(StateError) as info:
        second.open()
    assert str(info.value) == (f"{directory}: state directory in use by apfs daemon pid "
                               f"{(directory / 'lock').read_text().strip()} (it holds "
                               f"{directory / 'lock'})")
