"""Acceptance 2: the seed's Example 2, "Invalid configuration for two guests".

    Guest1: adapters 1,2 domains 5,6
    Guest2: adapter 1 domains 6,7
    This is an invalid configuration because both guests have access to APQNs (1,6).

On a host with adapters 1 and 2 and domains 5, 6 and 7, whichever guest is configured second
and in whichever order its ids are written, the write that would share APQN 01.0006 fails with
EADDRINUSE, changes nothing, and leaves one kernel-style line in ``apfs/log``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Mount
from helpers import LOG, MATRIX, assert_unchanged, lines, snapshot

HOST = """
[host]
domains = ["05", "06", "07"]

[[card]]
id = "01"
type = "CEX5C"

[[card]]
id = "02"
type = "CEX5C"
"""

UUID = {"Guest1": "1d0c43c8-5e0c-4d5c-9d1e-0e4f5a6b7c81",
        "Guest2": "2e1d54d9-6f1d-4e6d-8e2f-1f5a6b7c8d92"}
MATRICES = {"Guest1": {"adapter": ["1", "2"], "domain": ["5", "6"]},
            "Guest2": {"adapter": ["1"], "domain": ["6", "7"]}}

# Reserve every queue for guests (seed steps 1 and 2), then create both mdevs (step 3).
RESERVE_AND_CREATE = f"""
set -e
for q in 01.0005 01.0006 01.0007 02.0005 02.0006 02.0007; do
    echo $q > "$SYS/bus/ap/drivers/cex4queue/unbind"
    echo $q > "$SYS/bus/ap/drivers/vfio_ap_matrix/bind"
done
cd "$SYS/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough"
echo {UUID["Guest1"]} > create
echo {UUID["Guest2"]} > create
"""


def assignments(guest: str, first: str) -> list[str]:
    """The seed-style `echo N > assign_*` lines of one guest, ``first`` kind of id first."""
    kinds = ["adapter", "domain"] if first == "adapter" else ["domain", "adapter"]
    return [f"echo {n} > assign_{kind}" for kind in kinds for n in MATRICES[guest][kind]]


@pytest.fixture
def example2(mount_factory: Callable[..., Mount]) -> Mount:
    mount = mount_factory(HOST)
    done = mount.bash(RESERVE_AND_CREATE)
    assert (done.returncode, done.stderr) == (0, ""), done
    return mount


def ids_of(steps: list[str], kind: str, width: int) -> str:
    """What `cat adapters`/`cat domains` shows after the accepted ``steps``."""
    ids = sorted(int(s.split()[1], 16) for s in steps if s.endswith(f"assign_{kind}"))
    return "".join(f"{i:0{width}x}\n" for i in ids)


@pytest.mark.parametrize("first_guest", ["Guest1", "Guest2"])
@pytest.mark.parametrize("order", ["adapter", "domain"], ids=["adapters-first",
                                                              "domains-first"])
def test_conflicting_assignment_is_refused(example2: Mount, first_guest: str,
                                           order: str) -> None:
    mount = example2
    second = "Guest2" if first_guest == "Guest1" else "Guest1"
    cd = {g: f'cd "$SYS/devices/ap_matrix/matrix/{UUID[g]}"' for g in UUID}
    configure_first = mount.bash("\n".join(["set -e", cd[first_guest],
                                            *assignments(first_guest, order)]))
    assert (configure_first.returncode, configure_first.stderr) == (0, ""), configure_first

    # The second guest's lines succeed up to the one that would give it APQN 01.0006.
    steps = assignments(second, order)
    shared = {"echo 1 > assign_adapter", "echo 6 > assign_domain"}
    conflict = next(i for i in range(len(steps)) if shared <= set(steps[: i + 1]))
    accepted = mount.bash("\n".join(["set -e", cd[second], *steps[:conflict]]))
    assert (accepted.returncode, accepted.stderr) == (0, ""), accepted

    before, log_before = snapshot(mount.root), lines(mount.log())
    refused = mount.bash(f"{cd[second]} && {steps[conflict]}")
    assert refused.returncode == 1
    assert refused.stderr.endswith("write error: Address already in use\n"), refused.stderr
    assert_unchanged(before, snapshot(mount.root), steps[conflict])
    new = lines(mount.log())[len(log_before):]
    assert len(new) == 1, new
    value, attr = steps[conflict].split()[1], steps[conflict].split("> ")[1]
    assert f"{MATRIX}/{UUID[second]}/{attr}: write '{value}\\n' refused with EADDRINUSE" \
        in new[0]
    assert new[0].endswith(f"Userspace may not assign queue 01.0006 to mdev: already assigned "
                           f"to {UUID[first_guest]}")

    first_m, second_m = f"{MATRIX}/{UUID[first_guest]}", f"{MATRIX}/{UUID[second]}"
    all_first = assignments(first_guest, order)
    assert mount.read(f"{first_m}/adapters") == ids_of(all_first, "adapter", 2)
    assert mount.read(f"{first_m}/domains") == ids_of(all_first, "domain", 4)
    assert mount.read(f"{second_m}/adapters") == ids_of(steps[:conflict], "adapter", 2)
    assert mount.read(f"{second_m}/domains") == ids_of(steps[:conflict], "domain", 4)


def test_example2_log_and_state_before_and_after(example2: Mount) -> None:
    """The seed's order (Guest1 then Guest2, adapters first), every file of both mdevs compared."""
    mount = example2
    g1, g2 = UUID["Guest1"], UUID["Guest2"]
    guest1 = mount.bash(f"""set -e
        cd "$SYS/devices/ap_matrix/matrix/{g1}"
        echo 1 > assign_adapter
        echo 2 > assign_adapter
        echo 5 > assign_domain
        echo 6 > assign_domain
        cd "$SYS/devices/ap_matrix/matrix/{g2}"
        echo 1 > assign_adapter
        echo 7 > assign_domain""")
    assert (guest1.returncode, guest1.stderr) == (0, ""), guest1

    def mdev_files() -> dict[str, str]:
        files = {}
        for uuid in (g1, g2):
            for name in ("adapters", "domains", "control_domains"):
                files[f"{uuid}/{name}"] = mount.read(f"{MATRIX}/{uuid}/{name}")
        return files

    before, whole_before = mdev_files(), snapshot(mount.root)
    assert before == {f"{g1}/adapters": "01\n02\n", f"{g1}/domains": "0005\n0006\n",
                      f"{g1}/control_domains": "",
                      f"{g2}/adapters": "01\n", f"{g2}/domains": "0007\n",
                      f"{g2}/control_domains": ""}
    conflict = mount.bash(f'cd "$SYS/devices/ap_matrix/matrix/{g2}" && echo 6 > assign_domain')
    assert conflict.returncode == 1
    assert "write error: Address already in use" in conflict.stderr
    assert mdev_files() == before
    assert_unchanged(whole_before, snapshot(mount.root), "the conflicting write")
    log = mount.read(LOG)
    assert (f"{MATRIX}/{g2}/assign_domain: write '6\\n' refused with EADDRINUSE "
            f"(Address already in use): assign_domain: Userspace may not assign queue 01.0006 "
            f"to mdev: already assigned to {g1}") in log

    # Guest2 can still take its other APQNs once the conflict is gone (Example 1's shape).
    fixed = mount.bash(f"""set -e
        cd "$SYS/devices/ap_matrix/matrix/{g1}"
        echo 6 > unassign_domain
        cd "$SYS/devices/ap_matrix/matrix/{g2}"
        echo 6 > assign_domain""")
    assert (fixed.returncode, fixed.stderr) == (0, ""), fixed
    assert mount.read(f"{MATRIX}/{g2}/domains") == "0006\n0007\n"
