"""What a server written in C needs to run a vTPM's commands itself, and when it may.

Owns: :class:`FastPath`.  Each layer that a command passes in Python (the engine, the vTPM
with its virtio device, a front end) adds what its own code would check, so the C side
(``apfs/tpm/_pump.c``) runs a command only when the Python path would have done nothing but
call ``TPMLIB_Process``, and hands everything else back to Python unchanged.

Must not know: sockets.  The locks are the native halves of
:class:`vdev.tpm.engine.FifoLock`; the gate and the stores are :class:`vdev.tpm._native.Cell`
values that the objects owning that state keep up to date, so C reads them without the GIL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vdev.tpm._native import Cell

Gate = tuple[tuple[Cell, int], ...]


Finish = Callable[[bytes, bytes], bytes]
"""``finish(request, response)``: the bytes to send for a command run on the fast path."""


@dataclass(frozen=True)
class FastPath:
    """``process``: the address of ``TPMLIB_Process``.  ``locks``: taken in this order,
    never waited for (a held lock sends the command the Python way, where it waits its
    turn).  ``gate``: ``(cell, value)`` entries that must all hold ``value`` while the locks
    are held.  ``stores``: a cell that moves when libtpms stored its permanent state.

    A front end says how its requests are framed (``framing``: ``"swtpm"`` raw data
    commands, ``"mssim"`` SEND_COMMAND, ``"swtpm-control"``: CMD_SET_LOCALITY, which sets
    the ``locality`` cell, or ``"mssim-platform"``: the signal codes in ``acks``, which
    have nothing to do while the gate holds) and may set ``limits``: cells holding the
    largest command and response sizes it lets pass without looking.  A command that moved
    the stores, whose response fails the device's checks or whose sizes exceed the limits
    is handed to ``finish`` with the request as read and the response, the first lock
    still held: ``finish`` does what Python would have done after the command (checks,
    save, the front end's bookkeeping), releases that lock and returns the bytes to send."""

    process: int
    locks: tuple[object, ...]
    gate: Gate
    stores: Cell
    finish: Finish | None = None
    framing: str = "swtpm"
    limits: tuple[Cell, Cell] | None = None
    locality: Cell | None = None
    acks: tuple[int, ...] = ()

    def behind(self, *, lock: object | None = None, gate: Gate = (),
               finish: Finish | None = None, **front_end: Any) -> FastPath:
        """This path as seen through one more layer: its lock taken first, its gate entries,
        its ``finish`` (which then owns that lock), a front end's ``framing``, ``limits``,
        ``locality``, ``acks``."""
        return replace(self, locks=self.locks if lock is None else (lock, *self.locks),
                       gate=self.gate + gate, finish=finish or self.finish, **front_end)
