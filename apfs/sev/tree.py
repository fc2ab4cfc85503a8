"""The SEV firmware in the mount: where its files sit, their names and modes.

A host with a ``[sev]`` table (:mod:`vdev.sev.config`) shows the KVM module's parameters as a
kernel with ``kvm_amd`` loaded does (``Y``/``N``, mode 0444)::

    sys/module/kvm_amd/parameters/   sev, sev_es, sev_snp

and, when ``enabled``, apfs's SEV directory (FUSE cannot carry the ``SEV_ISSUE_CMD`` and
``KVM_MEMORY_ENCRYPT_OP`` ioctls, so each command is a file)::

    apfs/sev/platform/   status, init, shutdown, platform_reset, pek_gen, pdh_gen,
                         pdh_cert, cert_chain, pek_csr, pek_cert_import, get_id
    apfs/sev/launch/     create
    apfs/sev/launch/<handle>/
                         memory, update, update_vmsa, measure, secret, finish, status,
                         debug, ciphertext, remove

Every file's content is a method of :class:`vdev.sev.node.SevNode` or
:class:`vdev.sev.node.Launch`; this module knows only names, modes and places.  Every file
is queued on the host's :class:`~vdev.sev.node.SevNode`: its commands run one at a time, in
arrival order, off the request loop while one runs (a 64 MiB LAUNCH_UPDATE_DATA).
"""

from __future__ import annotations

from apfs.kernfs import Binary, Region, Subdir, Subdirs, directory, ro, rw, wo
from vdev.sev.config import SevConfig
from vdev.sev.node import Launch, SevNode


def _yes(value: bool) -> str:
    """A ``bool`` module parameter as ``param_get_bool`` prints it."""
    return "Y\n" if value else "N\n"


KVM_AMD = directory(
    "kvm_amd",
    Subdir("parameters", directory(
        "parameters",
        ro("sev", lambda config: _yes(config.enabled)),
        ro("sev_es", lambda config: _yes(config.enabled and config.es)),
        # SEV-SNP is not emulated.
        ro("sev_snp", lambda config: _yes(False)),
    )),
)
"""``sys/module/kvm_amd``; takes the host's :class:`SevConfig`."""


def modules(config: SevConfig | None) -> dict[str, SevConfig]:
    """The ``sys/module`` entries of a host: ``kvm_amd`` when it has a ``[sev]`` table."""
    return {} if config is None else {"kvm_amd": config}


def _node(obj: SevNode | Launch) -> SevNode:
    return obj if isinstance(obj, SevNode) else obj.node


PLATFORM = directory(
    "platform",
    ro("status", SevNode.show_status, queue=_node),
    wo("init", SevNode.store_init, queue=_node),
    wo("shutdown", SevNode.store_shutdown, queue=_node),
    wo("platform_reset", SevNode.store_platform_reset, queue=_node),
    wo("pek_gen", SevNode.store_pek_gen, queue=_node),
    wo("pdh_gen", SevNode.store_pdh_gen, queue=_node),
    # Reading these INITs an UNINIT platform first (the driver's auto-INIT), which may make
    # keys: with --state they are saved before the read returns.
    Binary("pdh_cert", 0o444, read=SevNode.read_pdh_cert, queue=_node, read_saves=True),
    Binary("cert_chain", 0o444, read=SevNode.read_cert_chain, queue=_node, read_saves=True),
    Binary("pek_csr", 0o400, read=SevNode.read_pek_csr, queue=_node, read_saves=True),
    Binary("pek_cert_import", 0o200, write=SevNode.write_pek_cert_import, queue=_node),
    Binary("get_id", 0o444, read=SevNode.read_get_id, queue=_node),
)


def _size(launch: Launch) -> int:
    return launch.size


LAUNCH = directory(
    "launch",
    Region("memory", 0o200, _size, write=Launch.write_memory, queue=_node),
    wo("update", Launch.store_update, queue=_node),
    wo("update_vmsa", Launch.store_update_vmsa, queue=_node),
    ro("measure", Launch.show_measure, queue=_node),
    Binary("secret", 0o200, write=Launch.write_secret, queue=_node),
    wo("finish", Launch.store_finish, queue=_node),
    ro("status", Launch.show_status, queue=_node),
    Region("debug", 0o400, _size, read=Launch.read_debug, queue=_node),
    Region("ciphertext", 0o400, _size, read=Launch.read_ciphertext, queue=_node),
    wo("remove", Launch.store_remove, queue=_node),
)


def _launches(node: SevNode) -> dict[str, Launch]:
    return node.launches


SEV = directory(
    "sev",
    Subdir("platform", PLATFORM),
    Subdir("launch", directory("launch", rw("create", SevNode.show_create,
                                            SevNode.store_create, queue=_node),
                               Subdirs(LAUNCH, _launches))),
)
"""``apfs/sev``; takes the host's :class:`SevNode`."""
