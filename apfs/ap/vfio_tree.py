"""The upstream ``vfio_ap`` flavor: ``/sys/devices/vfio_ap``, ``/sys/bus/matrix``, the
``/sys/bus/mdev`` links and ``/sys/class/mdev_bus/matrix`` (spec/ap.md §3).

Where drivers/s390/crypto/vfio_ap_drv.c and the mdev core put them: the matrix device is a
child of the ``vfio_ap`` root device on the ``matrix`` bus, bound to that bus's ``vfio_ap``
driver; the mdev core registers it as a parent under ``class/mdev_bus`` and each mdev on the
``mdev`` bus, bound to ``vfio_ap_mdev``.
"""

from __future__ import annotations

from apfs.ap.attrs import attribute_files
from apfs.kernfs import Link, Links, Path, Subdir, Subdirs, directory
from vdev.ap.vfio_ap import MDEV_TYPE, VfioAp, VfioMdev

MATRIX: Path = ("sys", "devices", "vfio_ap", "matrix")
TYPE: Path = (*MATRIX, "mdev_supported_types", MDEV_TYPE)
BUS_MATRIX: Path = ("sys", "bus", "matrix")
BUS_MDEV: Path = ("sys", "bus", "mdev")
MDEV_DRIVER = "vfio_ap_mdev"


def mdev_path(mdev: VfioMdev) -> Path:
    return (*MATRIX, mdev.uuid)


def _mdevs(vfio: VfioAp) -> dict[str, VfioMdev]:
    return vfio.mdevs


MDEV = directory(
    "vfio_ap mdev",
    *attribute_files(VfioMdev, VfioMdev.ATTRS),
    Link("mdev_type", lambda _: TYPE),
    Link("driver", lambda _: (*BUS_MDEV, "drivers", MDEV_DRIVER)),
    Link("subsystem", lambda _: BUS_MDEV),
)

MDEV_TYPE_DIR = directory(
    "vfio_ap mdev type",
    *attribute_files(VfioAp, VfioAp.TYPE_ATTRS),
    Subdir("devices", directory("vfio_ap mdev type devices", Links(_mdevs, mdev_path))),
)

MATRIX_DEVICE = directory(
    "vfio_ap matrix",
    *attribute_files(VfioAp, VfioAp.ATTRS),
    Subdir("mdev_supported_types", directory("vfio_ap mdev_supported_types",
                                             Subdir(MDEV_TYPE, MDEV_TYPE_DIR))),
    Subdirs(MDEV, _mdevs),
    Link("driver", lambda _: (*BUS_MATRIX, "drivers", "vfio_ap")),
    Link("subsystem", lambda _: BUS_MATRIX),
)

DEVICES = directory("vfio_ap root device", Subdir("matrix", MATRIX_DEVICE))

BUS = directory(
    "matrix bus",
    Subdir("devices", directory("matrix bus devices", Link("matrix", lambda _: MATRIX))),
    Subdir("drivers", directory("matrix bus drivers", Subdir(
        "vfio_ap", directory("matrix bus vfio_ap driver", Link("matrix", lambda _: MATRIX))))),
)

MDEV_BUS = directory(
    "vfio_ap mdev bus",
    Subdir("devices", directory("vfio_ap mdev bus devices", Links(_mdevs, mdev_path))),
    Subdir("drivers", directory("vfio_ap mdev bus drivers", Subdir(
        MDEV_DRIVER, directory("vfio_ap_mdev driver", Links(_mdevs, mdev_path))))),
)

MDEV_CLASS = directory("vfio_ap mdev_bus class", Link("matrix", lambda _: MATRIX))
