"""The pyfuse3 operations in-process: what no mount test can provoke on purpose.

A real mount only shows that errors map to errno; here a declaration that crashes shows that
no exception but ``FUSEError`` leaves a handler, and the inode rules are checked directly.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

import pyfuse3
import pytest
import trio
import trio.testing

from apfs.fuseops import STABLE_TIMEOUT, SysfsOperations
from apfs.kernfs import Device, Link, Subdir, Subdirs, directory, relative_link, ro, rw, wo
from apfs.tree import Tree
from vdev.errors import DeviceError, WouldWait
from vdev.inline import waiting_forbidden


class Model:
    def __init__(self) -> None:
        self.value = 1
        self.items: dict[str, Model] = {}


def _store_value(model: Model, text: str) -> None:
    if not text.strip().isdigit():
        raise DeviceError(errno.EINVAL, f"value: {text!r} is not a number")
    model.value = int(text)


def _store_create(model: Model, text: str) -> None:
    model.items[text.strip()] = Model()


def _store_remove(model: Model, text: str) -> None:
    model.items.pop(text.strip(), None)


def _crash(model: Model) -> str:
    raise RuntimeError("a bug in a show function")


ITEM = directory("item", ro("value", lambda m: f"{m.value}\n"),
                 Link("root", lambda m: ("value",)))
ROOT = directory(
    "",
    rw("value", lambda m: f"{m.value}\n", _store_value),
    ro("odd", lambda m: "yes\n", when=lambda m: m.value % 2 == 1),
    ro("crash", _crash),
    wo("create", _store_create),
    wo("remove", _store_remove),
    Subdirs(ITEM, lambda m: m.items),
    Subdir("static", directory("static", Link("up", lambda m: ("value",)))),
)


class RecordedKernel:
    """What the operations told the kernel to drop."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []
        self.inodes: list[int] = []

    def forget_entry(self, parent_ino: int, name: str) -> None:
        self.entries.append((parent_ino, name))

    def forget_attributes(self, ino: int) -> None:
        self.inodes.append(ino)


@pytest.fixture
def ops() -> SysfsOperations:
    refusals: list[str] = []
    operations = SysfsOperations(Tree(ROOT, Model()),
                                 on_refusal=lambda path, data, exc: refusals.append(path),
                                 kernel=RecordedKernel())
    operations.refusals = refusals  # type: ignore[attr-defined]
    return operations


def _kernel(ops: SysfsOperations) -> RecordedKernel:
    return ops._kernel  # type: ignore[return-value]


async def _ino(ops: SysfsOperations, *names: str) -> int:
    ino = pyfuse3.ROOT_INODE
    for name in names:
        ino = (await ops.lookup(ino, name.encode())).st_ino
    return ino


async def _echo(ops: SysfsOperations, name: str, text: str) -> None:
    info = await ops.open(await _ino(ops, name), os.O_WRONLY | os.O_TRUNC, None)
    try:
        await ops.write(info.fh, 0, text.encode())
    finally:
        await ops.release(info.fh)


async def _cat(ops: SysfsOperations, ino: int) -> bytes:
    info = await ops.open(ino, os.O_RDONLY, None)
    try:
        return await ops.read(info.fh, 0, 4096)
    finally:
        await ops.release(info.fh)


def test_every_pyfuse3_handler_we_implement_is_guarded(ops: SysfsOperations) -> None:
    implemented = [name for name, value in vars(pyfuse3.Operations).items()
                   if callable(value) and name in vars(SysfsOperations)]
    assert "write" in implemented and "forget" in implemented
    for name in implemented:
        assert getattr(getattr(ops, name), "__wrapped__", None) is not None, name
    # Capability flags are read by pyfuse3's init: wrapping one would turn it on (a
    # writeback cache would make the kernel keep its own file sizes).
    assert ops.enable_writeback_cache is False and ops.supports_dot_lookup is False


async def test_a_crashing_show_answers_eio_logs_and_the_next_request_works(
        ops: SysfsOperations, caplog: pytest.LogCaptureFixture) -> None:
    crash = await _ino(ops, "crash")
    with caplog.at_level(logging.ERROR, logger="apfs"), \
            pytest.raises(pyfuse3.FUSEError) as refused:
        await _cat(ops, crash)
    assert refused.value.errno == errno.EIO
    assert "internal error in read" in caplog.text and "RuntimeError" in caplog.text
    assert await _cat(ops, await _ino(ops, "value")) == b"1\n"


async def test_a_refused_store_answers_its_errno_and_reports_once(ops: SysfsOperations) -> None:
    value = await _ino(ops, "value")
    info = await ops.open(value, os.O_WRONLY | os.O_TRUNC, None)
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.write(info.fh, 0, b"x\n")
    assert refused.value.errno == errno.EINVAL
    assert ops.refusals == ["value"]  # type: ignore[attr-defined]
    assert await ops.write(info.fh, 0, b"7\n") == 2
    assert await _cat(ops, value) == b"7\n"


async def test_stable_entries_are_cached_and_families_are_not(ops: SysfsOperations) -> None:
    ops.tree.root.obj.items["a"] = Model()
    assert (await ops.lookup(pyfuse3.ROOT_INODE, b"value")).entry_timeout == STABLE_TIMEOUT
    assert (await ops.lookup(pyfuse3.ROOT_INODE, b"a")).entry_timeout == 0


async def test_a_vanished_directory_and_its_files_are_gone(ops: SysfsOperations) -> None:
    await _echo(ops, "create", "a")
    item_value = await _ino(ops, "a", "value")
    info = await ops.open(item_value, os.O_RDONLY, None)
    await _echo(ops, "remove", "a")
    with pytest.raises(pyfuse3.FUSEError) as stale:
        await ops.read(info.fh, 0, 4096)
    assert stale.value.errno == errno.ENODEV  # kernfs_get_active on a removed node
    # fstat() of the open file still works (the open pins the inode); once closed, it's gone.
    assert (await ops.getattr(item_value)).st_ino == item_value
    await ops.release(info.fh)
    with pytest.raises(pyfuse3.FUSEError) as gone:
        await ops.getattr(item_value)
    assert gone.value.errno == errno.ENOENT


async def test_an_open_file_stays_dead_when_a_file_of_its_name_returns(
        ops: SysfsOperations) -> None:
    info = await ops.open(await _ino(ops, "odd"), os.O_RDONLY, None)
    assert await ops.read(info.fh, 0, 4096) == b"yes\n"
    await _echo(ops, "value", "2")  # "odd" vanishes...
    await _echo(ops, "value", "3")  # ...and a new "odd" appears
    with pytest.raises(pyfuse3.FUSEError) as stale:
        await ops.read(info.fh, 0, 4096)
    assert stale.value.errno == errno.ENODEV
    assert await _cat(ops, await _ino(ops, "odd")) == b"yes\n"  # a fresh open works


async def test_records_of_removed_directories_are_dropped_and_the_kernel_told(
        ops: SysfsOperations) -> None:
    await _echo(ops, "create", "warm-up")
    await _ino(ops, "warm-up", "root")
    baseline = ops.tree.record_count
    for i in range(200):
        await _echo(ops, "create", f"d{i}")
        await _ino(ops, f"d{i}", "root")  # the directory and its symlink get records
        await _echo(ops, "remove", f"d{i}")
    assert ops.tree.record_count <= baseline + 2
    assert (pyfuse3.ROOT_INODE, "d199") in _kernel(ops).entries
    assert not any(name == "root" for _, name in _kernel(ops).entries)  # sub-trees go along


async def test_a_changed_link_count_invalidates_the_directory_attributes(
        ops: SysfsOperations) -> None:
    before = (await ops.getattr(pyfuse3.ROOT_INODE)).st_nlink
    await _echo(ops, "create", "a")
    assert _kernel(ops).inodes == [pyfuse3.ROOT_INODE]
    assert (await ops.getattr(pyfuse3.ROOT_INODE)).st_nlink == before + 1
    await _echo(ops, "value", "5")
    assert _kernel(ops).inodes == [pyfuse3.ROOT_INODE]  # nothing moved this time


async def test_a_recreated_directory_gets_a_new_inode(ops: SysfsOperations) -> None:
    await _echo(ops, "create", "a")
    first = await _ino(ops, "a")
    await _echo(ops, "create", "a")
    assert await _ino(ops, "a") != first


async def test_namespace_changes_are_refused_like_sysfs(ops: SysfsOperations) -> None:
    root = pyfuse3.ROOT_INODE
    with pytest.raises(pyfuse3.FUSEError) as create:
        await ops.create(root, b"new", 0o644, os.O_CREAT | os.O_WRONLY, None)
    assert create.value.errno == errno.EACCES
    for name in ("mkdir", "rmdir", "unlink", "rename", "link", "symlink", "mknod"):
        with pytest.raises(pyfuse3.FUSEError) as refused:
            await getattr(ops, name)(root, b"x")
        assert refused.value.errno == errno.EPERM, name


async def test_links_are_relative_to_their_directory(ops: SysfsOperations) -> None:
    assert await ops.readlink(await _ino(ops, "static", "up"), None) == b"../value"


@pytest.mark.parametrize(("link_dir", "target", "text"), [
    (("sys", "bus", "ap", "devices"), ("sys", "devices", "ap", "card05"),
     "../../../devices/ap/card05"),
    (("sys", "devices", "ap", "card05", "05.0004"), ("sys", "bus", "ap", "drivers", "cex4queue"),
     "../../../../bus/ap/drivers/cex4queue"),
    (("m", "uuid"), ("m", "types", "t"), "../types/t"),
    (("a",), ("a", "b"), "b"),
    # A link to an ancestor of its directory, as the kernel writes it.
    (("d", "virtio0", "tpm", "tpm0"), ("d", "virtio0"), "../../../virtio0"),
])
def test_relative_link_goes_up_to_the_common_ancestor(link_dir, target, text) -> None:
    assert relative_link(link_dir, target) == text


# -- device-like files: blocking calls run off the request loop ------------------------------


class SlowDevice:
    """A device whose commands wait for the test to let them finish (a TPM computing)."""

    busy = False
    held_elsewhere = False
    """Another thread (a socket client) holds the device: a caller that may not wait is
    refused, as the TPM's lock refuses it."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.order: list[bytes] = []
        self.opened: list[bool] = []

    def open(self, nonblocking: bool) -> SlowFile:
        self.opened.append(nonblocking)
        return SlowFile(self)


class SlowFile:
    def __init__(self, device: SlowDevice) -> None:
        self.device = device
        self.response = b""

    def read(self, offset: int, size: int) -> bytes:
        return self.response[:size]

    def write(self, offset: int, data: bytes) -> int:
        if self.quick(data):
            if self.device.held_elsewhere and waiting_forbidden():
                raise WouldWait("dev/slow: held by another client")
            self.device.order.append(data)
            return len(data)
        if data == b"crash":
            raise RuntimeError("a bug in a device")
        if data == b"refuse":
            raise DeviceError(errno.EBUSY, "dev/slow: refused")
        self.device.order.append(data)
        assert self.device.go.wait(10)
        self.response = data.upper()
        return len(data)

    def quick(self, data: bytes) -> bool:
        return data.startswith(b"quick")

    def release(self) -> None:
        return None


class DeviceModel(Model):
    def __init__(self) -> None:
        super().__init__()
        self.slow = SlowDevice()


DEVICE_ROOT = directory(
    "",
    rw("value", lambda m: f"{m.value}\n", _store_value),
    Device("slow", lambda m, nonblocking: m.slow.open(nonblocking), lambda m: m.slow),
)


@pytest.fixture
def device_ops() -> SysfsOperations:
    refusals: list[str] = []
    operations = SysfsOperations(Tree(DEVICE_ROOT, DeviceModel()),
                                 on_refusal=lambda path, data, exc: refusals.append(path),
                                 kernel=RecordedKernel())
    operations.refusals = refusals  # type: ignore[attr-defined]
    return operations


async def test_a_blocked_device_write_leaves_the_attributes_answering(
        device_ops: SysfsOperations) -> None:
    ops = device_ops
    device: SlowDevice = ops.tree.root.obj.slow
    handed_over: list[int] = []
    ops.hand_over = lambda: handed_over.append(1)
    info = await ops.open(await _ino(ops, "slow"), os.O_RDWR | os.O_NONBLOCK, None)
    assert device.opened == [True] and info.nonseekable is False and info.direct_io
    written: list[int] = []

    async def write() -> None:
        written.append(await ops.write(info.fh, 0, b"cmd"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        while not device.order:
            await trio.sleep(0.001)
        # The command is running in a thread: the loop still serves sysfs.
        assert await _cat(ops, await _ino(ops, "value")) == b"1\n"
        assert written == [] and handed_over == [1]
        device.go.set()
    assert written == [3]
    assert await ops.read(info.fh, 0, 4096) == b"CMD"
    await ops.release(info.fh)


async def test_device_writes_run_one_at_a_time_in_arrival_order(
        device_ops: SysfsOperations) -> None:
    ops = device_ops
    device: SlowDevice = ops.tree.root.obj.slow
    ino = await _ino(ops, "slow")
    files = [(await ops.open(ino, os.O_RDWR, None)).fh for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for n, fh in enumerate(files):
            nursery.start_soon(ops.write, fh, 0, b"%d" % n)
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.05)
        assert device.order == [b"0"]  # the others wait their turn, not in threads
        device.go.set()
    assert device.order == [b"0", b"1", b"2"]


async def test_a_quick_write_runs_on_the_loop_when_idle_and_waits_its_turn_otherwise(
        device_ops: SysfsOperations) -> None:
    ops = device_ops
    device: SlowDevice = ops.tree.root.obj.slow
    handed_over: list[int] = []
    ops.hand_over = lambda: handed_over.append(1)
    ino = await _ino(ops, "slow")
    first, second = [(await ops.open(ino, os.O_RDWR, None)).fh for _ in range(2)]
    assert await ops.write(first, 0, b"quick 1") == 7
    assert device.order == [b"quick 1"] and handed_over == []  # no thread, no hand-over
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.write, first, 0, b"slow")
        while len(device.order) < 2:
            await trio.sleep(0.001)
        nursery.start_soon(ops.write, second, 0, b"quick 2")
        await trio.testing.wait_all_tasks_blocked()
        assert device.order == [b"quick 1", b"slow"]  # it does not overtake the slow one
        device.go.set()
    assert device.order == [b"quick 1", b"slow", b"quick 2"] and handed_over == [1, 1]


async def test_a_quick_write_finding_the_device_held_elsewhere_goes_to_the_queue(
        device_ops: SysfsOperations) -> None:
    ops = device_ops
    device: SlowDevice = ops.tree.root.obj.slow
    device.held_elsewhere = True
    handed_over: list[int] = []
    ops.hand_over = lambda: handed_over.append(1)
    fh = (await ops.open(await _ino(ops, "slow"), os.O_RDWR, None)).fh
    assert await ops.write(fh, 0, b"quick 1") == 7
    assert device.order == [b"quick 1"] and handed_over == [1]  # done in a worker thread


async def test_device_refusals_and_bugs_answer_an_errno(device_ops: SysfsOperations,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    ops = device_ops
    info = await ops.open(await _ino(ops, "slow"), os.O_RDWR, None)
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.write(info.fh, 0, b"refuse")
    assert refused.value.errno == errno.EBUSY
    assert ops.refusals == ["slow"]  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="apfs"), pytest.raises(pyfuse3.FUSEError) as bug:
        await ops.write(info.fh, 0, b"crash")
    assert bug.value.errno == errno.EIO
    assert "a bug in a device" in caplog.text
    await ops.release(info.fh)
