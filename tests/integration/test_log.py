"""Acceptance 8: ``apfs/log`` is read-only and has one line per refused write.

The line is what an administrator greps for after a failed ``echo``: the file's path, the
value that was written, the errno's name, and why.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
from conftest import Mount
from helpers import LOG, TYPE_DIR, lines, write_once


def test_log_is_read_only_even_for_root(mount: Mount) -> None:
    st = os.stat(mount.root / LOG)
    assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)) == (stat.S_IFREG, 0o444)
    before = mount.log()
    for command in ("echo x > apfs/log", "echo x >> apfs/log", ": > apfs/log"):
        result = mount.bash(command)
        assert result.returncode == 1, command
        assert result.stderr.endswith("apfs/log: Permission denied\n"), result.stderr
    with pytest.raises(PermissionError):
        os.open(mount.root / LOG, os.O_RDWR)
    assert mount.bash("rm apfs/log").stderr.endswith("Operation not permitted\n")
    assert mount.log() == before


def test_log_size_is_its_length_right_after_each_refusal(mount: Mount) -> None:
    """Not a sysfs attribute: a file whose size is what `cat` prints, never a cached value
    (`wc -c` trusts st_size)."""
    assert os.stat(mount.root / LOG).st_size == len(mount.log().encode())
    for _ in range(2):
        mount.bash('echo nonsense > "$SYS/bus/ap/ap_domain"')
        assert os.stat(mount.root / LOG).st_size == len(mount.log().encode())
        counted = mount.bash("wc -c < apfs/log").stdout.strip()
        assert int(counted) == len(mount.log().encode())


# (file, bytes written in one write(), errno)
REFUSED = [
    ("sys/bus/ap/ap_domain", b"nonsense\n", errno.EINVAL),
    ("sys/bus/ap/poll_timeout", b"99999999999999999999\n", errno.ERANGE),
    ("sys/bus/ap/drivers/vfio_ap_matrix/bind", b"09.0004\n", errno.ENODEV),
    ("sys/bus/ap/drivers/cex4queue/unbind", b"a\nb\x85\xff\n", errno.ENODEV),
    ("sys/devices/ap/card05/online", b"2", errno.EINVAL),
    (f"{TYPE_DIR}/create", b"not-a-uuid\n", errno.EINVAL),
    ("apfs/guests/start", b"junk\n", errno.EINVAL),
    ("apfs/guests/stop", b"/sys/bus/mdev/devices/0b3e2e7c-8f4d-4a55-b7a3-9c8d7e6f5a4b\n",
     errno.ENOENT),
    ("sys/bus/ap/config_time", b"7" * 300, errno.EINVAL),
]


def test_every_refused_write_adds_exactly_one_line(mount: Mount) -> None:
    for relpath, data, code in REFUSED:
        before = lines(mount.log())
        with pytest.raises(OSError) as refused:
            write_once(mount.root / relpath, data)
        assert refused.value.errno == code, (relpath, data)
        new = lines(mount.log())[len(before):]
        assert len(new) == 1, (relpath, data, new)
        line = new[0]
        assert f"{relpath}: write " in line, line
        printable = data.split(b"\n")[0][:40].decode("latin-1")
        assert printable in line, (printable, line)
        assert f" {errno.errorcode[code]} " in line, line
        assert os.strerror(code) in line, line
    assert lines(mount.log())[0].endswith(f"apfs: mounted on {mount.root.resolve()}")


def test_refusals_typed_in_bash_are_logged_in_order(mount: Mount) -> None:
    before = lines(mount.log())
    result = mount.bash("""cd "$SYS/bus/ap"
        echo 3 > config_time
        echo 05.0004 > drivers/vfio_ap_matrix/bind
        echo 9 > config_time
        echo 5 > config_time""")
    assert result.stderr.count("write error") == 2, result.stderr
    new = lines(mount.log())[len(before):]
    assert len(new) == 2, new
    assert "sys/bus/ap/config_time: write '3\\n' refused with EINVAL" in new[0]
    assert "3 is outside 5..120" in new[0]
    assert "sys/bus/ap/drivers/vfio_ap_matrix/bind: write '05.0004\\n' refused with ENODEV" \
        in new[1]
    assert "already bound to cex4queue" in new[1]


def test_accepted_writes_add_no_line(mount: Mount) -> None:
    before = mount.log()
    result = mount.bash("""set -e
        cd "$SYS/bus/ap/drivers"
        echo 05.0004 > cex4queue/unbind
        echo 05.0004 > vfio_ap_matrix/bind
        echo 60 > ../config_time""")
    assert (result.returncode, result.stderr) == (0, "")
    assert mount.log() == before


def test_a_value_with_embedded_newlines_is_still_one_line(mount: Mount) -> None:
    before = lines(mount.log())
    with pytest.raises(OSError) as refused:
        write_once(mount.root / "apfs/guests/start", b"/sys/no\nsuch")
    assert refused.value.errno == errno.ENOENT
    new = lines(mount.log())[len(before):]
    assert len(new) == 1, new
