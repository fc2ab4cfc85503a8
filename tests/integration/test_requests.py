"""Host-side crypto requests make lszcrypt's REQUESTS and PENDING columns move, and resets
show: ``apfs/zcrypt/request`` plays the part of /dev/z90crypt users."""

from __future__ import annotations

from conftest import Mount

QUEUE = "$SYS/devices/ap/card06/06.0047"
CARD = "$SYS/devices/ap/card06"


def test_requests_count_until_reset_like_a_busy_host(mount: Mount) -> None:
    def counters() -> str:
        return mount.bash(f"cat {QUEUE}/request_count {CARD}/request_count "
                          f"{QUEUE}/pendingq_count {CARD}/pendingq_count").stdout.split()

    assert counters() == ["0", "0", "0", "0"]
    sent = mount.bash("echo 06.0047 25 > $MNT/apfs/zcrypt/request && "
                      "echo 06.0004 > $MNT/apfs/zcrypt/request && "
                      "echo '06.0047 4 pending' > $MNT/apfs/zcrypt/request")
    assert sent.returncode == 0, sent.stderr
    assert counters() == ["29", "30", "4", "4"]
    assert mount.bash(f"echo 1 > {QUEUE}/reset").returncode == 0  # drops what is in flight
    assert counters() == ["29", "30", "0", "0"]
    assert mount.bash(f"echo 0 > {CARD}/request_count").returncode == 0  # chzcrypt's reset
    assert counters() == ["0", "0", "0", "0"]


def test_a_request_to_a_passthrough_queue_is_refused_and_logged(mount: Mount) -> None:
    moved = mount.bash("echo 06.0047 > $SYS/bus/ap/drivers/cex4queue/unbind && "
                       "echo 06.0047 > $SYS/bus/ap/drivers/vfio_ap_matrix/bind")
    assert moved.returncode == 0
    refused = mount.bash("echo 06.0047 > $MNT/apfs/zcrypt/request")
    assert refused.returncode == 1
    assert "write error: No such device" in refused.stderr
    assert "06.0047 is bound to vfio_ap_matrix, not to a zcrypt host driver" in mount.log()
