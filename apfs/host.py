"""One mount's world: the device models, the tree that shows them, and the log.

The mount root holds ``sys/`` (the sysfs tree, so ``SYSFS_ROOT=<mount>/sys`` works for
s390-tools) and ``apfs/`` (apfs's own files: ``log``, ``guests/``, ``zcrypt/request``).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from apfs.ap import bus_tree, matrix_tree
from apfs.ap.attrs import attribute_files
from apfs.ap.guests import GUESTS, GuestControl
from apfs.kernfs import Snapshot, Subdir, directory, resolve
from apfs.kmsg import KernelLog
from apfs.tree import Tree
from vdev.ap.bus import ApBus
from vdev.ap.host import DEFAULT_HOST_TOML, HostConfig
from vdev.ap.matrix import ApMatrix
from vdev.ap.zcrypt import Zcrypt
from vdev.errors import DeviceError

log = logging.getLogger("apfs")

LOG_EXCERPT = 80
"""How much of a refused value a log line quotes."""


def load_config(path: str | None) -> HostConfig:
    """The host described by a TOML file, or the embedded default (the seed's host)."""
    if path is None:
        return HostConfig.from_toml(DEFAULT_HOST_TOML)
    return HostConfig.from_toml(Path(path).read_text())


def build_host(config_path: str | None) -> Host:
    """Parse the configuration and build the models; every mistake names the file."""
    try:
        return Host(load_config(config_path))
    except (ValueError, OSError) as exc:
        raise ValueError(f"{config_path or 'default configuration'}: {exc}") from None


class Host:
    """The models behind one mount and the :class:`Tree` over them."""

    def __init__(self, config: HostConfig) -> None:
        self.kmsg = KernelLog()
        self.bus = ApBus(config)
        self.matrix = ApMatrix(self.bus)
        self.zcrypt = Zcrypt(self.bus)
        self.tree = Tree(ROOT, self)
        self.guests = GuestControl(self.matrix, functools.partial(resolve, ROOT, self))

    def log_refusal(self, path: str, data: bytes, exc: DeviceError) -> None:
        value = data[:LOG_EXCERPT].decode("latin-1")
        more = "..." if len(data) > LOG_EXCERPT else ""
        log.warning("%s: write %r%s refused with %s (%s): %s", path, value, more,
                    exc.errno_name, os.strerror(exc.errno), exc.message)


def _bus(host: Host) -> ApBus:
    return host.bus


def _matrix(host: Host) -> ApMatrix:
    return host.matrix


SYSFS = directory(
    "sys",
    Subdir("bus", directory("bus",
                            bus_tree.bus_dir(_bus),
                            Subdir("ap_matrix", matrix_tree.BUS, _matrix),
                            Subdir("mdev", matrix_tree.MDEV_BUS, _matrix))),
    Subdir("class", directory("class",
                              Subdir("mdev_bus", matrix_tree.MDEV_BUS_CLASS, _matrix))),
    Subdir("devices", directory("devices",
                                bus_tree.devices_dir(_bus),
                                Subdir("ap_matrix", matrix_tree.DEVICES, _matrix))),
)

CONTROL = directory(
    "apfs",
    Snapshot("log", lambda host: host.kmsg.content()),
    Subdir("guests", GUESTS, lambda host: host.guests),
    Subdir("zcrypt", directory("zcrypt", *attribute_files(Zcrypt, Zcrypt.ATTRS)),
           lambda host: host.zcrypt),
)

ROOT = directory("", Subdir("sys", SYSFS), Subdir("apfs", CONTROL))
