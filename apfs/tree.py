"""Inodes for a tree of :mod:`apfs.kernfs` declarations.

Directories and symlinks the kernel has seen get a small :class:`Node` record, interned by
(parent, name) so a name keeps its inode while it means the same thing.  Files get no record
at all: a file's inode is its directory's inode + 1 + its index in the directory's file table,
which keeps a 256x256 host (about 660,000 attribute files) to about 330,000 records.

Records never hold device state; they hold the object a declaration was resolved against.
Whether a record still means what it meant is checked by resolving its name again in its
parent — but only after a write, since nothing else changes the tree.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from typing import Any

from apfs.kernfs import DirKind, FileSpec, FoundDir, FoundFile, FoundLink, Path, relative_link

LISTING_CACHE_MIN = 1024
"""Directories with at least this many entries keep their last listing until the next write
(``sys/bus/ap/devices`` of a 256x256 host has 65 792: rebuilding it costs ~0.2 s)."""
LISTING_CACHE_SIZE = 4

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


class Tree:
    """The inode table over one root declaration."""

    def __init__(self, root_kind: DirKind, root_obj: Any) -> None:
        self._next_id = 1
        self._nodes: dict[int, Node] = {}
        self.generation = 1
        """Bumped after every accepted write; records re-check themselves when it moved."""
        self._listings: OrderedDict[int, tuple[int, list[tuple[str, Lookup]]]] = OrderedDict()
        self.root = self._new_node(None, "", True, kind=root_kind, obj=root_obj)
        self.root.checked = self.generation

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
        return node

    def changed(self) -> None:
        """A write was accepted: any record may now mean something else."""
        self.generation += 1

    def forget(self, ino: int) -> None:
        """The kernel dropped ``ino``; keep live records (stable numbers), drop dead ones."""
        node = self._nodes.get(ino)
        if node is not None and node is not self.root and not self._alive(node):
            self._drop(node)

    def _drop(self, node: Node) -> None:
        self._nodes.pop(node.ino, None)
        kids = node.parent.kids if node.parent is not None else None
        if kids is not None and kids.get(node.name) is node:
            del kids[node.name]

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
        """Resolve ``name`` in ``parent``; raise OSError(ENOENT) when it does not exist."""
        if parent.kind is None or not self._alive(parent):
            raise OSError(errno.ENOENT, name)
        found = parent.kind.lookup(parent.obj, name)
        if found is None:
            raise OSError(errno.ENOENT, name)
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
            raise OSError(errno.ENOENT, str(ino))
        index = (ino & ((1 << INO_SHIFT) - 1)) - 1
        if index < 0:
            return Lookup(ino, node, None, node.stable)
        assert node.kind is not None
        if index >= len(node.kind.files):
            raise OSError(errno.ENOENT, str(ino))
        spec = node.kind.files[index]
        if not _present(spec, node):
            raise OSError(errno.ENOENT, f"{'/'.join(node.path)}/{spec.name}")
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
            raise OSError(errno.ENOENT, "/".join(node.path))
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

    def resolve(self, path: Path, follow: bool = True, _depth: int = 0) -> Lookup:
        """Walk ``path`` from the root like the kernel would, following symlinks."""
        if _depth > 8:
            raise OSError(errno.ELOOP, "/".join(path))
        here = Lookup(FUSE_ROOT_INO, self.root, None, True)
        for i, name in enumerate(path):
            if here.spec is not None:
                raise OSError(errno.ENOTDIR, "/".join(path[:i]))
            if name in ("", "."):
                continue
            if name == "..":
                parent = here.node.parent or self.root
                here = Lookup(parent.ino, parent, None, True)
                continue
            here = self.lookup(here.node, name)
            last = i == len(path) - 1
            if here.spec is None and here.node.target is not None and (follow or not last):
                link_dir = here.node.path[:-1]
                joined = link_dir + tuple(here.node.target.split("/"))
                here = self.resolve(_normalize(joined), True, _depth + 1)
        return here

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


def _normalize(path: Path) -> Path:
    out: list[str] = []
    for name in path:
        if name in ("", "."):
            continue
        if name == "..":
            if out:
                out.pop()
        else:
            out.append(name)
    return tuple(out)
