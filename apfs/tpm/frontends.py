"""Which sockets a mount opens for its vTPM, and what it tells the user to connect with.

Owns: :class:`FrontEndOptions` (``--tpm-port``, ``--tpm-protocol``, ``--tpm-socket``),
:func:`start` (the servers of :mod:`apfs.tpm.sockets` for them) and the lines ``apfs mount``
prints: the ``TPM2TOOLS_TCTI`` string of a TCP port pair and QEMU's options for a socket.

The front ends serve the mount's first vTPM (``tpm0`` of the default host).  One port pair
speaks one protocol, since swtpm's control codes and the simulator's platform codes collide
on port + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from apfs.tpm import sockets
from vdev.tpm import mssim, swtpm
from vdev.tpm.vtpm import VTpm

PROTOCOLS = ("swtpm", "mssim")


@dataclass(frozen=True)
class FrontEndOptions:
    port: int | None = None
    protocol: str = "swtpm"
    socket: Path | None = None

    @property
    def wanted(self) -> bool:
        return self.port is not None or self.socket is not None


@dataclass
class FrontEnds:
    """The running servers of one mount and how to reach them."""

    servers: sockets.Servers
    lines: list[str]
    """What ``apfs mount`` prints: ``TPM2TOOLS_TCTI=...`` and QEMU's options."""

    def close(self) -> None:
        self.servers.close()


def tcti(protocol: str, port: int) -> str:
    return f"{protocol}:host={sockets.LOOPBACK},port={port}"


def qemu_options(path: Path, tpm_id: str = "tpm0") -> str:
    return (f"-chardev socket,id=chr{tpm_id},path={path} "
            f"-tpmdev emulator,id={tpm_id},chardev=chr{tpm_id} -device tpm-tis,tpmdev={tpm_id}")


def start(tpm: VTpm, options: FrontEndOptions) -> FrontEnds:
    """Listen and serve; :class:`~apfs.tpm.sockets.FrontEndError` if a socket cannot be
    opened (nothing is left open then)."""
    servers = sockets.Servers()
    lines = []
    name = tpm.device_name
    core = swtpm.Swtpm(tpm)
    try:
        if options.port is not None:
            first, second = servers.listen_tcp_pair(options.port)
            port = first.getsockname()[1]
            if options.protocol == "swtpm":
                servers.serve(first, f"{name} swtpm data", sockets.swtpm_data(core),
                              inline=True)
                servers.serve(second, f"{name} swtpm control",
                              sockets.swtpm_control(core, servers, takes_fds=False),
                              inline=True)
            else:
                sizes = mssim.CommandSizes()
                servers.serve(first, f"{name} mssim command",
                              sockets.mssim_port(mssim.CommandPort, tpm, sizes), inline=True)
                servers.serve(second, f"{name} mssim platform",
                              sockets.mssim_port(mssim.PlatformPort, tpm, sizes), inline=True)
            lines.append(f"TPM2TOOLS_TCTI={tcti(options.protocol, port)}")
        if options.socket is not None:
            listener = servers.listen_unix(options.socket)
            servers.serve(listener, f"{name} swtpm control socket",
                          sockets.swtpm_control(core, servers, takes_fds=True), inline=True)
            lines.append(f"QEMU: {qemu_options(options.socket)}")
    except BaseException:
        servers.close()
        raise
    return FrontEnds(servers, lines)
