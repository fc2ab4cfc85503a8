"""Inodes for a tree of :mod:`apfs.kernfs` declarations.

Directories and symlinks the kernel has seen get a small :class:`Node` record, interned by
(parent, name) so a name keeps its inode while it means the same thing.  Files get no record
at all: a file's inode is its directory's inode + 1 + its index in the directory's file table,
which keeps a 256x256 host (about 660,000 attribute files) to about 330,000 records.

Records never hold device state; they hold the object a declaration was resolved against.
Whether a record still means what it meant is checked by resolving its name again in its
parent — but only after a write, since nothing else changes the tree.

Records of entries that can vanish (mediated devices, driver links) must not outlive them:
the kernel keeps dentries of a vanished name until memory pressure, so waiting for its FORGET
would let records pile up with every create/remove.  After each accepted write the tree
re-checks a few of those records, round-robin (:data:`SWEEP_PER_WRITE`), drops the dead ones
with their sub-trees, and reports the names the kernel should invalidate
(:meth:`Tree.changed`).  The same report names directories whose link count moved, since
their attributes are otherwise cached for minutes.
"""

from __future__ import annotations

import errno
from collections import OrderedDict, deque
from typing import Any, NamedTuple

from apfs.kernfs import (
    DirKind,
    FileSpec,
    FoundDir,
    FoundFile,
    FoundLink,
    Path,
    PathError,
    relative_link,
)

LISTING_CACHE_MIN = 1024
"""Directories with at least this many entries keep their last listing until the next write
(``sys/bus/ap/devices`` of a 256x256 host has 65 792: rebuilding it costs ~0.2 s)."""
LISTING_CACHE_SIZE = 4

SWEEP_PER_WRITE = 16
"""Records of vanishable entries re-checked after each accepted write: enough to outpace a
create/assign/remove loop (a few such records per cycle), small enough for the echo path."""

INO_SHIFT = 7
"""Low bits of an inode number index a directory's file table (0 = the directory itself)."""
FUSE_ROOT_INO = 1


class Node:
    """A directory or symlink the kernel knows by inode number."""

    # A 256x256 host has ~400 000 of these once a `find` walked it: every slot counts.
    __slots__ = ("checked", "ino", "kids", "kind", "name", "obj", "parent", "stable", "target")

    def __init__(self, ino: int, parent: Node | None, name: str, stable: bool,
                 kind: DirKind | None = None, obj: Any = None, target: str | None = None):
        self.ino = ino
        self.parent = parent
        self.name = name
        self.stable = stable
        self.kind = kind
        self.obj = obj
        self.target = target
        """A symlink's text, relative like kernfs's; None for a directory."""
        self.kids: dict[str, Node] | None = None  # interned children, made on first need
        self.checked = 0

    @property
    def path(self) -> Path:
        """Names from the mount root (walked up on demand: only symlink texts and log lines
        need it)."""
        names: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            names.append(node.name)
            node = node.parent
        return tuple(reversed(names))


class Lookup:
    """What a name resolved to: a record (directory/symlink) or a file of a directory."""

    __slots__ = ("ino", "node", "spec", "stable")

    def __init__(self, ino: int, node: Node, spec: FileSpec | None, stable: bool) -> None:
        self.ino = ino
        self.node = node  # for a file: its directory
        self.spec = spec
        self.stable = stable


class Invalidations(NamedTuple):
    """What the kernel may hold stale after a write: vanished names, changed attributes."""

    entries: list[tuple[int, str]]
    """(parent inode, name) of entries that no longer exist."""
    inodes: list[int]
    """Directories whose attributes (``st_nlink``) changed."""


class Tree:
    """The inode table over one root declaration."""

    def __init__(self, root_kind: DirKind, root_obj: Any) -> None:
        self._next_id = 1
        self._nodes: dict[int, Node] = {}
        self.generation = 1
        """Bumped after every accepted write; records re-check themselves when it moved."""
        self._listings: OrderedDict[int, tuple[int, list[tuple[str, Lookup]]]] = OrderedDict()
        self._vanishable: deque[Node] = deque()
        self._vanished: list[tuple[int, str]] = []
        self._link_counts: dict[int, tuple[Node, int]] = {}
        """Directories whose ``st_nlink`` can change, with the count last seen."""
        self.root = self._new_node(None, "", True, kind=root_kind, obj=root_obj)
        self.root.checked = self.generation

    @property
    def record_count(self) -> int:
        """Records held: directories and symlinks the kernel has seen that may still exist."""
        return len(self._nodes)

    # -- records ---------------------------------------------------------------------------

    def _new_node(self, parent: Node | None, name: str, stable: bool, **what: Any) -> Node:
        ino = self._next_id << INO_SHIFT
        self._next_id += 1
        node = Node(ino, parent, name, stable, **what)
        node.checked = self.generation
        self._nodes[ino] = node
        if parent is not None:
            if parent.kids is None:
                parent.kids = {}
            parent.kids[name] = node
        if not stable:
            self._vanishable.append(node)
        if node.kind is not None and node.kind.nlink_varies:
            self._link_counts[ino] = (node, node.kind.subdir_count(node.obj))
        return node

    def changed(self) -> Invalidations:
        """A write was accepted: any record may now mean something else.  Re-checks a few
        vanishable records and returns what the kernel should forget."""
        self.generation += 1
        for _ in range(min(SWEEP_PER_WRITE, len(self._vanishable))):
            node = self._vanishable.popleft()
            if self._nodes.get(node.ino) is node and self._alive(node):
                self._vanishable.append(node)
        moved = []
        for ino, (node, count) in list(self._link_counts.items()):
            if self._nodes.get(ino) is not node:
                del self._link_counts[ino]
                continue
            now = node.kind.subdir_count(node.obj)  # type: ignore[union-attr]
            if now != count:
                self._link_counts[ino] = (node, now)
                moved.append(self._kernel_ino(node))
        vanished, self._vanished = self._vanished, []
        return Invalidations(vanished, moved)

    def forget(self, ino: int) -> None:
        """The kernel dropped ``ino``; keep live records (stable numbers), drop dead ones."""
        node = self._nodes.get(ino)
        if node is not None and node is not self.root and not self._alive(node):
            self._drop(node, tell_kernel=False)

    def _drop(self, node: Node, tell_kernel: bool = True) -> None:
        """Forget a record and its whole sub-tree; the kernel's dentry of the top one is
        reported for invalidation (invalidating a directory drops its children too)."""
        if self._nodes.get(node.ino) is not node:
            return
        del self._nodes[node.ino]
        parent = node.parent
        if parent is not None and parent.kids is not None and parent.kids.get(node.name) is node:
            del parent.kids[node.name]
            if tell_kernel and self._nodes.get(parent.ino) is parent:
                self._vanished.append((self._kernel_ino(parent), node.name))
        if node.kids:
            for kid in list(node.kids.values()):
                self._drop(kid, tell_kernel=False)

    def _kernel_ino(self, node: Node) -> int:
        return FUSE_ROOT_INO if node is self.root else node.ino

    # -- resolution --------------------------------------------------------------------------

    def _alive(self, node: Node) -> bool:
        if node.checked == self.generation:
            return True
        parent = node.parent
        if parent is None:
            return True
        if not self._alive(parent):
            return False
        assert parent.kind is not None
        found = parent.kind.lookup(parent.obj, node.name)
        if not _same_meaning(node, found):
            self._drop(node)
            return False
        node.checked = self.generation
        return True

    def lookup(self, parent: Node, name: str) -> Lookup:
        """Resolve ``name`` in ``parent``; raise PathError(ENOENT) when it does not exist."""
        if parent.kind is None or not self._alive(parent):
            raise PathError(errno.ENOENT, name)
        found = parent.kind.lookup(parent.obj, name)
        if found is None:
            raise PathError(errno.ENOENT, name)
        return self.intern(parent, name, found)

    def intern(self, parent: Node, name: str, found: FoundFile | FoundDir | FoundLink) -> Lookup:
        """The record (or file inode) for an entry of ``parent`` that was just resolved."""
        if isinstance(found, FoundFile):
            return Lookup(parent.ino + 1 + found.index, parent, found.spec, found.stable)
        node = parent.kids.get(name) if parent.kids is not None else None
        # A stable entry means the same thing for as long as its directory lives.
        if node is None or not (node.stable or _same_meaning(node, found)):
            if node is not None:
                self._drop(node)
            if isinstance(found, FoundDir):
                node = self._new_node(parent, name, found.stable, kind=found.kind,
                                      obj=found.obj)
            else:
                node = self._new_node(parent, name, found.stable,
                                      target=_link_text(parent, found))
        else:
            node.checked = self.generation
        return Lookup(node.ino, node, None, node.stable)

    def get(self, ino: int) -> Lookup:
        """Decode an inode number the kernel sent; ENOENT when it no longer exists."""
        if ino == FUSE_ROOT_INO:
            return Lookup(FUSE_ROOT_INO, self.root, None, True)
        node = self._nodes.get(ino & ~((1 << INO_SHIFT) - 1))
        if node is None or not self._alive(node):
            raise PathError(errno.ENOENT, f"inode {ino}")
        index = (ino & ((1 << INO_SHIFT) - 1)) - 1
        if index < 0:
            return Lookup(ino, node, None, node.stable)
        assert node.kind is not None
        if index >= len(node.kind.files):
            raise PathError(errno.ENOENT, f"inode {ino}")
        spec = node.kind.files[index]
        if not _present(spec, node):
            raise PathError(errno.ENOENT, f"{'/'.join(node.path)}/{spec.name}")
        return Lookup(ino, node, spec, spec.when is None)

    def exists(self, found: Lookup) -> bool:
        """Whether what ``found`` named still exists (an open file's node may have vanished).
        Costs one comparison unless a write was accepted since the last check."""
        if not self._alive(found.node):
            return False
        return found.spec is None or _present(found.spec, found.node)

    def listing(self, node: Node) -> list[tuple[str, Lookup]]:
        """Every entry of a directory, interned, for readdir (callers must not modify it)."""
        if node.kind is None or not self._alive(node):
            raise PathError(errno.ENOENT, "/".join(node.path))
        cached = self._listings.get(node.ino)
        if cached is not None and cached[0] == self.generation:
            self._listings.move_to_end(node.ino)
            return cached[1]
        entries = [(name, self.intern(node, name, found))
                   for name, found in node.kind.listing(node.obj)]
        if len(entries) >= LISTING_CACHE_MIN:
            self._listings[node.ino] = (self.generation, entries)
            self._listings.move_to_end(node.ino)
            if len(self._listings) > LISTING_CACHE_SIZE:
                self._listings.popitem(last=False)
        return entries

    def path_of(self, lookup: Lookup) -> str:
        """A human-readable path for log lines."""
        parts = lookup.node.path
        if lookup.spec is not None:
            parts = (*parts, lookup.spec.name)
        return "/".join(parts)


def _present(spec: FileSpec, node: Node) -> bool:
    return spec.when is None or spec.when(node.obj)


def _same_meaning(node: Node, found: FoundFile | FoundDir | FoundLink | None) -> bool:
    if isinstance(found, FoundDir):
        return node.kind is found.kind and node.obj is found.obj
    if isinstance(found, FoundLink):
        assert node.parent is not None
        return node.target == _link_text(node.parent, found)
    return False


def _link_text(link_dir: Node, found: FoundLink) -> str:
    if found.relative:
        return "/".join(found.target)
    return relative_link(link_dir.path, found.target)

