"""The daemon's memory stays flat while mediated devices come and go (scripts/bench-memory
runs the full 10,000-cycle version; this is the same workload, scaled down)."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_two_thousand_create_remove_cycles_do_not_grow_the_daemon() -> None:
    # 1.15 kB per cycle (the growth once reported) would be ~2 MB over 1,800 cycles.
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench-memory"), "--cycles", "2000",
         "--warmup", "200", "--max-growth-kb", "512"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
