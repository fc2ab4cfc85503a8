"""apfs.background: the calling thread alone goes to background priority, once."""

from __future__ import annotations

import os
import threading

from apfs.background import BACKGROUND_NICE, lower_this_thread


def nice_of(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def test_the_calling_thread_alone_is_lowered_and_stays_so() -> None:
    main_before = nice_of(threading.get_native_id())
    seen: list[int] = []

    def device_work() -> None:
        me = threading.get_native_id()
        lower_this_thread()
        seen.append(nice_of(me))
        lower_this_thread()  # once: nothing more happens
        seen.append(nice_of(me))

    worker = threading.Thread(target=device_work)
    worker.start()
    worker.join(10)
    assert seen == [max(main_before, BACKGROUND_NICE)] * 2
    assert nice_of(threading.get_native_id()) == main_before  # the loop's thread is untouched
