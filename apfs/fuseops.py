"""The pyfuse3 operations: kernel requests in, :class:`apfs.tree.Tree` look-ups out.

The layer is generic: it knows directories, files and symlinks, never AP cards or TPMs.
sysfs rules it enforces (fs/kernfs, see spec/sysfs-semantics.md): text files are 4096 bytes,
open checks the file's own mode even for root, each ``write()`` is one ``store()``, the
namespace cannot be changed (EACCES for create, EPERM for the rest, never ENOSYS), direct_io
so every read and write reaches the daemon.  FLUSH and GETXATTR are the two requests answered
ENOSYS on purpose: the kernel then stops sending them (see the handlers).

Handlers are plain functions: sysfs attributes answer synchronously, so nothing on their
path awaits.  Files that talk to a TPM are the exception (their spec has a ``queue``): a
write to /dev/tpm0, the flush at close of /dev/tpmrm0, a PCR read while the TPM is busy may
take seconds, so those handlers return a coroutine that runs the call in a worker thread
(:meth:`SysfsOperations._offload`: one at a time per TPM, in arrival order), after handing
the request loop over to another pyfuse3 worker (:mod:`apfs.fuseloop`).  A device write the
device calls quick (a TPM command of :data:`vdev.tpm.commands.QUICK_COMMANDS`) runs inline
while its TPM is idle and nothing waits in its queue: it overtakes nothing, and takes less
than the hand-over to a thread would.  Each handler is
wrapped once by :func:`_guarded` into the coroutine pyfuse3 awaits, which awaits such a
returned coroutine too: a device refusal becomes its errno, a name that does not resolve its
ENOENT/ENOTDIR, and anything else (an OSError included) becomes EIO plus a traceback in the
log — pyfuse3 only catches ``FUSEError``, and anything else would take the whole mount down.

After an accepted write the kernel is told what went stale (:class:`KernelCache`): names that
vanished, and directories whose link count moved; and every open file whose node vanished is
marked dead for good, as kernfs deactivates the node an open file belongs to.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any, Protocol, TypeVar

import pyfuse3
import trio

from apfs.background import lower_this_thread
from apfs.kernfs import Device, DeviceHandle, Handle, PathError, Worker
from apfs.tree import FUSE_ROOT_INO, Invalidations, Lookup, Tree
from vdev.errors import DeviceError, WouldWait
from vdev.inline import NO_WAIT

log = logging.getLogger("apfs")

STABLE_TIMEOUT = 300.0
"""Cache lifetime of entries that live exactly as long as their directory.

Their directory's own entry is revalidated when it can vanish (timeout 0), which takes the
cached children with it, so a long timeout here never shows a stale file.  Entries that come
and go on their own (driver links, ``online`` under a host driver, mediated devices) get 0.
"""

ROOT_TIMEOUT = 1.0
"""The mount root's attributes: short, so that a mount whose daemon died shows ENOTCONN on
``stat`` within a second instead of serving cached attributes."""

_T = TypeVar("_T")


def _kernel_errno(code: int) -> int:
    """Kernel-internal errnos (>= 512) cannot cross the FUSE reply path."""
    if code < 512:
        return code
    return {517: errno.EAGAIN, 524: errno.EOPNOTSUPP}.get(code, errno.EIO)


def _guarded(handler: Callable[..., _T]) -> Callable[..., Awaitable[_T]]:
    """The one coroutine pyfuse3 awaits per request: runs a handler, maps every failure."""

    @functools.wraps(handler)
    async def wrapper(*args: Any) -> _T:
        try:
            result = handler(*args)
            if type(result) is CoroutineType:  # a device call run off the loop
                result = await result
            return result
        except pyfuse3.FUSEError:
            raise
        except (DeviceError, PathError) as exc:
            raise pyfuse3.FUSEError(_kernel_errno(exc.errno)) from None
        except Exception:
            log.exception("internal error in %s%r; answered EIO", handler.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _logged(handler: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """``--debug``: one log line per request, with its arguments and its answer.  Chosen at
    start-up, so a mount without --debug pays nothing for it."""

    @functools.wraps(handler)
    async def wrapper(*args: Any) -> _T:
        request = f"{handler.__name__}({', '.join(_describe(a) for a in args if a is not None)})"
        try:
            result = await handler(*args)
        except pyfuse3.FUSEError as exc:
            log.debug("request %s -> %s", request, errno.errorcode.get(exc.errno, exc.errno))
            raise
        log.debug("request %s -> %s", request, _describe(result))
        return result

    return wrapper


def _describe(value: Any) -> str:
    """A request argument or answer as a short, readable word for the --debug trace."""
    if isinstance(value, pyfuse3.EntryAttributes):
        return f"ino {value.st_ino} mode {value.st_mode:o} size {value.st_size}"
    if isinstance(value, pyfuse3.FileInfo):
        return f"fh {value.fh}"
    if isinstance(value, pyfuse3.RequestContext):
        return f"pid {value.pid}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class KernelCache(Protocol):
    """Where the kernel is told to drop what it cached (pyfuse3's notify calls)."""

    def forget_entry(self, parent_ino: int, name: str) -> None: ...

    def forget_attributes(self, ino: int) -> None: ...


class Pyfuse3Cache:
    """The kernel of a live pyfuse3 session.

    Entries go through ``invalidate_entry_async``: the synchronous call can deadlock inside a
    handler, since the kernel may wait for the very request being served.  Attribute-only
    inode invalidation takes no lock a pending request could hold (no writeback cache here),
    so it is sent directly.
    """

    def forget_entry(self, parent_ino: int, name: str) -> None:
        pyfuse3.invalidate_entry_async(parent_ino, os.fsencode(name), ignore_enoent=True)

    def forget_attributes(self, ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as exc:  # ENOENT: the kernel holds no inode for it, nothing to drop
            if exc.errno != errno.ENOENT:
                raise


class OpenFile:
    """An open file: what it was opened on, its per-open state, and whether its node died.
    ``queue`` is set when its calls may block: what they are serialised on (its TPM);
    ``device`` for a device-like file (its writes run commands, its release may block)."""

    __slots__ = ("dead", "device", "found", "handle", "queue")

    def __init__(self, found: Lookup, handle: Handle, queue: Worker | None = None,
                 device: bool = False) -> None:
        self.found = found
        self.handle = handle
        self.queue = queue
        self.device = device
        self.dead = False


class SysfsOperations(pyfuse3.Operations):
    """pyfuse3 handlers over a :class:`Tree`."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: Tree, on_refusal: Callable[[str, bytes | None, DeviceError], None],
                 kernel: KernelCache | None = None,
                 on_write: Callable[[str], None] | None = None):
        super().__init__()
        self.tree = tree
        self._on_refusal = on_refusal
        self._kernel = kernel or Pyfuse3Cache()
        self._on_write = on_write
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[tuple[str, Lookup]]] = {}
        self._fh = itertools.count(1)
        self._queues: dict[Worker, trio.CapacityLimiter] = {}
        self.hand_over: Callable[[], None] = _nothing
        """Called before a handler blocks (set by the daemon: :mod:`apfs.fuseloop`)."""
        self._mount_ns = time.time_ns()
        debug = log.isEnabledFor(logging.DEBUG)
        for name in _HANDLERS:
            handler = _guarded(getattr(self, name))
            setattr(self, name, _logged(handler) if debug else handler)

    # -- attributes ----------------------------------------------------------------------

    def _attributes(self, found: Lookup) -> pyfuse3.EntryAttributes:
        node, spec = found.node, found.spec
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = found.ino
        if spec is not None:
            entry.st_mode = stat.S_IFREG | spec.mode
            entry.st_size = spec.size(node.obj)
            entry.st_nlink = 1
        elif node.target is not None:
            entry.st_mode = stat.S_IFLNK | 0o777  # kernfs symlinks have size 0, like `ls -l`
            entry.st_nlink = 1
        else:
            assert node.kind is not None
            entry.st_mode = stat.S_IFDIR | 0o755
            # A link count that moves is invalidated by write() (Tree.changed), so it may be
            # cached like the rest.
            entry.st_nlink = 2 + node.kind.subdir_count(node.obj)
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = self._mount_ns
        entry.st_blksize = 4096
        timeout = STABLE_TIMEOUT if found.stable else 0.0
        if spec is None and node is self.tree.root:
            timeout = ROOT_TIMEOUT
        entry.entry_timeout = timeout
        # apfs/log grows: its size is never cached.
        entry.attr_timeout = 0.0 if spec is not None and spec.size_varies else timeout
        return entry

    def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        try:
            return self._attributes(self.tree.get(inode))
        except PathError:
            # fstat() of an open file whose node vanished still works on a kernel: the open
            # file pins its inode.  Open files are few, so this scan is cheap.
            for opened in self._files.values():
                if opened.found.ino == inode:
                    return self._attributes(opened.found)
            raise

    def lookup(self, parent_inode: int, name: bytes, ctx: Any = None):
        parent = self.tree.get(parent_inode)
        if parent.spec is not None or parent.node.kind is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self._attributes(self.tree.lookup(parent.node, os.fsdecode(name)))

    def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any):
        # kernfs_iop_setattr "ignores size changes": `echo x > attr` opens with O_TRUNC and
        # some tools truncate explicitly.  Times are accepted and ignored the same way.
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attributes(self.tree.get(inode))

    def readlink(self, inode: int, ctx: Any) -> bytes:
        found = self.tree.get(inode)
        if found.spec is not None or found.node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(found.node.target)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, _ in inode_list:
            self.tree.forget(inode)

    def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # -- directories ---------------------------------------------------------------------

    def opendir(self, inode: int, ctx: Any) -> int:
        found = self.tree.get(inode)
        if found.spec is not None or found.node.kind is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self._fh)
        self._dirs[fh] = self.tree.listing(found.node)
        return fh

    def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self._dirs[fh]
        for index in range(start_id, len(entries)):
            name, found = entries[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attributes(found),
                                         index + 1):
                break

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ---------------------------------------------------------------------------

    def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        found = self.tree.get(inode)
        spec = found.spec
        if spec is None:
            raise pyfuse3.FUSEError(errno.EISDIR if found.node.kind else errno.ELOOP)
        access = flags & os.O_ACCMODE
        # kernfs checks the file itself, even for root (CAP_DAC_OVERRIDE bypasses the
        # kernel's default_permissions check, not this one): `cat assign_adapter` fails.
        if access in (os.O_WRONLY, os.O_RDWR) and not spec.writable():
            raise pyfuse3.FUSEError(errno.EACCES)
        if access in (os.O_RDONLY, os.O_RDWR) and not spec.readable():
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = next(self._fh)
        info = pyfuse3.FileInfo(fh=fh)
        obj = found.node.obj
        if isinstance(spec, Device):
            # FUSE passes O_NONBLOCK (tpm2-tss opens with it); the handle decides what it means.
            handle = spec.open(obj, bool(flags & os.O_NONBLOCK))
            self._files[fh] = OpenFile(found, handle, spec.queue(obj), device=True)
            info.nonseekable = not spec.seekable
        elif spec.queue is not None:
            self._files[fh] = OpenFile(found, spec.open(obj), spec.queue(obj))
        else:
            self._files[fh] = OpenFile(found, spec.open(obj))
        info.direct_io = True
        info.keep_cache = False
        return info

    def _live(self, fh: int) -> OpenFile:
        """The open file, if its node never vanished (kernfs_get_active: else ENODEV)."""
        opened = self._files[fh]
        if opened.dead or not self.tree.exists(opened.found):
            opened.dead = True
            raise pyfuse3.FUSEError(errno.ENODEV)
        return opened

    def read(self, fh: int, offset: int, size: int) -> Any:
        opened = self._live(fh)
        queue = opened.queue
        if queue is not None and not opened.device and self._would_wait(queue):
            return self._queued_read(opened, offset, size)
        try:
            if queue is None:
                return opened.handle.read(offset, size)
            with NO_WAIT:
                content = opened.handle.read(offset, size)
        except WouldWait:  # a socket front end's command got the TPM first
            return self._queued_read(opened, offset, size)
        except DeviceError as exc:
            # A show() that fails (a PCR read of a powered-off TPM) is logged like a refusal.
            self._on_refusal(self.tree.path_of(opened.found), None, exc)
            raise
        self._after_read(opened)
        return content

    def _after_read(self, opened: OpenFile) -> None:
        """--state: a read that may have created durable state is saved before its reply
        (DeviceError EIO if that fails, as for a write)."""
        if self._on_write is not None and opened.found.spec.read_saves:
            self._on_write(self.tree.path_of(opened.found))

    def write(self, fh: int, offset: int, data: bytes) -> Any:
        opened = self._live(fh)
        queue = opened.queue
        if queue is not None and not (opened.device and self._quick(opened, data)):
            return self._queued_write(opened, offset, data)
        try:
            if queue is None:
                written = opened.handle.write(offset, data)
            else:
                with NO_WAIT:
                    written = opened.handle.write(offset, data)
        except WouldWait:  # a socket front end's command got the TPM first
            return self._queued_write(opened, offset, data)
        except DeviceError as exc:
            self._on_refusal(self.tree.path_of(opened.found), data, exc)
            raise
        if not opened.device:
            self._written(opened)
        return written

    def _written(self, opened: OpenFile) -> None:
        """After an accepted write of an attribute: --state commit, kernel caches."""
        try:
            if self._on_write is not None:
                # --state: durable before the reply; DeviceError(EIO) after undoing the write.
                self._on_write(self.tree.path_of(opened.found))
        finally:
            self._after_change(self.tree.changed())

    def _after_change(self, stale: Invalidations) -> None:
        # An open file belongs to the node it opened: once that vanishes it stays dead, even
        # if a node of the same name comes back later (checked now, not at the next read).
        for opened in self._files.values():
            if not opened.dead and not self.tree.exists(opened.found):
                opened.dead = True
        for parent_ino, name in stale.entries:
            self._kernel.forget_entry(parent_ino, name)
        for ino in stale.inodes:
            self._kernel.forget_attributes(ino)

    def flush(self, fh: int) -> None:
        # kernfs has no .flush, and nothing here is written back at close.  FUSE documents
        # ENOSYS from FLUSH as "success, do not send again", so every later close() costs no
        # round trip: one request in five of a `cat` (see README, Performance).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    def release(self, fh: int) -> Any:
        opened = self._files.pop(fh, None)
        if opened is not None and opened.device:
            handle: DeviceHandle = opened.handle  # type: ignore[assignment]
            # Closed now, as the kernel closes at the last close(): RELEASE is queued
            # before the OPEN of a next opener of /dev/tpm0, which must find it free.
            flush = handle.release()
            if flush is not None:
                assert opened.queue is not None
                return self._offload(opened.queue, flush)
        return None

    # -- calls that may block run off the request loop ------------------------------------

    def _would_wait(self, queue: Worker) -> bool:
        """Whether a call on ``queue`` made now would wait.  An idle TPM answers a PCR read
        in microseconds, less than a thread hand-off costs (README, vTPM), so such reads
        stay inline.  Commands of the mount's files start from this loop, so none can
        start between this check and the read; a socket front end's thread could: the
        inline call runs under ``NO_WAIT``, so the TPM's lock then refuses it (WouldWait)
        and it goes to the queue instead of holding the loop."""
        limiter = self._queues.get(queue)
        return queue.busy or (limiter is not None and limiter.borrowed_tokens > 0)

    def _quick(self, opened: OpenFile, data: bytes) -> bool:
        """A device write that may run on the request loop: its queue is idle, so it
        overtakes nothing, and the device says it takes microseconds (README, vTPM)."""
        assert opened.queue is not None
        handle: DeviceHandle = opened.handle  # type: ignore[assignment]
        return not self._would_wait(opened.queue) and handle.quick(data)

    async def _queued_read(self, opened: OpenFile, offset: int, size: int) -> bytes:
        assert opened.queue is not None
        try:
            content = await self._offload(opened.queue, opened.handle.read, offset, size)
        except DeviceError as exc:
            self._on_refusal(self.tree.path_of(opened.found), None, exc)
            raise
        self._after_read(opened)
        return content

    async def _queued_write(self, opened: OpenFile, offset: int, data: bytes) -> int:
        """A write in the file's queue.  An attribute's is followed by the --state commit and
        the kernel cache updates, as inline; a device's is a command to it: none follows."""
        assert opened.queue is not None
        try:
            written = await self._offload(opened.queue, opened.handle.write, offset, data)
        except DeviceError as exc:
            self._on_refusal(self.tree.path_of(opened.found), data, exc)
            raise
        if not opened.device:
            self._written(opened)
        return written

    async def _offload(self, queue: Worker, call: Callable[..., _T], *args: Any) -> _T:
        """Run ``call(*args)`` in a worker thread, after the calls queued before it on the
        same device (a trio CapacityLimiter of 1 is granted in FIFO order)."""
        limiter = self._queues.get(queue)
        if limiter is None:
            limiter = self._queues[queue] = trio.CapacityLimiter(1)
        self.hand_over()
        return await trio.to_thread.run_sync(_in_background, call, *args, limiter=limiter)

    # -- what sysfs refuses ----------------------------------------------------------------

    def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any):
        raise pyfuse3.FUSEError(errno.EACCES)

    def _no_namespace_change(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    mkdir = rmdir = unlink = rename = link = symlink = mknod = _no_namespace_change

    def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        # No attribute carries xattrs.  ENOSYS (asked once per mount) spares every write its
        # security.capability probe and every `ls -l` entry its ACL/SELinux probes; callers
        # then see EOPNOTSUPP where sysfs says ENODATA (README, known gaps).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        self.tree.get(inode)
        return []

    def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)


def _nothing() -> None:
    pass


_HANDLERS = frozenset(
    name for name, value in vars(pyfuse3.Operations).items()
    if callable(value) and not name.startswith("_") and name in vars(SysfsOperations)
)
"""Every pyfuse3 request handler this class implements: each is wrapped by :func:`_guarded`."""
assert FUSE_ROOT_INO == pyfuse3.ROOT_INODE


def _in_background(call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)`` in a worker thread at background priority (:mod:`apfs.background`)."""
    lower_this_thread()
    return call(*args)
