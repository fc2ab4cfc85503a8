"""Acceptance 6: symlinks are kernfs's relative links and resolve inside the mount.

mdevctl canonicalizes ``sys/bus/mdev/devices/<uuid>``, lszcrypt takes the basename of
``readlink <dev>/driver``: both only work under a mount point if every link is relative.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Mount
from helpers import MATRIX, SEED_WORKFLOW, TYPE_DIR, seed_vars, symlinks

DRIVERS = "sys/bus/ap/drivers"


@pytest.fixture
def seeded(mount: Mount) -> tuple[Mount, str, str]:
    """After the seed's steps 1-4: links of both drivers, two mdevs."""
    done = mount.bash(f'bash "{SEED_WORKFLOW}" "$SYS"')
    assert done.returncode == 0, done.stderr
    uuids = seed_vars(done.stdout)
    return mount, uuids["uuid1"], uuids["uuid2"]


def assert_relative_and_inside(root: Path, links: dict[str, str]) -> None:
    real_root = os.path.realpath(root)
    for relpath, text in links.items():
        assert not text.startswith("/"), (relpath, text)
        resolved = os.path.realpath(root / relpath)
        assert resolved.startswith(real_root + os.sep), (relpath, text, resolved)
        assert os.path.exists(resolved), (relpath, text, resolved)


def test_every_link_is_relative_and_resolves_inside_the_mount(
        seeded: tuple[Mount, str, str]) -> None:
    mount, uuid1, uuid2 = seeded
    links = symlinks(mount.root)
    assert_relative_and_inside(mount.root, links)
    # The walk saw every family of links: bus devices, drivers, device links, mdevs.
    for expected in ("sys/bus/ap/devices/card05", "sys/bus/ap/devices/06.00ff",
                     f"{DRIVERS}/cex4card/card06", f"{DRIVERS}/cex4queue/06.0047",
                     f"{DRIVERS}/vfio_ap_matrix/05.0004",
                     "sys/devices/ap/card05/05.0004/driver", "sys/devices/ap/card05/subsystem",
                     f"sys/bus/mdev/devices/{uuid1}", f"sys/bus/mdev/drivers/vfio_mdev/{uuid2}",
                     f"{TYPE_DIR}/devices/{uuid1}", f"{MATRIX}/{uuid2}/mdev_type",
                     "sys/bus/ap_matrix/devices/matrix"):
        assert expected in links, expected


def test_link_texts_are_the_kernels(seeded: tuple[Mount, str, str]) -> None:
    mount, uuid1, _ = seeded
    result = mount.bash(f"""cd "$SYS"
        readlink bus/ap/devices/card05
        readlink bus/ap/devices/05.0004
        readlink bus/ap/drivers/cex4queue/06.0047
        readlink bus/ap/drivers/vfio_ap_matrix/05.0004
        readlink devices/ap/card05/driver
        readlink devices/ap/card05/subsystem
        readlink devices/ap/card05/05.0004/driver
        readlink devices/ap/card06/06.0047/driver
        readlink bus/mdev/devices/{uuid1}
        readlink bus/mdev/drivers/vfio_mdev/{uuid1}
        readlink devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough/devices/{uuid1}
        readlink devices/ap_matrix/matrix/{uuid1}/mdev_type
        readlink bus/ap_matrix/devices/matrix""")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        "../../../devices/ap/card05",
        "../../../devices/ap/card05/05.0004",
        "../../../../devices/ap/card06/06.0047",
        "../../../../devices/ap/card05/05.0004",
        "../../../bus/ap/drivers/cex4card",
        "../../../bus/ap",
        "../../../../bus/ap/drivers/vfio_ap_matrix",
        "../../../../bus/ap/drivers/cex4queue",
        f"../../../devices/ap_matrix/matrix/{uuid1}",
        f"../../../../devices/ap_matrix/matrix/{uuid1}",
        f"../../../{uuid1}",
        "../mdev_supported_types/ap_matrix-passthrough",
        "../../../devices/ap_matrix/matrix",
    ]


def test_default_host_links(mount: Mount) -> None:
    """The spec's examples, on the untouched default host."""
    assert os.readlink(mount.sys / "bus/ap/devices/card05") == "../../../devices/ap/card05"
    assert os.readlink(mount.sys / "bus/ap/drivers/cex4queue/05.0004") == \
        "../../../../devices/ap/card05/05.0004"
    assert os.readlink(mount.sys / "devices/ap/card05/driver") == \
        "../../../bus/ap/drivers/cex4card"
    assert_relative_and_inside(mount.root, symlinks(mount.root))


def test_driver_link_follows_unbind_and_bind(mount: Mount) -> None:
    """lszcrypt's DRIVER column: the basename of `readlink <queue>/driver`."""
    driver = mount.sys / "devices/ap/card05/05.0004/driver"
    script = """cd "$SYS/devices/ap/card05/05.0004"
        basename "$(readlink driver)"
        echo 05.0004 > ../../../../bus/ap/drivers/cex4queue/unbind
        readlink driver || echo "-no-driver-"
        echo 05.0004 > ../../../../bus/ap/drivers/vfio_ap_matrix/bind
        basename "$(readlink driver)"
        ls ../../../../bus/ap/drivers/vfio_ap_matrix"""
    result = mount.bash(script)
    assert result.stdout.splitlines() == ["cex4queue", "-no-driver-", "vfio_ap_matrix",
                                          "05.0004", "bind", "unbind"], result
    assert os.readlink(driver) == "../../../../bus/ap/drivers/vfio_ap_matrix"
    assert os.path.realpath(driver) == os.path.realpath(mount.sys / "bus/ap/drivers/vfio_ap_matrix")
    assert not (mount.sys / "bus/ap/drivers/cex4queue/05.0004").exists()
    assert_relative_and_inside(mount.root, symlinks(mount.root))


def test_mdev_links_appear_and_vanish_with_the_device(mount: Mount) -> None:
    uuid = "3f2e1d0c-b0a9-4877-9665-5a4b3c2d1e0f"
    created = mount.bash(f'echo {uuid} > "$SYS/{TYPE_DIR.removeprefix("sys/")}/create"')
    assert created.returncode == 0, created
    links = {p: t for p, t in symlinks(mount.root).items() if uuid in p}
    assert links == {
        f"sys/bus/mdev/devices/{uuid}": f"../../../devices/ap_matrix/matrix/{uuid}",
        f"sys/bus/mdev/drivers/vfio_mdev/{uuid}": f"../../../../devices/ap_matrix/matrix/{uuid}",
        f"{TYPE_DIR}/devices/{uuid}": f"../../../{uuid}",
        f"{MATRIX}/{uuid}/mdev_type": "../mdev_supported_types/ap_matrix-passthrough",
        f"{MATRIX}/{uuid}/driver": "../../../../bus/mdev/drivers/vfio_mdev",
        f"{MATRIX}/{uuid}/subsystem": "../../../../bus/mdev",
    }
    assert_relative_and_inside(mount.root, symlinks(mount.root))
    # mdevctl's canonicalization: the bus link and the type link land on the real places.
    assert os.path.realpath(mount.sys / "bus/mdev/devices" / uuid) == \
        os.path.realpath(mount.root / MATRIX / uuid)
    assert os.path.realpath(mount.root / MATRIX / uuid / "mdev_type") == \
        os.path.realpath(mount.root / TYPE_DIR)

    removed = mount.bash(f'echo 1 > "$SYS/bus/mdev/devices/{uuid}/remove"')
    assert removed.returncode == 0, removed
    assert [p for p in symlinks(mount.root) if uuid in p] == []
    assert not os.path.lexists(mount.sys / "bus/mdev/devices" / uuid)


def test_seed_spellings_resolve_but_are_not_listed(seeded: tuple[Mount, str, str]) -> None:
    """`ap_matrix_passthrough` and `$uuid:` (seed step 4) are hidden aliases."""
    mount, uuid1, _ = seeded
    types = mount.root / MATRIX / "mdev_supported_types"
    assert os.listdir(types) == ["ap_matrix-passthrough"]
    assert os.readlink(types / "ap_matrix_passthrough") == "ap_matrix-passthrough"
    devices = types / "ap_matrix-passthrough/devices"
    assert f"{uuid1}:" not in os.listdir(devices)
    assert os.path.realpath(devices / f"{uuid1}:") == os.path.realpath(mount.root / MATRIX / uuid1)
