"""chzcrypt-style administration in both flavors: each write reads back, out of range refused.

chzcrypt writes values without a newline and reads each file back, expecting exactly what it
wrote; the same through the real chzcrypt when ``CHZCRYPT_REAL`` names one (s390-tools built
on this machine: ``make -C libutil && make -C zconf/zcrypt chzcrypt``), with
``SYSFS_ROOT=MOUNT/sys`` as it honours.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable

import pytest
from conftest import Mount
from helpers import write_error

from vdev.ap.host import DEFAULT_HOST_TOML

HOSTS = {
    "ap_matrix": DEFAULT_HOST_TOML,
    "vfio_ap": DEFAULT_HOST_TOML.replace("[host]", '[host]\nflavor = "vfio_ap"'),
}
CARD = "sys/devices/ap/card05"
QUEUE = "sys/devices/ap/card06/06.0047"
BUS = "sys/bus/ap"

# (file, value written, value read back)
READ_BACK = [
    (f"{CARD}/online", "0", "0"), (f"{QUEUE}/online", "0", "0"), (f"{QUEUE}/online", "1", "1"),
    (f"{CARD}/online", "1", "1"), (f"{CARD}/config", "0", "0"), (f"{CARD}/online", "0", "0"),
    (f"{CARD}/config", "1", "1"), (f"{CARD}/online", "1", "1"),
    (f"{BUS}/poll_thread", "1", "1"), (f"{BUS}/poll_thread", "0", "0"),
    (f"{BUS}/config_time", "5", "5"), (f"{BUS}/config_time", "120", "120"),
    (f"{BUS}/poll_timeout", "0x10", "16"), (f"{BUS}/poll_timeout", "120000000000",
                                             "120000000000"),
    (f"{BUS}/ap_domain", "71", "71"), (f"{BUS}/ap_domain", "0xab", "171"),
]
REFUSED = [
    (f"{CARD}/online", "2", errno.EINVAL), (f"{QUEUE}/online", "-1", errno.EINVAL),
    (f"{CARD}/config", "2", errno.EINVAL), (f"{BUS}/config_time", "4", errno.EINVAL),
    (f"{BUS}/config_time", "121", errno.EINVAL), (f"{BUS}/poll_thread", "2", errno.EINVAL),
    (f"{BUS}/poll_timeout", "120000000001", errno.EINVAL),
    (f"{BUS}/ap_domain", "256", errno.EINVAL),
]


@pytest.mark.parametrize("flavor", HOSTS)
def test_writes_read_back_and_out_of_range_is_refused(
        mount_factory: Callable[..., Mount], flavor: str) -> None:
    mnt = mount_factory(HOSTS[flavor])
    script = "\n".join(f'printf %s {value} > "$MNT/{path}" && cat "$MNT/{path}"'
                       for path, value, _ in READ_BACK)
    result = mnt.bash(script)
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.splitlines() == [back for _, _, back in READ_BACK]
    for path, value, code in REFUSED:
        before = mnt.read(path)
        refused = mnt.bash(f'printf %s {value} > "$MNT/{path}"')
        assert refused.stderr.endswith(f"{write_error(code)}\n"), (path, value, refused)
        assert mnt.read(path) == before, path


@pytest.mark.skipif(not os.environ.get("CHZCRYPT_REAL"),
                    reason="CHZCRYPT_REAL does not name a real chzcrypt")
@pytest.mark.parametrize("flavor", HOSTS)
def test_real_chzcrypt(mount_factory: Callable[..., Mount], flavor: str) -> None:
    mnt = mount_factory(HOSTS[flavor])
    env = {**os.environ, "SYSFS_ROOT": str(mnt.sys)}

    def chzcrypt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([os.environ["CHZCRYPT_REAL"], *args], env=env, text=True,
                              capture_output=True, timeout=60)

    for args, path, expected in [
        (("-d", "05"), f"{CARD}/online", "0\n"), (("-e", "05"), f"{CARD}/online", "1\n"),
        (("-d", "06.0047"), f"{QUEUE}/online", "0\n"),
        (("--config-off", "05"), f"{CARD}/config", "0\n"),
        (("--config-on", "05"), f"{CARD}/config", "1\n"),
        (("-p",), f"{BUS}/poll_thread", "1\n"), (("-n",), f"{BUS}/poll_thread", "0\n"),
        (("-c", "60"), f"{BUS}/config_time", "60\n"),
        (("-t", "500000"), f"{BUS}/poll_timeout", "500000\n"),
        (("-q", "0x47"), f"{BUS}/ap_domain", "71\n"),
    ]:
        done = chzcrypt(*args)
        assert done.returncode == 0, (args, done)
        assert mnt.read(path) == expected, args
    assert chzcrypt("-c", "4").returncode != 0
    assert mnt.read(f"{BUS}/config_time") == "60\n"
