"""The upstream workflow of Documentation/arch/s390/vfio-ap.rst on a ``vfio_ap`` mount.

Shell lines as an administrator types them: reserve APQNs with apmask/aqmask (the queues move
to vfio_ap), create two mediated devices, assign adapters and domains, read ``matrix``,
``guest_matrix`` and ``ap_config``, rewrite ``ap_config``, start a guest, remove the devices
and give the queues back to the host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import Mount, apfs, unmount
from helpers import REPO, UUID_RE, bound

from vdev.ap import bitmap
from vdev.ap.host import DEFAULT_HOST_TOML

VFIO_HOST = DEFAULT_HOST_TOML.replace("[host]", '[host]\nflavor = "vfio_ap"')
MATRIX = "devices/vfio_ap/matrix"  # under sys/
TYPE_DIR = f"{MATRIX}/mdev_supported_types/vfio_ap-passthrough"
ZERO = "0x" + "0" * 64


def mask(*ids: int) -> str:
    return bitmap.to_sysfs(bitmap.from_ids(ids))


RESERVE = """
cd "$SYS/bus/ap"
echo -0x5 > apmask
echo -4,-0xab > aqmask
cat apmask aqmask
ls drivers/vfio_ap
"""

CREATE_AND_ASSIGN = """
cd "$SYS/devices/vfio_ap/matrix/mdev_supported_types/vfio_ap-passthrough"
cat name device_api available_instances
uuid1=$(uuidgen) uuid2=$(uuidgen)
echo $uuid1 > create
echo $uuid2 > create
cat available_instances
cd "$SYS/devices/vfio_ap/matrix/$uuid1"
echo 5 > assign_adapter
echo 4 > assign_domain
echo 0xab > assign_domain
echo 4 > assign_control_domain
cd "$SYS/bus/mdev/devices/$uuid2"
echo 6 > assign_adapter
echo 4 > assign_domain
echo 0xab > assign_domain
echo 0x47 > assign_domain || echo "refused: 06.0047 is the host's"
for u in $uuid1 $uuid2; do
    echo "== $u"
    cat "$SYS/devices/vfio_ap/matrix/$u/matrix"
    echo "-- guest_matrix"
    cat "$SYS/devices/vfio_ap/matrix/$u/guest_matrix"
    echo "-- control_domains"
    cat "$SYS/devices/vfio_ap/matrix/$u/control_domains"
done
cat "$SYS/devices/vfio_ap/matrix/$uuid1/ap_config"
"""


def test_upstream_workflow(mount_factory: Callable[..., Mount]) -> None:
    mnt = mount_factory(VFIO_HOST)
    reserve = mnt.bash(RESERVE)
    assert reserve.returncode == 0, reserve.stderr
    assert reserve.stdout.splitlines() == [
        bitmap.to_sysfs(bitmap.ALL & ~bitmap.from_ids([5])),
        bitmap.to_sysfs(bitmap.ALL & ~bitmap.from_ids([4, 0xab])),
        "05.0004", "05.0047", "05.00ab", "05.00ff", "06.0004", "06.00ab", "bind", "unbind"]
    assert bound(mnt.root, "cex4queue") == ["06.0047", "06.00ff"]
    assert mnt.read("sys/devices/ap/card05/05.0004/status") == "unassigned\n"

    session = mnt.bash(CREATE_AND_ASSIGN)
    assert session.stderr.count("\n") == 1, session.stderr
    assert session.stderr.endswith("echo: write error: Cannot assign requested address\n")
    out = session.stdout.splitlines()
    assert out[:4] == ["VFIO AP Passthrough Device", "vfio-ap", "65536", "65534"]
    uuid1, uuid2 = out[5].removeprefix("== "), out[13].removeprefix("== ")
    assert UUID_RE.match(uuid1) and UUID_RE.match(uuid2)
    assert out[4] == "refused: 06.0047 is the host's"
    assert out[5:] == [
        f"== {uuid1}", "05.0004", "05.00ab", "-- guest_matrix", "05.0004", "05.00ab",
        "-- control_domains", "0004",
        f"== {uuid2}", "06.0004", "06.00ab", "-- guest_matrix", "06.0004", "06.00ab",
        "-- control_domains",
        f"{mask(5)},{mask(4, 0xab)},{mask(4)}"]
    assert mnt.read("sys/devices/ap/card06/06.00ab/status") == "assigned\n"
    assert sorted(p.name for p in (mnt.sys / "bus/mdev/devices").iterdir()) == sorted(
        [uuid1, uuid2])
    assert (mnt.sys / f"bus/mdev/devices/{uuid1}/mdev_type").resolve() == (
        mnt.sys / TYPE_DIR).resolve()
    assert (mnt.sys / "class/mdev_bus/matrix").resolve() == (mnt.sys / MATRIX).resolve()

    # Rewrite ap_config: adapter 5 with all its vfio_ap domains, no control domain.
    rewrite = mnt.bash(f'cd "$SYS/devices/vfio_ap/matrix/{uuid1}"\n'
                       f"echo {mask(5)},{mask(4, 0x47, 0xab, 0xff)} > ap_config\n"
                       "cat matrix guest_matrix control_domains ap_config")
    assert rewrite.returncode == 0, rewrite.stderr
    assert rewrite.stdout.splitlines() == ["05.0004", "05.0047", "05.00ab", "05.00ff"] * 2 + [
        f"{mask(5)},{mask(4, 0x47, 0xab, 0xff)},{ZERO}"]

    guest = mnt.bash(f'echo "vfio-ap,sysfsdev=/sys/bus/mdev/devices/{uuid2}" '
                     f'> "$MNT/apfs/guests/start"\n'
                     f'cat "$MNT/apfs/guests/{uuid2}/apqns" '
                     f'"$SYS/devices/ap/card06/06.0004/status"\n'
                     f'echo 1 > "$SYS/devices/vfio_ap/matrix/{uuid2}/remove"')
    assert guest.stdout.splitlines() == ["06.0004", "06.00ab", "in use"]
    assert guest.stderr.endswith("write error: Device or resource busy\n"), guest.stderr

    done = mnt.bash(f'echo "/sys/bus/mdev/devices/{uuid2}" > "$MNT/apfs/guests/stop"\n'
                    f"for u in {uuid1} {uuid2}; do\n"
                    f'    echo 1 > "$SYS/devices/vfio_ap/matrix/$u/remove"\n'
                    "done\n"
                    f'ls "$SYS/{TYPE_DIR}/devices"\n'
                    'cd "$SYS/bus/ap"\n'
                    "echo +5 > apmask\n"
                    "echo +4,+0xab > aqmask\n"
                    "ls drivers/vfio_ap")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["bind", "unbind"]
    assert bound(mnt.root, "cex4queue") == [
        "05.0004", "05.0047", "05.00ab", "05.00ff", "06.0004", "06.0047", "06.00ab", "06.00ff"]


def test_flavor_option_and_its_tree(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    root.mkdir()
    apfs("mount", "--flavor", "vfio_ap", str(root), check=True)
    mnt = Mount(root)
    try:
        assert not (mnt.sys / "devices/ap_matrix").exists()
        assert mnt.read(f"sys/{MATRIX}/features") == "guest_matrix hotplug ap_config\n"
        assert mnt.read("sys/bus/ap/apmask") == "0x" + "f" * 64 + "\n"
        assert (mnt.sys / "bus/matrix/devices/matrix").readlink() == Path(
            "../../../devices/vfio_ap/matrix")
        assert (mnt.sys / "devices/vfio_ap/matrix/driver").readlink() == Path(
            "../../../bus/matrix/drivers/vfio_ap")
        assert sorted(p.name for p in (mnt.sys / "bus/ap/drivers").iterdir()) == [
            "cex4card", "cex4queue", "vfio_ap"]
    finally:
        unmount(mnt)
    refused = apfs("mount", "--flavor", "upstream", str(root))
    assert refused.returncode == 2 and "'upstream' is not a flavor" in refused.stderr


def test_upstream_workflow_script(mount_factory: Callable[..., Mount]) -> None:
    """scripts/upstream-workflow.sh (what main-job.sh runs) ends with the rewritten matrix."""
    mnt = mount_factory(VFIO_HOST)
    script = REPO / "scripts" / "upstream-workflow.sh"
    result = mnt.bash(f'bash "{script}" "$SYS"')
    assert (result.returncode, result.stderr) == (0, ""), result
    out = result.stdout.splitlines()
    assert out[-7:-2] == ["+ cat guest_matrix", "05.0004", "05.0047", "05.00ab", "05.00ff"]
    uuid1 = out[-2].removeprefix("uuid1=")
    assert mnt.read(f"sys/{MATRIX}/{uuid1}/control_domains") == ""
