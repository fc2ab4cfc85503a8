"""One mount's world: the device models, the tree that shows them, and the log.

The mount root holds ``sys/`` (the sysfs tree, so ``SYSFS_ROOT=<mount>/sys`` works for
s390-tools) and ``apfs/`` (apfs's own files: ``log``, ``reset``, ``guests/``,
``zcrypt/request``, ``tpm/<name>/``, ``sev/``).

Beside the AP bus a host has the vTPMs of its ``[[tpm]]`` tables (:mod:`apfs.tpm.tree`),
booted at mount and closed by :meth:`Host.close`; with ``--state`` each keeps its permanent
state in a file of its own (:mod:`apfs.tpm.persist`).  With a ``[sev]`` table it has the SEV
firmware (:mod:`apfs.sev.tree`): its platform keys and ownership are part of the state
document (``"sev"``), its guests are not.

Two flavors of the same AP bus (:data:`FLAVORS`): the seed's ``ap_matrix`` (2017 RFC) and
upstream Linux's ``vfio_ap``; each has its bus rules, passthrough model and tree.

The models' state (what writes change) is exported and restored as one plain-data document,
``{"bus": ..., "matrix": ...}`` (``matrix`` being the flavor's passthrough model): that is
what ``--state`` stores and what ``apfs/reset`` puts back (the state taken right after the
models were built from the configuration).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apfs.ap import bus_tree, matrix_tree, vfio_tree
from apfs.ap.attrs import attribute_files
from apfs.ap.guests import GuestControl, guests_directory
from apfs.kernfs import DirKind, Snapshot, Subdir, Subdirs, directory, resolve, wo
from apfs.kmsg import KernelLog
from apfs.sev import tree as sev_tree
from apfs.state import StateError, StateStore, config_fingerprint
from apfs.tpm import persist as tpm_persist
from apfs.tpm import tree as tpm_tree
from apfs.tree import Tree
from vdev import state as check
from vdev.ap.bus import AP_MATRIX_FLAVOR, VFIO_AP_FLAVOR, ApBus, BusFlavor
from vdev.ap.host import DEFAULT_HOST_TOML, HostConfig, parse_toml
from vdev.ap.matrix import ApMatrix, GuestView, MatrixMdev
from vdev.ap.mdev import MdevType
from vdev.ap.vfio_ap import LiveGuest, VfioAp, VfioMdev
from vdev.ap.zcrypt import Zcrypt
from vdev.errors import DeviceError
from vdev.kparse import kstrtobool
from vdev.sev.config import SevConfig, parse_sev_table
from vdev.sev.node import SevNode
from vdev.tpm.config import TpmConfig, parse_tpm_tables
from vdev.tpm.errors import TpmError, TpmLibraryError
from vdev.tpm.libtpms import libtpms
from vdev.tpm.vtpm import VTpm, open_engine

log = logging.getLogger("apfs")

LOG_EXCERPT = 80
"""How much of a refused value a log line quotes."""


DEFAULT_CONFIG_TOML = DEFAULT_HOST_TOML + """
# One vTPM (libtpms TPM 2.0): sys/class/tpm/tpm0 and apfs/tpm/tpm0/.
[[tpm]]
name = "tpm0"

# The SEV firmware (API 0.24, SEV-ES): sys/module/kvm_amd and apfs/sev/.
[sev]
"""
"""The embedded default: the seed's AP host, one vTPM and SEV.  A file without ``[[tpm]]``
tables has no TPM; one without ``[sev]`` has no SEV."""


@dataclass(frozen=True)
class MountConfig:
    """What a host TOML describes: the AP host (``[host]``, ``[[card]]``, ``[bindings]``) and
    the vTPMs (``[[tpm]]``, :mod:`vdev.tpm.config`) and the SEV firmware (``[sev]``,
    :mod:`vdev.sev.config`)."""

    host: HostConfig
    tpms: tuple[TpmConfig, ...] = ()
    sev: SevConfig | None = None


def ap_only(config: MountConfig) -> MountConfig:
    """``config`` without its vTPMs and SEV: for models of the AP side alone (tests'
    replays)."""
    return MountConfig(config.host)


def load_config(path: str | None, flavor: str | None = None) -> MountConfig:
    """The host described by a TOML file, or the embedded default (the seed's host and
    ``tpm0``); ``flavor`` (``--flavor``) replaces the file's."""
    text = DEFAULT_CONFIG_TOML if path is None else Path(path).read_text()
    doc = parse_toml(text)
    tables = doc.pop("tpm", [])
    sev_table = doc.pop("sev", None)
    # Only a table naming a profile needs to know what the installed libtpms offers.
    wants_profile = isinstance(tables, list) and any(
        isinstance(table, dict) and "profile" in table for table in tables)
    tpms = parse_tpm_tables(
        tables, profiles_supported=wants_profile and libtpms().has("TPMLIB_SetProfile"))
    sev = None if sev_table is None else parse_sev_table(sev_table)
    return MountConfig(HostConfig.from_document(doc, flavor), tpms, sev)


def build_host(config_path: str | None, flavor: str | None = None,
               state_dir: Path | None = None) -> Host:
    """Parse the configuration and build the models, from the state saved in ``state_dir``
    (``--state``, locked for as long as this process lives) if given.  Every configuration
    mistake names the file; StateError names the state file and what is wrong with it."""
    where = config_path or "default configuration"
    try:
        config = load_config(config_path, flavor)
    except (ValueError, OSError, TpmError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    store = None
    if state_dir is not None:
        store = StateStore(state_dir, config_fingerprint(config.host))
        store.open()
    try:
        return Host(config, store)
    except BaseException as exc:
        if store is not None:
            store.close()
        if isinstance(exc, (ValueError, OSError, TpmError)):
            raise ValueError(f"{where}: {exc}") from None
        raise


class Host:
    """The models behind one mount and the :class:`Tree` over them; :meth:`close` ends
    its vTPMs (worker processes included)."""

    def __init__(self, config: MountConfig, store: StateStore | None = None) -> None:
        flavor = FLAVORS[config.host.flavor]
        self.kmsg = KernelLog()
        self.tpms = _boot_tpms(config.tpms, store)
        """Chip name (``tpm0``) → vTPM, in configuration order."""
        self.sev_config = config.sev
        self.sev = SevNode(config.sev) if config.sev is not None and config.sev.enabled else None
        """The SEV firmware, booted (INIT); None without ``[sev]`` or when it is disabled."""
        self.bus = ApBus(config.host, flavor.bus)
        self.matrix: MdevType = flavor.model(self.bus)
        self.zcrypt = Zcrypt(self.bus)
        self.root = flavor.root
        self.tree = Tree(self.root, self)
        self.guests = GuestControl(self.matrix, functools.partial(resolve, self.root, self),
                                   flavor.qemu_device, flavor.mdev_class)
        self._initial = self.export_state()
        self._store: StateStore | None = None
        self._committed: dict[str, Any] = self._initial
        if store is not None:
            try:
                self.use_store(store)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Power the vTPMs off, end their worker processes, release the state directory;
        idempotent."""
        for tpm in self.tpms.values():
            tpm.close()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def export_state(self) -> dict[str, Any]:
        """Everything writes can change, as plain JSON data (running guests excluded, SEV
        guests too); ``sev`` only on a host with the SEV firmware."""
        state = {"bus": self.bus.export_state(), "matrix": self.matrix.export_state()}
        if self.sev is not None:
            state["sev"] = self.sev.export_state()
        return state

    def restore_state(self, state: Any) -> None:
        """Put every model into ``state``; a bad state raises ValueError and changes nothing.

        The matrix and SEV parts are checked before the bus changes, so nothing is
        half-restored.  A state without ``sev`` (saved by a host without SEV) leaves the SEV
        platform as it is.
        """
        sev = check.mapping("state", state).get("sev")
        state = check.table("state", {k: v for k, v in state.items() if k != "sev"},
                            ("bus", "matrix"))
        if sev is not None and self.sev is not None:
            self.sev.check_state(sev)
        self.matrix.check_state(state["matrix"])
        self.bus.restore_state(state["bus"])
        self.matrix.restore_state(state["matrix"])
        if sev is not None and self.sev is not None:
            self.sev.restore_state(sev)

    def reset(self) -> None:
        """Back to the configured initial state: guests stopped, mdevs removed, bindings,
        flags and counters as at mount; each vTPM back to the state it booted with at this
        mount (:meth:`VTpm.rewind`); the SEV platform back to the keys it had at mount, INIT,
        with no guest (:meth:`SevNode.reboot`)."""
        self.matrix.stop_all_guests()
        self.restore_state(self._initial)
        if self.sev is not None:
            self.sev.reboot()
        for tpm in self.tpms.values():
            tpm.rewind()

    # -- --state ---------------------------------------------------------------------------

    def use_store(self, store: StateStore) -> None:
        """Take the state saved in ``store`` (an opened one), or save the initial state there
        if it has none; from then on :meth:`commit` saves every change.  StateError names the
        file and what is wrong with it; nothing is half-loaded."""
        saved = store.load()
        if saved is None:
            try:
                store.commit(self._committed)
            except OSError as exc:
                raise StateError(f"{store.path}: cannot save: {exc.strerror}") from None
        else:
            try:
                self.restore_state(saved)
            except ValueError as exc:
                raise StateError(f"{store.path}: invalid state: {exc}") from None
            self._committed = saved
            booted = self.export_state()
            if booted != saved:
                # Booting made something new (the SEV keys of a platform saved without any):
                # saved at once, so that what this mount shows survives it.
                try:
                    store.commit(booted)
                except OSError as exc:
                    raise StateError(f"{store.path}: cannot save: {exc.strerror}") from None
                self._committed = booted
            if self.sev is not None:
                # apfs/reset goes back to the keys this mount started with.
                self._initial = {**self._initial, "sev": booted["sev"]}
        self._store = store

    def commit(self, path: str) -> None:
        """After an accepted write to ``path``: make its effect durable before the reply.

        If the state cannot be saved (disk full, EIO), the models go back to the last
        committed state and the write fails with EIO; the mount stays up.
        """
        assert self._store is not None
        state = self.export_state()
        if state == self._committed:
            return  # e.g. a guest started, a probe of a bound device: nothing durable moved
        try:
            self._store.commit(state)
        except OSError as exc:
            self.restore_state(self._committed)
            # If the failure came after the rename, the new state is in place: put the old
            # one back, so that an undone write never reappears at the next mount.
            with contextlib.suppress(OSError):
                self._store.commit(self._committed)
            message = (f"{path}: cannot save the state to {self._store.path}: "
                       f"{exc.strerror or exc}; the write is undone")
            log.error("apfs: %s", message)
            raise DeviceError(errno.EIO, message) from None
        self._committed = state

    def store_reset(self, text: str) -> None:
        """``echo 1 > apfs/reset`` (kstrtobool: 1/y/on resets, 0/n/off does nothing)."""
        if kstrtobool(text, name="reset"):
            self.reset()

    def log_refusal(self, path: str, data: bytes | None, exc: DeviceError) -> None:
        """One log line for a refused write of ``data``, or a failed read (``None``)."""
        if data is None:
            log.warning("%s: read refused with %s (%s): %s", path, exc.errno_name,
                        os.strerror(exc.errno), exc.message)
            return
        value = data[:LOG_EXCERPT].decode("latin-1")
        more = "..." if len(data) > LOG_EXCERPT else ""
        log.warning("%s: write %r%s refused with %s (%s): %s", path, value, more,
                    exc.errno_name, os.strerror(exc.errno), exc.message)


def _boot_tpms(configs: tuple[TpmConfig, ...], store: StateStore | None) -> dict[str, VTpm]:
    """Start and boot each configured vTPM, from its saved state if ``store`` has one (and
    then saving every change there); if one fails, those started are closed."""
    tpms: dict[str, VTpm] = {}
    try:
        for index, config in enumerate(configs):
            tpm = VTpm(config, index, open_engine())
            tpms[tpm.device_name] = tpm
            saved = None
            if store is not None:
                saved = tpm_persist.saved_state(store, config.name)
                tpm.persist = tpm_persist.persister(store, config.name)
            try:
                tpm.boot(saved)
            except TpmLibraryError as exc:
                if saved is None or store is None:
                    raise
                raise StateError(f"{store.directory / tpm_persist.file_name(config.name)}: "
                                 f"libtpms refused the saved TPM state: {exc.message}") from None
    except BaseException:
        for tpm in tpms.values():
            tpm.close()
        raise
    return tpms


def _tpms(host: Host) -> dict[str, VTpm]:
    return host.tpms


def _modules(host: Host) -> dict[str, SevConfig]:
    return sev_tree.modules(host.sev_config)


def _sev(host: Host) -> dict[str, SevNode]:
    return {} if host.sev is None else {"sev": host.sev}


def _bus(host: Host) -> ApBus:
    return host.bus


def _matrix(host: Host) -> MdevType:
    return host.matrix


def _sysfs(matrix_bus: Subdir, mdev_bus: DirKind, mdev_class: DirKind,
           matrix_device: Subdir) -> DirKind:
    """``sys`` of a host whose AP passthrough flavor puts its matrix device, bus and mdev
    class where given; the AP bus, the vTPMs and SEV's module sit in the same places in
    both flavors."""
    return directory(
        "sys",
        Subdir("bus", directory("bus",
                                bus_tree.bus_dir(_bus),
                                matrix_bus,
                                Subdir("mdev", mdev_bus, _matrix),
                                Subdir("virtio", tpm_tree.BUS_VIRTIO, _tpms))),
        Subdir("class", directory("class",
                                  Subdir("mdev_bus", mdev_class, _matrix),
                                  Subdir("tpm", tpm_tree.CLASS_TPM, _tpms),
                                  Subdir("tpmrm", tpm_tree.CLASS_TPMRM, _tpms))),
        Subdir("devices", directory("devices",
                                    bus_tree.devices_dir(_bus),
                                    matrix_device,
                                    Subdir("platform", tpm_tree.PLATFORM, _tpms))),
        Subdir("module", directory("module", Subdirs(sev_tree.KVM_AMD, _modules,
                                                     stable=True))),
    )


SYSFS = _sysfs(Subdir("ap_matrix", matrix_tree.BUS, _matrix), matrix_tree.MDEV_BUS,
               matrix_tree.MDEV_BUS_CLASS, Subdir("ap_matrix", matrix_tree.DEVICES, _matrix))
VFIO_SYSFS = _sysfs(Subdir("matrix", vfio_tree.BUS, _matrix), vfio_tree.MDEV_BUS,
                    vfio_tree.MDEV_CLASS, Subdir("vfio_ap", vfio_tree.DEVICES, _matrix))


def _control(guest_class: type) -> DirKind:
    return directory(
        "apfs",
        Snapshot("log", lambda host: host.kmsg.content()),
        wo("reset", Host.store_reset),
        Subdir("guests", guests_directory(guest_class), lambda host: host.guests),
        Subdir("zcrypt", directory("zcrypt", *attribute_files(Zcrypt, Zcrypt.ATTRS)),
               lambda host: host.zcrypt),
        Subdir("tpm", tpm_tree.CONTROLS, _tpms),
        Subdirs(sev_tree.SEV, _sev, stable=True),
    )


ROOT = directory("", Subdir("sys", SYSFS), Subdir("dev", tpm_tree.DEV, _tpms),
                 Subdir("apfs", _control(GuestView)))
VFIO_ROOT = directory("", Subdir("sys", VFIO_SYSFS), Subdir("dev", tpm_tree.DEV, _tpms),
                      Subdir("apfs", _control(LiveGuest)))


@dataclass(frozen=True)
class Flavor:
    """What one flavor of the AP passthrough interface is made of."""

    bus: BusFlavor
    model: type[MdevType]
    """The passthrough model built on the bus (ApMatrix, VfioAp)."""
    root: DirKind
    qemu_device: str
    """The ``-device`` QEMU takes the mdev with."""
    mdev_class: type


FLAVORS = {
    "ap_matrix": Flavor(AP_MATRIX_FLAVOR, ApMatrix, ROOT, "vfio_ap_matrix", MatrixMdev),
    "vfio_ap": Flavor(VFIO_AP_FLAVOR, VfioAp, VFIO_ROOT, "vfio-ap", VfioMdev),
}
