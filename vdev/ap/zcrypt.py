"""Host-side crypto requests: what ``/dev/z90crypt`` users (libica, openssl-ibmca) cause.

Owns: submitting requests to AP queues through the host's zcrypt drivers, so that the
``request_count`` of queues and cards (lszcrypt's REQUESTS) and their ``pendingq_count``
(``lszcrypt -V``'s PENDING) move as they do on a busy host, and resets are observable.

Must not know: FUSE, files, which path exposes it (apfs shows it as ``apfs/zcrypt/request``).

Theory of operation: ``ap_queue_message()`` counts a request on its queue and card when it is
queued (``total_request_count``); it then waits in ``requestq``, moves to ``pendingq`` once
sent to the adapter and leaves it with the reply.  Requests here either complete at once (the
default) or stay pending until the queue is reset (``echo 1 > reset``), goes offline, or is
taken from the host, which is how a real queue drops them.  Requests reach only queues a
zcrypt host driver owns, online, on a usable card: zcrypt answers ENODEV otherwise.  Guests
are not a source: under AP interpretation (APIE) a guest's NQAP/DQAP go to the adapter without
the host's counters seeing them.
"""

from __future__ import annotations

import errno

from vdev.ap.bus import ApBus, Attr, Queue
from vdev.errors import DeviceError

MAX_REQUESTS_PER_WRITE = 1_000_000


class Zcrypt:
    """``echo "APQN [COUNT] [pending]" > request``: COUNT requests (default 1) to one queue."""

    ATTRS = (Attr("request", 0o200),)

    def __init__(self, bus: ApBus) -> None:
        self.bus = bus

    def store_request(self, text: str) -> None:
        words = text.split()
        if not 1 <= len(words) <= 3 or (len(words) == 3 and words[2] != "pending"):
            raise DeviceError(errno.EINVAL, f"request: {text.strip()!r} is not "
                              f"'APQN [COUNT] [pending]' (e.g. '05.0004 10')")
        count = _count(words[1]) if len(words) > 1 else 1
        queue = self._queue(words[0])
        queue.request_count += count
        queue.card.request_count += count
        if len(words) == 3:
            queue.pendingq_count += count

    def _queue(self, name: str) -> Queue:
        device = self.bus.devices.get(name.lower())
        if not isinstance(device, Queue):
            raise DeviceError(errno.ENODEV, f"request: no AP queue named {name!r}")
        if not device.has_host_attrs:
            owner = "no driver" if device.driver is None else device.driver.name
            raise DeviceError(errno.ENODEV, f"request: {device.name} is bound to {owner}, "
                              f"not to a zcrypt host driver")
        if not (device.card.usable and device.online and device.card.online):
            raise DeviceError(errno.ENODEV, f"request: {device.name} is offline")
        return device


def _count(word: str) -> int:
    if not word.isdigit() or not 1 <= int(word) <= MAX_REQUESTS_PER_WRITE:
        raise DeviceError(errno.EINVAL, f"request: count {word!r} is not a number of "
                          f"requests between 1 and {MAX_REQUESTS_PER_WRITE}")
    return int(word)
