"""The seed's ``ap_matrix`` flavor: ``/sys/devices/ap_matrix``, ``/sys/bus/ap_matrix``,
the ``/sys/bus/mdev`` links to its mediated devices (spec/ap.md §2) and the matrix device's
``/sys/class/mdev_bus`` entry.

The mdev core has registered every parent device in the ``mdev_bus`` class since Linux 4.10
(``class_compat_create_link`` in drivers/vfio/mdev/mdev_core.c): ``class/mdev_bus/matrix`` is
how mdevctl finds the parents and their types, so the seed's matrix device has one too.

Two spellings the seed uses that a kernel would not have resolve as hidden symlinks:
``mdev_supported_types/ap_matrix_passthrough`` (underscore, seed step 4) and
``devices/$uuid:`` (the seed writes ``cd ./devices/$uuid1:``).  They never appear in a listing.
"""

from __future__ import annotations

from typing import Any

from apfs.ap.attrs import attribute_files
from apfs.kernfs import Alias, Link, Links, Path, Subdir, Subdirs, directory
from vdev.ap.matrix import MDEV_TYPE, ApMatrix, MatrixMdev

MATRIX: Path = ("sys", "devices", "ap_matrix", "matrix")
TYPE: Path = (*MATRIX, "mdev_supported_types", MDEV_TYPE)
BUS_MDEV: Path = ("sys", "bus", "mdev")
SEED_TYPE_SPELLING = "ap_matrix_passthrough"


def mdev_path(mdev: MatrixMdev) -> Path:
    return (*MATRIX, mdev.uuid)


def _mdevs(matrix: ApMatrix) -> dict[str, MatrixMdev]:
    return matrix.mdevs


def _without_colon(_: Any, name: str) -> str | None:
    return name[:-1] if name.endswith(":") else None


def _seed_type_spelling(_: Any, name: str) -> str | None:
    return MDEV_TYPE if name == SEED_TYPE_SPELLING else None


MDEV = directory(
    "ap_matrix mdev",
    *attribute_files(MatrixMdev, MatrixMdev.ATTRS),
    Link("mdev_type", lambda _: TYPE),
    Link("driver", lambda _: (*BUS_MDEV, "drivers", "vfio_mdev")),
    Link("subsystem", lambda _: BUS_MDEV),
)

MDEV_TYPE_DIR = directory(
    "ap_matrix mdev type",
    *attribute_files(ApMatrix, ApMatrix.TYPE_ATTRS),
    Subdir("devices", directory("mdev type devices", Links(_mdevs, mdev_path),
                                Alias(_without_colon))),
)

MATRIX_DEVICE = directory(
    "ap_matrix matrix",
    Subdir("mdev_supported_types", directory("mdev_supported_types",
                                             Subdir(MDEV_TYPE, MDEV_TYPE_DIR),
                                             Alias(_seed_type_spelling))),
    Subdirs(MDEV, _mdevs),
    Link("subsystem", lambda _: ("sys", "bus", "ap_matrix")),
)

DEVICES = directory("ap_matrix devices root", Subdir("matrix", MATRIX_DEVICE))

BUS = directory(
    "ap_matrix bus",
    Subdir("devices", directory("ap_matrix bus devices", Link("matrix", lambda _: MATRIX))),
    Subdir("drivers", directory("ap_matrix bus drivers")),
)

MDEV_BUS_CLASS = directory("mdev_bus class", Link("matrix", lambda _: MATRIX))

MDEV_BUS = directory(
    "mdev bus",
    Subdir("devices", directory("mdev bus devices", Links(_mdevs, mdev_path))),
    Subdir("drivers", directory("mdev bus drivers", Subdir(
        "vfio_mdev", directory("vfio_mdev driver", Links(_mdevs, mdev_path))))),
)
