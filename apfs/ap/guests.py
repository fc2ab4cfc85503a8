"""``apfs/guests``: start and stop KVM guests on mediated matrix devices.

Not sysfs: on a real host QEMU opens the mdev (``-device vfio_ap_matrix,sysfsdev=PATH``,
seed steps 5 and 6; upstream ``-device vfio-ap,sysfsdev=PATH``) and the guest's CRYCB is
loaded from the mdev's matrix.  Here the same ``-device`` argument is written to
``guests/start``, and each running guest gets a directory showing what it sees: ``apqns``,
``crycb`` and ``lszcrypt``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from apfs.ap.attrs import attribute_files
from apfs.kernfs import DirKind, FileSpec, Path, PathError, Subdirs, directory, wo
from vdev.ap.bus import Attr
from vdev.ap.mdev import MdevType
from vdev.errors import DeviceError


class GuestControl:
    """Turns a QEMU ``-device`` argument (or a bare sysfsdev path) into a guest start/stop.

    ``matrix`` is the flavor's model (``start_guest``/``stop_guest``/``guests``), ``device``
    the QEMU device name it takes and ``mdev_class`` what a sysfsdev path must resolve to.
    """

    def __init__(self, matrix: MdevType, resolve: Callable[[Path], tuple[Any, FileSpec | None]],
                 device: str, mdev_class: type) -> None:
        self.matrix = matrix
        self._resolve = resolve
        self.device = device
        self._mdev_class = mdev_class

    def store_start(self, text: str) -> None:
        self.matrix.start_guest(self._mdev("start", text).uuid)

    def store_stop(self, text: str) -> None:
        self.matrix.stop_guest(self._mdev("stop", text).uuid)

    def _mdev(self, attr: str, text: str) -> Any:
        """Accepts ``DEVICE,sysfsdev=/sys/...`` or ``/sys/...``: any of the seed's four
        sysfsdev spellings, resolved through the tree like QEMU's realpath() would."""
        arg = text[:-1] if text.endswith("\n") else text
        path = arg
        if "," in arg or "=" in arg:
            device, _, option = arg.partition(",")
            key, _, path = option.partition("=")
            if device != self.device or key != "sysfsdev":
                raise DeviceError(errno.EINVAL, f"guests/{attr}: {arg!r} is not "
                                  f"'{self.device},sysfsdev=/sys/...'")
        if not path.startswith("/sys/"):
            raise DeviceError(errno.EINVAL, f"guests/{attr}: sysfsdev {path!r} must be an "
                              f"absolute /sys path")
        try:
            obj, spec = self._resolve(tuple(path.split("/")[1:]))
        except PathError as exc:
            raise DeviceError(exc.errno, f"guests/{attr}: sysfsdev {path!r} does not "
                              f"resolve: {os.strerror(exc.errno)} at {exc.where!r}") from None
        mdev = obj if spec is None else None
        if not isinstance(mdev, self._mdev_class):
            raise DeviceError(errno.ENODEV, f"guests/{attr}: sysfsdev {path!r} is not a "
                              f"mediated matrix device")
        return mdev


def guests_directory(guest_class: type) -> DirKind:
    """``apfs/guests`` over a flavor whose running guests are ``guest_class`` objects."""
    guest = directory(
        "guest",
        *attribute_files(guest_class, (Attr("apqns", 0o444), Attr("crycb", 0o444),
                                       Attr("lszcrypt", 0o444))),
    )
    return directory(
        "guests",
        wo("start", GuestControl.store_start),
        wo("stop", GuestControl.store_stop),
        Subdirs(guest, lambda control: control.matrix.guests),
    )
