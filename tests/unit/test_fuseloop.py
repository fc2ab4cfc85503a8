"""The request-loop installer against stand-in pyfuse3 modules: with and without the hook.

The wait it installs is exercised on a pipe, the way pyfuse3's loop would await it on
/dev/fuse: readable at once (the spin finds it), readable later (parked in trio), closed;
with several workers, one waits on the descriptor and a hand-over wakes a standby one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from types import ModuleType

import pytest
import trio
import trio.testing

from apfs.fuseloop import HOOK, LOOP_ARGS, MAX_WORKERS, install_lean_wait


async def _stock_wait() -> bool:
    return True


def _pyfuse3(with_hook: bool) -> ModuleType:
    module = ModuleType("pyfuse3")
    module.__version__ = "9.9.9"  # type: ignore[attr-defined]
    if with_hook:
        setattr(module, HOOK, _stock_wait)
    return module


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def test_without_the_hook_the_stock_loop_runs_and_a_warning_says_so(
        pipe: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    module = _pyfuse3(with_hook=False)
    with caplog.at_level(logging.INFO, logger="apfs"):
        loop_args, hand_over = install_lean_wait(30, fuse=module, fd=pipe[0])
    assert loop_args == LOOP_ARGS == {"min_tasks": 1, "max_tasks": MAX_WORKERS}
    hand_over()  # the stock loop's own workers take over: nothing to do
    assert not hasattr(module, HOOK)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"apfs: cannot tune pyfuse3 9.9.9's request loop (it has no {HOOK}()); "
                    "using its stock loop, which costs more per request")]


def test_with_the_hook_the_lean_wait_replaces_it(
        pipe: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this machine has one CPU")
    module = _pyfuse3(with_hook=True)
    with caplog.at_level(logging.INFO, logger="apfs"):
        loop_args, _ = install_lean_wait(30, fuse=module, fd=pipe[0])
    assert loop_args == LOOP_ARGS
    assert getattr(module, HOOK) is not _stock_wait
    assert [r.getMessage() for r in caplog.records] == ["apfs: busy-poll 30 µs after each request"]


def test_on_one_cpu_the_lean_wait_does_not_spin(pipe: tuple[int, int],
                                                caplog: pytest.LogCaptureFixture) -> None:
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        with caplog.at_level(logging.INFO, logger="apfs"):
            install_lean_wait(30, fuse=_pyfuse3(with_hook=True), fd=pipe[0])
    finally:
        os.sched_setaffinity(0, allowed)
    assert [r.getMessage() for r in caplog.records] == [
        "apfs: busy-poll off: one CPU available, spinning would delay the client"]


@pytest.mark.parametrize("spin_us", [30, 0])
async def test_the_lean_wait_returns_when_the_descriptor_is_readable(
        pipe: tuple[int, int], spin_us: int) -> None:
    module = _pyfuse3(with_hook=True)
    install_lean_wait(spin_us, fuse=module, fd=pipe[0])
    wait = getattr(module, HOOK)
    os.write(pipe[1], b"x")
    assert await wait() is True  # already readable: found by the spin, or at once by epoll
    os.read(pipe[0], 1)

    async def send_later() -> None:
        await trio.sleep(0.05)  # longer than any spin: the wait has parked in epoll
        os.write(pipe[1], b"x")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_later)
        with trio.fail_after(5):
            assert await wait() is True


async def test_the_lean_wait_ends_the_loop_when_the_descriptor_is_closed(
        pipe: tuple[int, int]) -> None:
    module = _pyfuse3(with_hook=True)
    install_lean_wait(0, fuse=module, fd=pipe[0])
    wait = getattr(module, HOOK)

    async def close_later() -> None:
        await trio.sleep(0.05)
        trio.lowlevel.notify_closing(pipe[0])  # what pyfuse3.terminate() does to /dev/fuse

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_later)
        with trio.fail_after(5):
            assert await wait() is False


async def test_one_worker_waits_on_the_descriptor_and_a_hand_over_wakes_a_standby(
        pipe: tuple[int, int]) -> None:
    module = _pyfuse3(with_hook=True)
    _, hand_over = install_lean_wait(0, fuse=module, fd=pipe[0])
    wait = getattr(module, HOOK)
    woken: list[str] = []

    async def worker(name: str) -> None:
        assert await wait() is True
        woken.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(worker, "second")  # stands by: trio allows one waiter per fd
        await trio.testing.wait_all_tasks_blocked()
        os.write(pipe[1], b"x")
        with trio.fail_after(5):
            while not woken:
                await trio.sleep(0.01)
        assert woken == ["first"]
        os.read(pipe[0], 1)
        # "first" now blocks in a handler: the standby takes over the descriptor.
        hand_over()
        await trio.testing.wait_all_tasks_blocked()
        os.write(pipe[1], b"x")
        with trio.fail_after(5):
            while len(woken) < 2:
                await trio.sleep(0.01)
    assert woken == ["first", "second"]
    os.read(pipe[0], 1)

