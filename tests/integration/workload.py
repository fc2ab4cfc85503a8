"""A random administrator: plausible writes, accepted and refused, for the default host.

:func:`random_write` draws one ``(relative path, bytes)`` write from a ``random.Random``,
looking at an in-process model of the mount only to aim at mdevs that exist, so most writes
are meaningful (bind/unbind, create/assign/unassign/remove, online/config, bus settings,
counters, ``apfs/reset``) and many are refused (bound twice, APQN taken, bad numbers).
"""

from __future__ import annotations

import random

from apfs.host import Host

MATRIX = "sys/devices/ap_matrix/matrix"
TYPE_DIR = f"{MATRIX}/mdev_supported_types/ap_matrix-passthrough"
DRIVERS = "sys/bus/ap/drivers"
UUIDS = ["6f5a8c8e-3c1b-4d7a-9d0e-1a2b3c4d5e6f", "0b3e2e7c-8f4d-4a55-b7a3-9c8d7e6f5a4b",
         "a1b2c3d4-0000-4000-8000-00000000000f"]
QUEUES = [f"{a:02x}.{d:04x}" for a in (5, 6) for d in (0x04, 0x47, 0xAB, 0xFF)]
CARDS = ["card05", "card06"]
IDS = ["5", "6", "4", "47", "ab", "ff", "7", "100"]
SETTINGS = {
    "ap_domain": ["4", "0x47", "5", "171"],
    "config_time": ["30", "5", "120", "200"],
    "poll_thread": ["0", "1", "maybe"],
    "poll_timeout": ["250000", "1000", "999999999999"],
    "scans": ["1"],
    "drivers_autoprobe": ["0", "1"],
    "drivers_probe": QUEUES + CARDS,
}


def random_write(rng: random.Random, model: Host) -> tuple[str, bytes]:
    """One write an administrator could type, as ``echo`` would send it."""
    kind = rng.random()
    if kind < 0.35:
        driver = rng.choice(["cex4queue", "vfio_ap_matrix", "vfio_ap_matrix", "cex4card"])
        device = rng.choice(CARDS if driver == "cex4card" else QUEUES)
        path, value = f"{DRIVERS}/{driver}/{rng.choice(['bind', 'unbind'])}", device
    elif kind < 0.45 or not model.matrix.mdevs:
        path, value = f"{TYPE_DIR}/create", rng.choice(UUIDS)
    elif kind < 0.7:
        uuid = rng.choice(list(model.matrix.mdevs))
        what = rng.choice(["adapter", "domain", "domain", "control_domain"])
        verb = rng.choice(["assign", "assign", "unassign"])
        path, value = f"{MATRIX}/{uuid}/{verb}_{what}", rng.choice(IDS)
    elif kind < 0.75:
        path, value = f"{MATRIX}/{rng.choice(list(model.matrix.mdevs))}/remove", "1"
    elif kind < 0.85:
        device = rng.choice(QUEUES + CARDS)
        card = device if device.startswith("card") else f"card{device[:2]}"
        where = f"sys/devices/ap/{card}" + ("" if device == card else f"/{device}")
        attr = rng.choice(["online", "online", "config" if device == card else "reset",
                           "request_count"])
        path, value = f"{where}/{attr}", rng.choice(["0", "1", "1"])
    elif kind < 0.99:
        name = rng.choice(list(SETTINGS))
        path, value = f"sys/bus/ap/{name}", rng.choice(SETTINGS[name])
    else:
        path, value = "apfs/reset", "1"
    return path, f"{value}\n".encode()
