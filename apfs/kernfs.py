"""A kernfs-like node model: the declarations device tables are written in.

A device's sysfs surface is declared next to the device as a :class:`DirKind`: a table of
files (text attributes, like the kernel's ``DEVICE_ATTR`` arrays) plus its child entries
(sub-directories, symlinks, families of either drawn from a mapping in the device model).
Declarations hold functions of the device object, never copies of its state: what a
directory contains is computed from the model every time it is asked, so a ``write()`` that
changes the model changes the tree with no bookkeeping in between.

This module knows nothing about FUSE or about any particular device.  :mod:`apfs.tree` turns
declarations into inodes; :mod:`apfs.fuseops` serves them.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

PAGE_SIZE = 4096
"""sysfs text attributes report this size and accept at most this many bytes per write()."""

Path = tuple[str, ...]
"""A location in the tree, as names from the mount root: ``("sys", "devices", "ap")``."""

class Worker(Hashable, Protocol):
    """What the blocking calls of a file are serialised on (its TPM)."""

    @property
    def busy(self) -> bool:
        """Serving a call now: a call made now would wait."""
        ...


Queue = Callable[[Any], Worker]
"""The :class:`Worker` of a file, given the file's object."""
Show = Callable[[Any], str]
Store = Callable[[Any, str], None]
When = Callable[[Any], bool]


class PathError(Exception):
    """A name that does not resolve: ENOENT, ENOTDIR or ELOOP, and where.

    Not an OSError on purpose: the FUSE layer answers this errno quietly, while a genuine
    OSError inside a handler is a bug that must reach the EIO-and-traceback path.
    """

    def __init__(self, code: int, where: str) -> None:
        super().__init__(f"{where}: {errno.errorcode.get(code, code)}")
        self.errno = code
        self.where = where


class Handle(Protocol):
    """What an open file is: per-open state (a show snapshot, a pending TPM response...).

    ``write`` is only ever called on handles of specs that are :meth:`FileSpec.writable`.
    """

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> int: ...


class DeviceHandle(Protocol):
    """An open device-like file (/dev/tpm0): ``write`` may block while a device computes,
    so the FUSE layer runs it in a worker thread, one at a time per :meth:`Device.queue`, in
    arrival order, unless :meth:`quick` says that write cannot take long and that queue is
    idle (then it runs at once: a thread hand-off would cost more than the write).  ``read``
    never blocks; offsets are ignored (a character device keeps its own cursor).
    ``release`` closes at once and returns what may block (flushing a resource manager's
    space), which then runs like a write."""

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> int: ...

    def quick(self, data: bytes) -> bool:
        """Whether writing ``data`` takes microseconds once the device is idle."""
        ...

    def release(self) -> Callable[[], None] | None: ...


class FileSpec(Protocol):
    """One file of a directory table: knows its mode and how to open itself on an object."""

    name: str
    mode: int
    when: When | None

    queue: Queue | None
    """Set when reading or writing an open file may block (the file talks to a TPM): the
    FUSE layer then serves those calls in a worker thread, one at a time per
    ``queue(obj)``, in arrival order, so that sysfs stays responsive meanwhile (a read
    while that worker is idle is served inline: it cannot wait)."""

    size_varies: bool
    """Whether :meth:`size` can change while the file exists (then the kernel must not
    cache the file's attributes)."""

    read_saves: bool
    """Whether a read may create durable state (the SEV driver INITs a platform to export
    its certificates): with ``--state`` it is saved before the read's reply, as a write's."""

    def size(self, obj: Any) -> int: ...

    def readable(self) -> bool: ...

    def writable(self) -> bool: ...

    def open(self, obj: Any) -> Handle: ...


class _SnapshotReader:
    """An open attribute whose content is made at the first read, whatever its offset, and at
    every read at offset 0, then kept as this open file's snapshot: a reader walking the
    file in pieces sees one consistent content."""

    __slots__ = ("_attr", "_obj", "_snapshot")

    def __init__(self, attr: Any, obj: Any) -> None:
        self._attr = attr
        self._obj = obj
        self._snapshot: bytes | None = None

    def read(self, offset: int, size: int) -> bytes:
        if offset == 0 or self._snapshot is None:
            self._snapshot = self._content()
        return self._snapshot[offset : offset + size]

    def _content(self) -> bytes:
        raise NotImplementedError


# --- text attributes ----------------------------------------------------------------------


class TextHandle(_SnapshotReader):
    """An open sysfs text attribute (fs/kernfs/file.c semantics).

    ``show()`` runs at the first read of an open file, whatever its offset, and at every read
    at offset 0; the result is kept as this open file's snapshot, so a reader walking the
    file in pieces sees one consistent text (``dd bs=1 skip=1`` on a fresh open reads the
    second byte, as kernfs_seq_start does).  Each ``write()`` is one ``store()`` of the whole
    buffer, whatever the offset.
    """

    __slots__ = ()
    _attr: Attr

    def _content(self) -> bytes:
        assert self._attr.show is not None
        # seq_file gives show() one page; the kernel keeps at most PAGE_SIZE - 1 bytes.
        return self._attr.show(self._obj).encode()[: PAGE_SIZE - 1]

    def write(self, offset: int, data: bytes) -> int:
        if not data:
            return 0
        data = data[:PAGE_SIZE]
        # store() sees a NUL-terminated C string: kstrto*() and sysfs_streq() stop at the
        # first NUL, so "5\0junk" means "5" on a real kernel too.
        text = data.split(b"\0", 1)[0].decode("latin-1")
        assert self._attr.store is not None
        self._attr.store(self._obj, text)
        return len(data)


@dataclass(frozen=True, slots=True)
class Attr:
    """A sysfs text attribute: ``show(obj) -> str`` and/or ``store(obj, text)``."""

    name: str
    mode: int
    show: Show | None = None
    store: Store | None = None
    when: When | None = None
    """Present only while ``when(obj)`` is true (e.g. ``online`` only under a host driver)."""
    queue: Queue | None = None
    """Set for a ``show``/``store`` that may block (a PCR read waits for the TPM)."""

    size_varies = False
    read_saves = False

    def size(self, obj: Any) -> int:
        return PAGE_SIZE

    def readable(self) -> bool:
        return self.show is not None and bool(self.mode & 0o444)

    def writable(self) -> bool:
        return self.store is not None and bool(self.mode & 0o222)

    def open(self, obj: Any) -> Handle:
        return TextHandle(self, obj)


def ro(name: str, show: Show, when: When | None = None, queue: Queue | None = None) -> Attr:
    """``DEVICE_ATTR_RO``: mode 0444."""
    return Attr(name, 0o444, show=show, when=when, queue=queue)


def wo(name: str, store: Store, when: When | None = None, queue: Queue | None = None) -> Attr:
    """``DEVICE_ATTR_WO``: mode 0200, root only, unreadable even for root."""
    return Attr(name, 0o200, store=store, when=when, queue=queue)


def rw(name: str, show: Show, store: Store, when: When | None = None,
       queue: Queue | None = None) -> Attr:
    """``DEVICE_ATTR_RW``: mode 0644."""
    return Attr(name, 0o644, show=show, store=store, when=when, queue=queue)


# --- device-like files (/dev/tpm0) --------------------------------------------------------


class Device:
    """A character device shown as a regular file of size 0 (FUSE cannot make device nodes
    that reach the daemon): each open gets its own :class:`DeviceHandle`.

    ``open_file(obj, nonblocking)`` makes the handle (raising DeviceError refuses the open,
    e.g. EBUSY); ``queue(obj)`` names what its writes (and the blocking part of its
    release) are serialised on (the TPM); its reads never block and are served inline.
    Mode 0600: udev gives /dev/tpm0 ``root:tss 0660``, but a mount has no tss group to
    show, so only the owner (root: apfs files show uid 0) may open it.  ``seekable=False``
    makes lseek() and pread() fail with ESPIPE (FUSE's nonseekable open); a seekable one
    still ignores the offsets it is given.
    """

    __slots__ = ("mode", "name", "open_file", "queue", "seekable", "when")
    size_varies = False
    read_saves = False

    def __init__(self, name: str, open_file: Callable[[Any, bool], DeviceHandle],
                 queue: Queue, *, seekable: bool = True,
                 mode: int = 0o600) -> None:
        self.name = name
        self.open_file = open_file
        self.queue: Queue = queue
        self.seekable = seekable
        self.mode = mode
        self.when: When | None = None

    def size(self, obj: Any) -> int:
        return 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def open(self, obj: Any, nonblocking: bool = False) -> DeviceHandle:
        return self.open_file(obj, nonblocking)


# --- snapshot files (not sysfs attributes: the apfs log) ------------------------------------


class SnapshotHandle:
    """Reads a whole text taken once at open; its size is the text's, not a page."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A read-only file of any length whose content is fixed at open (a log, a report)."""

    name: str
    content: Callable[[Any], bytes]
    mode: int = 0o444
    when: When | None = None

    size_varies = True
    """Its size is the content's, which grows: never cached by the kernel."""
    queue = None
    read_saves = False

    def size(self, obj: Any) -> int:
        return len(self.content(obj))

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def open(self, obj: Any) -> Handle:
        return SnapshotHandle(self.content(obj))


# --- binary attributes (sysfs bin_attribute: the kernel's BIN_ATTR) --------------------------

BinRead = Callable[[Any], bytes]
BinWrite = Callable[[Any, int, bytes], None]


class _OffsetWriter:
    """Each ``write()`` is one ``write(obj, offset, data)`` with the bytes as they are (no NUL
    cut, no page limit), as the kernel hands a bin_attribute's write its buffer and offset."""

    __slots__ = ()
    _attr: Any
    _obj: Any

    def write(self, offset: int, data: bytes) -> int:
        if data:
            assert self._attr.write is not None
            self._attr.write(self._obj, offset, data)
        return len(data)


class _ReadWriteFunctions:
    """A file spec whose ``read``/``write`` functions, when present, make it readable or
    writable as its mode allows."""

    __slots__ = ()
    mode: int
    read: Any
    write: Any

    def readable(self) -> bool:
        return self.read is not None and bool(self.mode & 0o444)

    def writable(self) -> bool:
        return self.write is not None and bool(self.mode & 0o222)


class BinaryHandle(_SnapshotReader, _OffsetWriter):
    """An open binary attribute: ``read(obj)`` is snapshotted at the first read and at every
    read at offset 0 (one consistent blob for a reader in pieces); each ``write()`` is one
    ``write(obj, offset, data)`` with the bytes as they are (no NUL cut, no page limit), as
    the kernel hands a bin_attribute's write its buffer and offset."""

    __slots__ = ()
    _attr: Binary

    def _content(self) -> bytes:
        assert self._attr.read is not None
        return self._attr.read(self._obj)


@dataclass(frozen=True, slots=True)
class Binary(_ReadWriteFunctions):
    """A binary attribute; its size shows as 0, as sysfs does for a bin_attribute of no
    fixed size (readers read to end of file)."""

    name: str
    mode: int
    read: BinRead | None = None
    write: BinWrite | None = None
    when: When | None = None
    queue: Queue | None = None
    read_saves: bool = False

    size_varies = False

    def size(self, obj: Any) -> int:
        return 0

    def open(self, obj: Any) -> Handle:
        return BinaryHandle(self, obj)


# --- memory-like files (guest memory: read and written at offsets, never snapshotted) ------

RegionRead = Callable[[Any, int, int], bytes]
RegionWrite = Callable[[Any, int, bytes], None]


class RegionHandle(_OffsetWriter):
    """An open :class:`Region`: every read and write goes to the object at its offset."""

    __slots__ = ("_attr", "_obj")

    def __init__(self, attr: Region, obj: Any) -> None:
        self._attr = attr
        self._obj = obj

    def read(self, offset: int, size: int) -> bytes:
        assert self._attr.read is not None
        return self._attr.read(self._obj, offset, size)


@dataclass(frozen=True, slots=True)
class Region(_ReadWriteFunctions):
    """A file of fixed length ``length(obj)`` (a guest's memory) whose reads and writes
    address the object directly, ``read(obj, offset, size)`` / ``write(obj, offset, data)``:
    unlike a :class:`Binary`, no snapshot, so reading 4 KiB of 64 MiB costs 4 KiB."""

    name: str
    mode: int
    length: Callable[[Any], int]
    read: RegionRead | None = None
    write: RegionWrite | None = None
    when: When | None = None
    queue: Queue | None = None

    size_varies = False
    read_saves = False

    def size(self, obj: Any) -> int:
        return self.length(obj)

    def open(self, obj: Any) -> Handle:
        return RegionHandle(self, obj)


# --- child entries ----------------------------------------------------------------------------


def _same(obj: Any) -> Any:
    return obj


@dataclass(frozen=True, slots=True)
class Subdir:
    """One named sub-directory showing ``get(obj)``."""

    name: str
    kind: DirKind
    get: Callable[[Any], Any] = _same


@dataclass(frozen=True, slots=True)
class Subdirs:
    """A family of sub-directories, one per item of the mapping ``items(obj)`` (name → object).

    Unless ``stable``, members come and go with the model (mediated devices), so the kernel
    is told not to cache their entries.
    """

    kind: DirKind
    items: Callable[[Any], Mapping[str, Any]]
    stable: bool = False
    """True when the family never changes after mount (the cards of ``devices/ap``)."""


@dataclass(frozen=True, slots=True)
class Link:
    """One named symlink to ``target(obj)`` (a :data:`Path`), absent while that is None."""

    name: str
    target: Callable[[Any], Path | None]
    conditional: bool = False
    """True when the link may vanish or change target while its directory lives."""


@dataclass(frozen=True, slots=True)
class Links:
    """A family of symlinks: one per item of ``items(obj)``, pointing at ``target(item)``."""

    items: Callable[[Any], Mapping[str, Any]]
    target: Callable[[Any], Path]
    stable: bool = False
    """True when the family never changes after mount (``bus/ap/devices``)."""


@dataclass(frozen=True, slots=True)
class Alias:
    """Hidden names: resolvable by lookup, never listed, each a symlink to a sibling.

    ``resolve(obj, name)`` returns the sibling's name or None.  This is how the seed's
    spellings that real sysfs would not have (``ap_matrix_passthrough``) still work.
    """

    resolve: Callable[[Any, str], str | None]


Entry = Subdir | Subdirs | Link | Links | Alias


# --- resolved children: what a lookup finds --------------------------------------------------
# NamedTuples, not dataclasses: a listing of bus/ap/devices on a 256x256 host makes 65 792 of
# them, and a frozen dataclass's __init__ costs several times a tuple's.


class FoundFile(NamedTuple):
    index: int
    spec: FileSpec
    stable: bool


class FoundDir(NamedTuple):
    kind: DirKind
    obj: Any
    stable: bool


class FoundLink(NamedTuple):
    target: Path
    """Absolute in the tree; for an :class:`Alias`, relative to the link's directory."""
    stable: bool
    relative: bool = False


Found = FoundFile | FoundDir | FoundLink


@dataclass(eq=False)
class DirKind:
    """The declaration of one kind of directory: its file table and its child entries."""

    name: str
    files: tuple[FileSpec, ...] = ()
    entries: tuple[Entry, ...] = ()
    _file_index: dict[str, int] = field(init=False, repr=False)
    _named: dict[str, Subdir | Link] = field(init=False, repr=False)
    _families: tuple[Subdirs | Links, ...] = field(init=False, repr=False)
    _aliases: tuple[Alias, ...] = field(init=False, repr=False)
    _named_subdirs: int = field(init=False, repr=False)
    nlink_varies: bool = field(init=False)
    """Whether ``st_nlink`` (2 + sub-directories) can change while the directory lives."""

    MAX_FILES = 127
    """File inodes are encoded as directory inode + 1 + index (see :mod:`apfs.tree`)."""

    def __post_init__(self) -> None:
        if len(self.files) > self.MAX_FILES:
            raise ValueError(f"{self.name}: more than {self.MAX_FILES} files")
        self._file_index = {spec.name: i for i, spec in enumerate(self.files)}
        self._named = {e.name: e for e in self.entries if isinstance(e, Subdir | Link)}
        self._families = tuple(e for e in self.entries if isinstance(e, Subdirs | Links))
        self._aliases = tuple(e for e in self.entries if isinstance(e, Alias))
        self._named_subdirs = sum(isinstance(e, Subdir) for e in self.entries)
        self.nlink_varies = any(isinstance(f, Subdirs) and not f.stable
                                for f in self._families)
        clash = set(self._file_index) & set(self._named)
        if len(self._file_index) != len(self.files) or clash:
            raise ValueError(f"{self.name}: duplicate names {sorted(clash) or self.files}")

    def lookup(self, obj: Any, name: str) -> Found | None:
        """Resolve one name without listing the directory (families may be huge)."""
        index = self._file_index.get(name)
        if index is not None:
            spec = self.files[index]
            if spec.when is None:
                return FoundFile(index, spec, True)
            return FoundFile(index, spec, False) if spec.when(obj) else None
        entry = self._named.get(name)
        if entry is not None:
            return _found_named(entry, obj)
        for family in self._families:
            item = family.items(obj).get(name)
            if item is not None:
                if isinstance(family, Subdirs):
                    return FoundDir(family.kind, item, family.stable)
                return FoundLink(family.target(item), family.stable)
        for alias in self._aliases:
            sibling = alias.resolve(obj, name)
            if sibling is not None and sibling != name and self.lookup(obj, sibling):
                return FoundLink((sibling,), False, relative=True)
        return None

    def listing(self, obj: Any) -> Iterator[tuple[str, Found]]:
        """Every visible entry, files first, in declaration order (aliases are hidden)."""
        for index, spec in enumerate(self.files):
            if spec.when is None:
                yield spec.name, FoundFile(index, spec, True)
            elif spec.when(obj):
                yield spec.name, FoundFile(index, spec, False)
        for entry in self.entries:
            if isinstance(entry, Subdir | Link):
                found = _found_named(entry, obj)
                if found is not None:
                    yield entry.name, found
            elif isinstance(entry, Subdirs):
                for name, item in entry.items(obj).items():
                    yield name, FoundDir(entry.kind, item, entry.stable)
            elif isinstance(entry, Links):
                for name, item in entry.items(obj).items():
                    yield name, FoundLink(entry.target(item), entry.stable)

    def subdir_count(self, obj: Any) -> int:
        """For ``st_nlink = 2 + subdirs``; families are counted by their mapping's size."""
        count = self._named_subdirs
        for family in self._families:
            if isinstance(family, Subdirs):
                count += len(family.items(obj))
        return count


def _found_named(entry: Subdir | Link, obj: Any) -> Found | None:
    if isinstance(entry, Subdir):
        return FoundDir(entry.kind, entry.get(obj), True)
    target = entry.target(obj)
    return None if target is None else FoundLink(target, not entry.conditional)


def directory(name: str, *entries: Entry | FileSpec) -> DirKind:
    """Declare a directory from a mixed list of files and entries, in listing order."""
    files = tuple(e for e in entries if not isinstance(e, Entry))
    children = tuple(e for e in entries if isinstance(e, Entry))
    return DirKind(name, files, children)  # type: ignore[arg-type]


def relative_link(link_dir: Path, target: Path) -> str:
    """The kernel's symlink text: up to the common ancestor, then down (kernfs_get_target_path).

    The walk up stops at an ancestor of the target's *parent*, so a link to an ancestor of
    its own directory names it: ``virtio0/tpm/tpm0/device`` is ``../../../virtio0``.
    """
    common = 0
    for a, b in zip(link_dir, target[:-1], strict=False):
        if a != b:
            break
        common += 1
    ups = len(link_dir) - common
    return "/".join([".."] * ups + list(target[common:])) or "."


MAX_LINK_DEPTH = 8


def resolve(root: DirKind, root_obj: Any, path: Path) -> tuple[Any, FileSpec | None]:
    """What ``path`` (names from the root) names, following symlinks like the kernel's
    path walk: ``(directory object, None)`` or ``(object of the file's directory, spec)``.

    Works on the declarations alone, so device code (a guest start naming a sysfsdev path)
    never depends on the inode table.  Raises :class:`PathError`.
    """
    return _walk(root, root_obj, path, 0)


def _walk(root: DirKind, root_obj: Any, path: Path, depth: int) -> tuple[Any, FileSpec | None]:
    if depth > MAX_LINK_DEPTH:
        raise PathError(errno.ELOOP, "/".join(path))
    stack: list[tuple[str, DirKind, Any]] = [("", root, root_obj)]
    spec: FileSpec | None = None
    for i, name in enumerate(path):
        if spec is not None:
            raise PathError(errno.ENOTDIR, "/".join(path[:i]))
        if name in ("", "."):
            continue
        if name == "..":
            if len(stack) > 1:
                stack.pop()
            continue
        _, kind, obj = stack[-1]
        found = kind.lookup(obj, name)
        if found is None:
            raise PathError(errno.ENOENT, "/".join(path[: i + 1]))
        if isinstance(found, FoundFile):
            spec = found.spec
        elif isinstance(found, FoundDir):
            stack.append((name, found.kind, found.obj))
        else:
            here = tuple(entry[0] for entry in stack[1:])
            target = (*here, *found.target) if found.relative else found.target
            return _walk(root, root_obj, (*target, *path[i + 1 :]), depth + 1)
    return stack[-1][2], spec
