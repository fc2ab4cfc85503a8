"""The s390 crypto Adjunct Processor (AP) model: the AP bus and its passthrough flavors.

Modules, each with one job: :mod:`~vdev.ap.cardtypes` (table of card types),
:mod:`~vdev.ap.host` (the host LPAR configuration and its TOML format),
:mod:`~vdev.ap.bitmap` (256-bit masks in s390 inv-bit order), :mod:`~vdev.ap.bus` (cards,
queues, drivers, bind/unbind, bus attributes, apmask/aqmask), :mod:`~vdev.ap.mdev` (the mdev
core both flavors share: create/remove, the type's files, the mdevs' durable state),
:mod:`~vdev.ap.zcrypt` (host-side crypto requests), :mod:`~vdev.ap.matrix` (the
2017 RFC's ``ap_matrix`` flavor: mediated matrix devices and guest views) and
:mod:`~vdev.ap.vfio_ap` (upstream Linux's ``vfio_ap`` flavor).  Nothing here does I/O.
"""

from vdev.ap.bus import (
    AP_MATRIX_FLAVOR,
    VFIO_AP_FLAVOR,
    ApBus,
    Attr,
    BusFlavor,
    Card,
    Driver,
    Presence,
    Queue,
)
from vdev.ap.host import DEFAULT_HOST_TOML, HostConfig
from vdev.ap.matrix import ApMatrix, GuestView, MatrixMdev
from vdev.ap.vfio_ap import VfioAp, VfioMdev

__all__ = [
    "AP_MATRIX_FLAVOR",
    "DEFAULT_HOST_TOML",
    "VFIO_AP_FLAVOR",
    "ApBus",
    "ApMatrix",
    "Attr",
    "BusFlavor",
    "Card",
    "Driver",
    "GuestView",
    "HostConfig",
    "MatrixMdev",
    "Presence",
    "Queue",
    "VfioAp",
    "VfioMdev",
]
