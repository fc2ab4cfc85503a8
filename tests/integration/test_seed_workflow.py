"""Acceptance 1: the seed's "Example: Configure AP Matrices for Two Linux Guests", on a mount.

Every command line of the example is typed into bash against the mount of the default host
(the seed's: CEX5C card 05, CEX5A card 06, domains 04 47 ab ff), with ``/sys`` spelled
``$SYS``; then the administrator's ``cat``/``ls`` show what the seed says, and guests started
with each of the seed's four ``sysfsdev`` spellings see the seed's lszcrypt tables.
"""

from __future__ import annotations

import pytest
from conftest import Mount
from helpers import (
    GUEST1_APQNS,
    GUEST2_APQNS,
    MATRIX,
    SEED_QUEUES,
    SEED_WORKFLOW,
    bound,
    lines,
    mdevs,
    seed_vars,
)

# The seed's steps 1-4, verbatim except for "$SYS" in place of /sys.  Steps 1-3 work in the
# directories the seed's trees show; `uuidgen > create` names the devices, which the seed
# then calls $uuid1 and $uuid2 (both are new and empty, so either may be Guest1's).
SEED_STEPS_1_TO_3 = """
set -e
cd "$SYS/bus/ap/drivers/cex4queue"
echo 05.0004 > unbind
echo 05.00ab > unbind
echo 05.0047 > unbind
echo 05.00ff > unbind
echo 06.0004 > unbind
echo 06.00ab > unbind

cd "$SYS/bus/ap/drivers/vfio_ap_matrix"
echo 05.0004 > bind
echo 05.00ab > bind
echo 06.0004 > bind
echo 06.00ab > bind

echo 05.0047 > bind
echo 05.00ff > bind

cd "$SYS/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough"
uuidgen > create
uuidgen > create
"""

SEED_STEP_4 = """
set -e
cd $SYS/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix_passthrough
cd ./devices/$uuid1:

echo 5 > assign_adapter
echo 6 > assign_adapter
echo 4 > assign_domain
echo ab > assign_domain

cd $SYS/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix_passthrough
cd ./devices/$uuid2:

echo 5 > assign_adapter
echo 47 > assign_domain
echo ff > assign_domain
"""

# The seed's four ways to name the mdev in `-device vfio_ap_matrix,sysfsdev=...`.
SYSFSDEV_SPELLINGS = [
    "/sys/devices/ap_matrix/matrix/{uuid}",
    "/sys/bus/mdev/devices/{uuid}",
    "/sys/bus/mdev/drivers/vfio_mdev/{uuid}",
    "/sys/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough/devices/{uuid}",
]

# The seed's lszcrypt tables for the guests.  The seed itself is inconsistent about types
# (it prints 06.00ab as CEX5C and Guest2's card 05 as CEX5A although its host has one card 05
# and one card 06): here every row carries its host card's type, CEX5C for 05, CEX5A for 06.
GUEST1_LSZCRYPT = """\
05 CEX5C CCA-Coproc
05.0004 CEX5C CCA-Coproc
05.00ab CEX5C CCA-Coproc
06 CEX5A Accelerator
06.0004 CEX5A Accelerator
06.00ab CEX5A Accelerator
"""
GUEST2_LSZCRYPT = """\
05 CEX5C CCA-Coproc
05.0047 CEX5C CCA-Coproc
05.00ff CEX5C CCA-Coproc
"""


def run_seed_inline(mount: Mount) -> tuple[str, str]:
    """Type steps 1-4 as the seed writes them; returns ($uuid1, $uuid2)."""
    steps = mount.bash(SEED_STEPS_1_TO_3)
    assert (steps.returncode, steps.stderr) == (0, ""), steps
    uuid1, uuid2 = mdevs(mount.root)
    step4 = mount.bash(f"uuid1={uuid1}; uuid2={uuid2}\n{SEED_STEP_4}")
    assert (step4.returncode, step4.stderr) == (0, ""), step4
    return uuid1, uuid2


def assert_seed_matrices(mount: Mount, uuid1: str, uuid2: str) -> None:
    """`cat adapters`, `cat domains`, `cat control_domains` of both mdevs, and the drivers."""
    cat = mount.bash(f"""
        cd "$SYS/devices/ap_matrix/matrix"
        for uuid in {uuid1} {uuid2}; do
            echo "== $uuid"; cat $uuid/adapters; cat $uuid/domains; cat $uuid/control_domains
        done""")
    assert cat.returncode == 0, cat
    assert cat.stdout == (f"== {uuid1}\n05\n06\n0004\n00ab\n"
                          f"== {uuid2}\n05\n0047\n00ff\n")
    m = f"{MATRIX}/{uuid1}"
    assert (mount.read(f"{m}/adapters"), mount.read(f"{m}/domains"),
            mount.read(f"{m}/control_domains")) == ("05\n06\n", "0004\n00ab\n", "")
    m = f"{MATRIX}/{uuid2}"
    assert (mount.read(f"{m}/adapters"), mount.read(f"{m}/domains"),
            mount.read(f"{m}/control_domains")) == ("05\n", "0047\n00ff\n", "")
    assert bound(mount.root, "cex4queue") == ["06.0047", "06.00ff"]
    assert bound(mount.root, "vfio_ap_matrix") == sorted(SEED_QUEUES)


def test_seed_workflow_script(mount: Mount) -> None:
    """`bash scripts/seed-workflow.sh "$SYS"`: every command succeeds, the result is the seed's."""
    done = mount.bash(f'bash "{SEED_WORKFLOW}" "$SYS"')
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failed" not in done.stderr
    uuids = seed_vars(done.stdout)
    assert sorted(uuids.values()) == mdevs(mount.root)
    assert_seed_matrices(mount, uuids["uuid1"], uuids["uuid2"])
    assert "cex4queue: 06.0047 06.00ff\n" in done.stdout
    assert "vfio_ap_matrix: 05.0004 05.0047 05.00ab 05.00ff 06.0004 06.00ab\n" in done.stdout


def test_seed_lines_typed_inline(mount: Mount) -> None:
    """The seed's own lines, `cd .../ap_matrix_passthrough` and `cd ./devices/$uuid1:` included."""
    before = mount.bash('ls "$SYS/bus/ap/drivers/cex4queue"')
    assert lines(before.stdout) == ["05.0004", "05.0047", "05.00ab", "05.00ff",
                                    "06.0004", "06.0047", "06.00ab", "06.00ff", "bind", "unbind"]
    uuid1, uuid2 = run_seed_inline(mount)
    assert_seed_matrices(mount, uuid1, uuid2)


def test_queue_status_follows_the_seed_steps(mount: Mount) -> None:
    """`status` of reserved queues: unassigned after step 2, assigned after step 4, in use while
    the guest runs, assigned again once it stops; host queues have `online` and no `status`."""
    def statuses() -> dict[str, str]:
        return {q: mount.read(f"sys/devices/ap/card{q[:2]}/{q}/status").strip()
                for q in SEED_QUEUES}

    steps = mount.bash(SEED_STEPS_1_TO_3)
    assert steps.returncode == 0, steps
    assert statuses() == dict.fromkeys(SEED_QUEUES, "unassigned")
    host_queue = mount.bash('cd "$SYS/devices/ap/card06/06.0047" && cat online && cat status')
    assert host_queue.stdout == "1\n"
    assert "status: No such file or directory" in host_queue.stderr

    uuid1, uuid2 = mdevs(mount.root)
    step4 = mount.bash(f"uuid1={uuid1}; uuid2={uuid2}\n{SEED_STEP_4}")
    assert step4.returncode == 0, step4
    assert statuses() == dict.fromkeys(SEED_QUEUES, "assigned")

    start = mount.bash(f"echo vfio_ap_matrix,sysfsdev=/sys/devices/ap_matrix/matrix/{uuid1} "
                       f'> "$MNT/apfs/guests/start"')
    assert start.returncode == 0, start
    assert statuses() == {**dict.fromkeys(GUEST1_APQNS, "in use"),
                          **dict.fromkeys(GUEST2_APQNS, "assigned")}
    stop = mount.bash(f'echo /sys/devices/ap_matrix/matrix/{uuid1} > "$MNT/apfs/guests/stop"')
    assert stop.returncode == 0, stop
    assert statuses() == dict.fromkeys(SEED_QUEUES, "assigned")


def lszcrypt_rows(text: str) -> str:
    """The table rows of a guest's lszcrypt, columns joined by one space (the seed's spacing)."""
    rows = lines(text)
    assert rows[0].split() == ["CARD.DOMAIN", "TYPE", "MODE"], text
    assert set(rows[1]) == {"-"}, text
    return "".join(" ".join(row.split()) + "\n" for row in rows[2:])


@pytest.mark.parametrize("form", ["-device", "bare path"])
def test_guests_see_the_seed_tables_with_every_sysfsdev(mount: Mount, form: str) -> None:
    """Steps 5 and 6 with each of the seed's four sysfsdev spellings, stopping in between."""
    uuid1, uuid2 = run_seed_inline(mount)
    guests = mount.root / "apfs/guests"
    for spelling in SYSFSDEV_SPELLINGS:
        for uuid, apqns, table in ((uuid1, GUEST1_APQNS, GUEST1_LSZCRYPT),
                                   (uuid2, GUEST2_APQNS, GUEST2_LSZCRYPT)):
            sysfsdev = spelling.format(uuid=uuid)
            arg = f"vfio_ap_matrix,sysfsdev={sysfsdev}" if form == "-device" else sysfsdev
            start = mount.bash(f'echo {arg} > "$MNT/apfs/guests/start"')
            assert (start.returncode, start.stderr) == (0, ""), (sysfsdev, start)
            assert mount.read(f"apfs/guests/{uuid}/apqns") == "".join(q + "\n" for q in apqns)
            assert lszcrypt_rows(mount.read(f"apfs/guests/{uuid}/lszcrypt")) == table
        assert sorted(p.name for p in guests.iterdir() if p.is_dir()) == sorted([uuid1, uuid2])
        for uuid in (uuid1, uuid2):
            sysfsdev = spelling.format(uuid=uuid)
            arg = f"vfio_ap_matrix,sysfsdev={sysfsdev}" if form == "-device" else sysfsdev
            stop = mount.bash(f'echo {arg} > "$MNT/apfs/guests/stop"')
            assert (stop.returncode, stop.stderr) == (0, ""), (sysfsdev, stop)
        assert [p.name for p in guests.iterdir() if p.is_dir()] == []


def test_guest_crycb_has_usage_domains_as_control_domains(mount: Mount) -> None:
    """The seed's architectural convention: ADM = control_domains | domains (here: domains)."""
    uuid1, _ = run_seed_inline(mount)
    start = mount.bash(f'echo /sys/bus/mdev/devices/{uuid1} > "$MNT/apfs/guests/start"')
    assert start.returncode == 0, start
    crycb = dict(line.split() for line in lines(mount.read(f"apfs/guests/{uuid1}/crycb")))
    assert crycb["adm"] == crycb["aqm"]
    assert crycb["aqm"] == _mask_of(0x04, 0xAB)
    assert crycb["apm"] == _mask_of(0x05, 0x06)


def _mask_of(*ids: int) -> str:
    """A 256-bit mask in sysfs inv-bit order (bit 0 = leftmost), as ``0x`` + 64 hex digits."""
    value = 0
    for i in ids:
        value |= 1 << (255 - i)
    return f"0x{value:064x}"
