"""A tiny ``echo``/``cat`` front end over the AP model, so tests read like the seed.

Test helper only: it maps the sysfs paths the seed uses to model objects; the real path
table is the FUSE layer's job.
"""

from __future__ import annotations

from vdev.ap import DEFAULT_HOST_TOML, VFIO_AP_FLAVOR, ApBus, ApMatrix, HostConfig, VfioAp
from vdev.ap.bus import Card, Queue

MATRIX = "/sys/devices/ap_matrix/matrix"
TYPE_DIR = f"{MATRIX}/mdev_supported_types/ap_matrix-passthrough"


def present(device: Card | Queue) -> set[str]:
    """The names of the files in a card's or queue's directory under its current binding."""
    return {a.name for a in type(device).ATTRS if a.present(device)}


class Shell:
    """``sh.echo("05.0004", "/sys/bus/ap/drivers/cex4queue/unbind")``, ``sh.cat(path)``."""

    def __init__(self, toml: str = DEFAULT_HOST_TOML, **matrix_options: int) -> None:
        self.bus = ApBus(HostConfig.from_toml(toml))
        self.matrix = ApMatrix(self.bus, **matrix_options)

    def echo(self, value: str, path: str) -> None:
        """``echo value > path`` (echo appends the newline)."""
        self.write(value + "\n", path)

    def write(self, text: str, path: str) -> None:
        directory, _, attr = path.rpartition("/")
        if directory.startswith("/sys/bus/ap/drivers/"):
            driver = directory.rsplit("/", 1)[1]
            getattr(self.bus, attr)(driver, text)
            return
        getattr(self._object(directory, attr), f"store_{attr}")(text)

    def cat(self, path: str) -> str:
        directory, _, attr = path.rpartition("/")
        return getattr(self._object(directory, attr), f"show_{attr}")()

    def _object(self, directory: str, attr: str) -> object:
        if directory == "/sys/bus/ap":
            return self.bus
        if directory == TYPE_DIR:
            return self.matrix
        if directory.startswith(f"{MATRIX}/"):
            return self.matrix.mdevs[directory.rsplit("/", 1)[1]]
        device = self.bus.devices.get(directory.rsplit("/", 1)[1])
        if device is None or attr not in present(device):
            raise FileNotFoundError(f"{directory}/{attr}")
        return device


VFIO_MATRIX = "/sys/devices/vfio_ap/matrix"
VFIO_TYPE_DIR = f"{VFIO_MATRIX}/mdev_supported_types/vfio_ap-passthrough"


class VfioShell(Shell):
    """The same front end over the upstream ``vfio_ap`` flavor."""

    def __init__(self, toml: str = DEFAULT_HOST_TOML, **vfio_options: int) -> None:
        self.bus = ApBus(HostConfig.from_toml(toml, "vfio_ap"), VFIO_AP_FLAVOR)
        self.vfio = VfioAp(self.bus, **vfio_options)

    def _object(self, directory: str, attr: str) -> object:
        if directory in (VFIO_TYPE_DIR, VFIO_MATRIX):
            return self.vfio
        if directory.startswith(f"{VFIO_MATRIX}/"):
            return self.vfio.mdevs[directory.rsplit("/", 1)[1]]
        return super()._object(directory, attr)
