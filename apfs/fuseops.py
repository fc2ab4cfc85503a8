"""The pyfuse3 operations: kernel requests in, :class:`apfs.tree.Tree` look-ups out.

The layer is generic: it knows directories, files and symlinks, never AP cards or TPMs.
sysfs rules it enforces (fs/kernfs, see spec/sysfs-semantics.md): text files are 4096 bytes,
open checks the file's own mode even for root, each ``write()`` is one ``store()``, the
namespace cannot be changed (EACCES for create, EPERM for the rest, never ENOSYS), direct_io
so every read and write reaches the daemon.  FLUSH and GETXATTR are the two requests answered
ENOSYS on purpose: the kernel then stops sending them (see the handlers).

Handlers are plain functions: every device answers synchronously, so nothing here awaits.
Each is wrapped once by :func:`_guarded` into the coroutine pyfuse3 awaits: a device refusal
becomes its errno, and an unexpected exception becomes EIO plus a traceback in the log —
pyfuse3 only catches ``FUSEError``, and anything else would take the whole mount down.
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
from typing import Any, TypeVar

import pyfuse3

from apfs.kernfs import Handle
from apfs.tree import FUSE_ROOT_INO, Lookup, Tree
from vdev.errors import DeviceError

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
            return handler(*args)
        except pyfuse3.FUSEError:
            raise
        except DeviceError as exc:
            raise pyfuse3.FUSEError(_kernel_errno(exc.errno)) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(_kernel_errno(exc.errno or errno.EIO)) from None
        except Exception:
            log.exception("internal error in %s%r; answered EIO", handler.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class SysfsOperations(pyfuse3.Operations):
    """pyfuse3 handlers over a :class:`Tree`."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: Tree, on_refusal: Callable[[str, bytes, DeviceError], None],
                 on_write: Callable[[str], None] | None = None):
        super().__init__()
        self.tree = tree
        self._on_refusal = on_refusal
        self._on_write = on_write
        self._files: dict[int, tuple[Lookup, Handle]] = {}
        self._dirs: dict[int, list[tuple[str, Lookup]]] = {}
        self._fh = itertools.count(1)
        self._mount_ns = time.time_ns()
        for name in _HANDLERS:
            setattr(self, name, _guarded(getattr(self, name)))

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
            entry.st_nlink = 2 + node.kind.subdir_count(node.obj)
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = self._mount_ns
        entry.st_blksize = 4096
        timeout = STABLE_TIMEOUT if found.stable else 0.0
        if spec is None and node is self.tree.root:
            timeout = ROOT_TIMEOUT
        entry.attr_timeout = timeout
        entry.entry_timeout = timeout
        return entry

    def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attributes(self.tree.get(inode))

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
        self._files[fh] = (found, spec.open(found.node.obj))
        info = pyfuse3.FileInfo(fh=fh)
        info.direct_io = True
        info.keep_cache = False
        return info

    def _live(self, fh: int) -> tuple[Lookup, Handle]:
        """The open file, if its file still exists (kernfs_get_active: else ENODEV)."""
        opened = self._files[fh]
        if not self.tree.exists(opened[0]):
            raise pyfuse3.FUSEError(errno.ENODEV)
        return opened

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return self._live(fh)[1].read(offset, size)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        found, handle = self._live(fh)
        try:
            written = handle.write(offset, data)
        except DeviceError as exc:
            self._on_refusal(self.tree.path_of(found), data, exc)
            raise
        self.tree.changed()
        if self._on_write is not None:
            # --state: durable before the reply; DeviceError(EIO) after undoing the write.
            self._on_write(self.tree.path_of(found))
        return written

    def flush(self, fh: int) -> None:
        # kernfs has no .flush, and nothing here is written back at close.  FUSE documents
        # ENOSYS from FLUSH as "success, do not send again", so every later close() costs no
        # round trip: one request in five of a `cat` (see README, Performance).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    def release(self, fh: int) -> None:
        self._files.pop(fh, None)

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


_HANDLERS = frozenset({
    "getattr", "lookup", "setattr", "readlink", "forget", "statfs", "opendir", "readdir",
    "releasedir", "open", "read", "write", "flush", "release", "create", "mkdir", "rmdir",
    "unlink", "rename", "link", "symlink", "mknod", "getxattr", "listxattr", "setxattr",
    "removexattr",
})
assert FUSE_ROOT_INO == pyfuse3.ROOT_INODE
