"""The upstream vfio_ap flavor: masks, re-probes, mdev rules, ap_config and guest_matrix."""

from __future__ import annotations

import errno

import pytest

from tests.unit.ap_shell import VFIO_MATRIX, VFIO_TYPE_DIR, VfioShell
from vdev.ap import Queue, bitmap
from vdev.ap.host import DEFAULT_HOST_TOML, HostConfig
from vdev.errors import DeviceError

AP = "/sys/bus/ap"
UUID1 = "6f5a8c8e-3c1b-4d7a-9d0e-1a2b3c4d5e6f"
UUID2 = "0b3e2e7c-8f4d-4a55-b7a3-9c8d7e6f5a4b"
M1 = f"{VFIO_MATRIX}/{UUID1}"
M2 = f"{VFIO_MATRIX}/{UUID2}"
ZEROS = "0" * 64


def refused(errno_value: int, sh: VfioShell, value: str, path: str) -> DeviceError:
    with pytest.raises(DeviceError) as info:
        sh.echo(value, path)
    assert info.value.errno == errno_value, info.value
    return info.value


def bound(sh: VfioShell, driver: str) -> list[str]:
    return sorted(n for n in sh.bus.drivers[driver].devices if "." in n)


@pytest.fixture
def sh() -> VfioShell:
    """The seed's host on an upstream kernel, after vfio-ap.rst's reservation step."""
    shell = VfioShell()
    shell.echo("-0x5", f"{AP}/apmask")
    shell.echo("-4,-0xab", f"{AP}/aqmask")
    shell.echo(UUID1, f"{VFIO_TYPE_DIR}/create")
    shell.echo(UUID2, f"{VFIO_TYPE_DIR}/create")
    return shell


# --- mask syntaxes (hex2bitmap / modify_bitmap of ap_bus.c) -------------------------------


@pytest.mark.parametrize(("text", "ids"), [
    ("0x41", [1, 7]), ("x41", [1, 7]), ("41\n", [1, 7]), ("\n", []),
    ("0x" + "f" * 64, list(range(256))), ("8", [0]), ("0x0001", [15]),
])
def test_absolute_masks(text: str, ids: list[int]) -> None:
    assert list(bitmap.ids(bitmap.parse_mask(text, 0) or 0)) == ids
    assert bitmap.parse_mask(text, 0) is not None


@pytest.mark.parametrize("text", ["0x41 ", "0x41\n\n", "g", "0x" + "f" * 65, " 0x1", "0xx41"])
def test_malformed_absolute_masks(text: str) -> None:
    assert bitmap.parse_mask(text, bitmap.ALL) is None


@pytest.mark.parametrize(("text", "ids"), [
    ("-0x5", [0, 1, 2, 3, 4, 6, 7]), ("-4,-0xab", [0, 1, 2, 3, 5, 6, 7]),
    ("-1-3", [0, 4, 5, 6, 7]), ("-0-7,+2", [2]), ("-010", [0, 1, 2, 3, 4, 5, 6, 7]),
    ("-0-7,,\n,+1\n", [1]),
])
def test_relative_masks(text: str, ids: list[int]) -> None:
    mask = bitmap.parse_mask(text, 0xFF)
    assert mask is not None
    assert list(bitmap.ids(mask)) == ids


@pytest.mark.parametrize("text", ["-256", "+5x", "+ 5", "-3-1", "-1-", "+", "-0x", "+1;-2",
                                  "-1 ", "+1-256"])
def test_malformed_relative_masks(text: str) -> None:
    assert bitmap.parse_mask(text, bitmap.ALL) is None


# --- apmask / aqmask and the re-probe ------------------------------------------------------


def test_masks_start_all_ones_and_reserve_queues_for_vfio_ap() -> None:
    shell = VfioShell()
    assert shell.cat(f"{AP}/apmask") == "0x" + "f" * 64 + "\n"
    assert bound(shell, "vfio_ap") == []
    shell.echo("-0x5", f"{AP}/apmask")
    assert shell.cat(f"{AP}/apmask") == "0xfb" + "f" * 62 + "\n"
    assert bound(shell, "vfio_ap") == ["05.0004", "05.0047", "05.00ab", "05.00ff"]
    shell.echo("-4,-0xab", f"{AP}/aqmask")
    assert bound(shell, "vfio_ap") == ["05.0004", "05.0047", "05.00ab", "05.00ff", "06.0004",
                                       "06.00ab"]
    assert bound(shell, "cex4queue") == ["06.0047", "06.00ff"]
    queue = shell.bus.devices["06.0004"]
    assert [a.name for a in Queue.ATTRS if a.present(queue)][-1] == "status"
    assert shell.cat("/sys/devices/ap/card06/06.0004/request_count") == "-\n"
    assert shell.cat("/sys/devices/ap/card06/06.0004/status") == "unassigned\n"
    shell.echo("0x" + "f" * 64, f"{AP}/apmask")  # absolute: adapter 5 back to the host,
    assert bound(shell, "vfio_ap") == ["05.0004", "05.00ab", "06.0004", "06.00ab"]  # but 4, ab
    assert shell.cat("/sys/devices/ap/card05/05.0047/online") == "1\n"


def test_returning_an_assigned_apqn_to_the_host_is_busy(sh: VfioShell) -> None:
    sh.echo("5", f"{M1}/assign_adapter")
    sh.echo("0x47", f"{M1}/assign_domain")  # 05.0047: outside, as apmask lacks adapter 5
    before = (sh.cat(f"{AP}/apmask"), sh.cat(f"{AP}/aqmask"), bound(sh, "vfio_ap"))
    err = refused(errno.EBUSY, sh, "+5", f"{AP}/apmask")  # 5 x aqmask holds 05.0047
    assert "queue 05.0047 for host driver: in use by mdev " + UUID1 in err.message
    refused(errno.EBUSY, sh, "0x" + "f" * 64, f"{AP}/apmask")
    assert (sh.cat(f"{AP}/apmask"), sh.cat(f"{AP}/aqmask"), bound(sh, "vfio_ap")) == before
    # Domain 4 returns paired with the host's adapters only (not 5): nobody holds 06.0004.
    sh.echo("+4", f"{AP}/aqmask")
    assert bound(sh, "cex4queue") == ["06.0004", "06.0047", "06.00ff"]
    # An assignment of queues that do not exist (over-provisioned) counts as well.
    sh.echo("-7", f"{AP}/apmask")
    sh.echo("7", f"{M2}/assign_adapter")
    sh.echo("0xff", f"{M2}/assign_domain")
    err = refused(errno.EBUSY, sh, "+7", f"{AP}/apmask")
    assert "07.00ff" in err.message


def test_bind_follows_the_masks(sh: VfioShell) -> None:
    refused(errno.EBUSY, sh, "05.0004", f"{AP}/drivers/vfio_ap/bind")  # already bound
    refused(errno.EBUSY, sh, "06.0047", f"{AP}/drivers/vfio_ap/bind")
    sh.echo("06.0047", f"{AP}/drivers/cex4queue/unbind")
    err = refused(errno.ENODEV, sh, "06.0047", f"{AP}/drivers/vfio_ap/bind")
    assert "inside apmask x aqmask" in err.message
    sh.echo("05.0004", f"{AP}/drivers/vfio_ap/unbind")
    refused(errno.ENODEV, sh, "05.0004", f"{AP}/drivers/cex4queue/bind")
    refused(errno.ENODEV, sh, "card05", f"{AP}/drivers/vfio_ap/bind")  # queues only
    sh.echo("05.0004", f"{AP}/drivers_probe")
    sh.echo("06.0047", f"{AP}/drivers_probe")
    assert sh.bus.devices["05.0004"].driver is sh.bus.passthrough
    assert sh.bus.devices["06.0047"].driver is sh.bus.drivers["cex4queue"]


def test_ap_domain_must_be_in_aqmask(sh: VfioShell) -> None:
    err = refused(errno.EINVAL, sh, "4", f"{AP}/ap_domain")
    assert "aqmask" in err.message
    sh.echo("0x47", f"{AP}/ap_domain")
    sh.echo("5", f"{AP}/ap_domain")  # not a usage domain: the kernel does not check that
    assert sh.cat(f"{AP}/ap_domain") == "5\n"


# --- assignments ---------------------------------------------------------------------------


def test_assignment_numbers_are_base_0(sh: VfioShell) -> None:
    sh.echo("-0-255", f"{AP}/apmask")
    sh.echo("10", f"{M1}/assign_adapter")  # decimal: 0x0a
    sh.echo("0x10", f"{M1}/assign_adapter")
    sh.echo("010", f"{M1}/assign_adapter")  # octal: 8
    sh.echo("+5", f"{M1}/assign_adapter")
    assert sh.cat(f"{M1}/matrix") == "05.\n08.\n0a.\n10.\n"
    refused(errno.EINVAL, sh, "ab", f"{M1}/assign_adapter")
    refused(errno.EINVAL, sh, " 5", f"{M1}/assign_adapter")
    refused(errno.ERANGE, sh, "99999999999999999999", f"{M1}/assign_domain")
    refused(errno.ENODEV, sh, "256", f"{M1}/assign_adapter")
    refused(errno.ENODEV, sh, "0x100", f"{M1}/unassign_domain")
    refused(errno.ENODEV, sh, "256", f"{M1}/assign_control_domain")
    assert sh.cat(f"{M1}/matrix") == "05.\n08.\n0a.\n10.\n"


def test_matrix_formats_and_conflicts(sh: VfioShell) -> None:
    assert sh.cat(f"{M1}/matrix") == ""
    sh.echo("4", f"{M1}/assign_domain")
    sh.echo("171", f"{M1}/assign_domain")
    assert sh.cat(f"{M1}/matrix") == ".0004\n.00ab\n"
    sh.echo("5", f"{M1}/assign_adapter")
    sh.echo("6", f"{M1}/assign_adapter")
    assert sh.cat(f"{M1}/matrix") == "05.0004\n05.00ab\n06.0004\n06.00ab\n"
    assert sh.cat(f"{M1}/guest_matrix") == "05.0004\n05.00ab\n06.0004\n06.00ab\n"
    # 06.0047 is the host's; 05.0047 would be fine for mdev 2 until it takes adapter 6.
    err = refused(errno.EADDRNOTAVAIL, sh, "0x47", f"{M1}/assign_domain")
    assert "06.0047" in err.message
    sh.echo("5", f"{M2}/assign_adapter")
    err = refused(errno.EADDRINUSE, sh, "4", f"{M2}/assign_domain")
    assert err.message.endswith(f"queue 05.0004 to mdev: already assigned to {UUID1}")
    sh.echo("0x47", f"{M2}/assign_domain")
    sh.echo("0x47", f"{M2}/assign_domain")  # already assigned: no checks
    assert sh.cat(f"{M2}/matrix") == "05.0047\n"
    sh.echo("4", f"{M2}/assign_control_domain")
    sh.echo("4", f"{M1}/assign_control_domain")  # control domains are shared freely
    assert sh.cat(f"{M1}/control_domains") == "0004\n"
    assert sh.cat("/sys/devices/ap/card05/05.0004/status") == "assigned\n"
    assert sh.cat("/sys/devices/ap/card05/05.00ff/status") == "unassigned\n"


def test_guest_matrix_is_filtered_stored_state(sh: VfioShell) -> None:
    sh.echo("-6", f"{AP}/apmask")  # all of adapter 6 to vfio_ap
    sh.echo("6", f"{M1}/assign_adapter")
    sh.echo("4", f"{M1}/assign_domain")
    sh.echo("0x47", f"{M1}/assign_domain")
    assert sh.cat(f"{M1}/guest_matrix") == "06.0004\n06.0047\n"
    sh.echo("06.0047", f"{AP}/drivers/vfio_ap/unbind")  # the queue leaves vfio_ap
    assert sh.cat(f"{M1}/guest_matrix") == ".0004\n.0047\n"
    sh.echo("0x47", f"{M1}/unassign_domain")  # unassign only clears bits: 06 stays out
    assert sh.cat(f"{M1}/guest_matrix") == ".0004\n"
    assert sh.cat(f"{M1}/matrix") == "06.0004\n"
    sh.echo("0x47", f"{M1}/assign_domain")  # re-filtered: 06.0047 is still unbound
    assert sh.cat(f"{M1}/guest_matrix") == ".0004\n.0047\n"
    sh.echo("06.0047", f"{AP}/drivers/vfio_ap/bind")  # the probe filters again
    assert sh.cat(f"{M1}/guest_matrix") == "06.0004\n06.0047\n"
    # Over-provisioning: ids the host does not have are in matrix, not in guest_matrix.
    sh.echo("-9", f"{AP}/apmask")
    sh.echo("9", f"{M1}/assign_adapter")
    sh.echo("-0x30", f"{AP}/aqmask")
    sh.echo("0x30", f"{M1}/assign_domain")
    assert "09.0030" in sh.cat(f"{M1}/matrix").splitlines()
    assert sh.cat(f"{M1}/guest_matrix") == "06.0004\n06.0047\n"


# --- ap_config -----------------------------------------------------------------------------


def mask(*ids: int) -> str:
    """The ap_config text of a mask (64 hex digits, inv-bit order)."""
    return bitmap.to_sysfs(bitmap.from_ids(ids))


def test_ap_config_reads_and_writes_the_whole_matrix(sh: VfioShell) -> None:
    assert sh.cat(f"{M1}/ap_config") == f"0x{ZEROS},0x{ZEROS},0x{ZEROS}\n"
    sh.write(f"0x06,0x08{'0' * 40}1,0x08\n", f"{M1}/ap_config")  # short masks: 0-padded
    assert sh.cat(f"{M1}/matrix") == "05.0004\n05.00ab\n06.0004\n06.00ab\n"
    assert sh.cat(f"{M1}/control_domains") == "0004\n"
    assert sh.cat(f"{M1}/ap_config") == f"{mask(5, 6)},{mask(4, 0xab)},{mask(4)}\n"
    sh.write("0x04,0x08\n", f"{M1}/ap_config")  # two masks and a newline: adm cleared
    assert (sh.cat(f"{M1}/matrix"), sh.cat(f"{M1}/control_domains")) == ("05.0004\n", "")
    sh.write("0x04,0x08,,trailing text is ignored", f"{M1}/ap_config")
    assert sh.cat(f"{M1}/matrix") == "05.0004\n"
    assert sh.cat(f"{M1}/guest_matrix") == "05.0004\n"


@pytest.mark.parametrize(("text", "code"), [
    ("0x04,0x08", errno.EINVAL),  # two masks without a newline
    ("0x04", errno.EINVAL),
    ("0x04,0xg8,", errno.EINVAL),
    ("0x04 ,0x08,", errno.EINVAL),
    (f"{mask(5, 6)},{mask(0x47)},", errno.EADDRNOTAVAIL),  # 06.0047 is the host's
    (f"{mask(5, 6)},{mask(4)},", errno.EADDRINUSE),  # 06.0004 is mdev 2's
])
def test_ap_config_refusals_change_nothing(sh: VfioShell, text: str, code: int) -> None:
    sh.echo("6", f"{M2}/assign_adapter")
    sh.echo("4", f"{M2}/assign_domain")
    sh.echo("5", f"{M1}/assign_adapter")
    before = sh.cat(f"{M1}/ap_config")
    with pytest.raises(DeviceError) as info:
        sh.write(text, f"{M1}/ap_config")
    assert info.value.errno == code, info.value
    assert sh.cat(f"{M1}/ap_config") == before


NO_APXA_HOST = """
[host]
domains = ["01", "02"]
features = ["APSC"]
[[card]]
id = "05"
type = "CEX8P"
"""


def test_without_apxa_ids_above_63_and_15_are_enodev() -> None:
    shell = VfioShell(NO_APXA_HOST)
    assert shell.cat(f"{AP}/ap_max_adapter_id") == "63\n"
    assert shell.cat(f"{AP}/ap_max_domain_id") == "15\n"
    shell.echo("-0-255", f"{AP}/apmask")
    shell.echo(UUID1, f"{VFIO_TYPE_DIR}/create")
    err = refused(errno.ENODEV, shell, "64", f"{M1}/assign_adapter")
    assert "0x3f" in err.message
    refused(errno.ENODEV, shell, "16", f"{M1}/assign_domain")
    shell.write(f"{mask(63)},,\n", f"{M1}/ap_config")
    assert shell.cat(f"{M1}/matrix") == "3f.\n"
    with pytest.raises(DeviceError) as info:
        shell.write(f"{mask(64)},,\n", f"{M1}/ap_config")
    assert info.value.errno == errno.ENODEV
    # ap_config checks the host masks first (assign_* checks the maximum first).
    shell.echo("+5", f"{AP}/apmask")
    with pytest.raises(DeviceError) as info:
        shell.write(f"{mask(5, 64)},{mask(1)},\n", f"{M1}/ap_config")
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert shell.cat(f"{M1}/matrix") == "3f.\n"


# --- the type, create and remove -----------------------------------------------------------


def test_type_create_remove(sh: VfioShell) -> None:
    assert sh.cat(f"{VFIO_MATRIX}/features") == "guest_matrix hotplug ap_config\n"
    assert sh.cat(f"{VFIO_TYPE_DIR}/name") == "VFIO AP Passthrough Device\n"
    assert sh.cat(f"{VFIO_TYPE_DIR}/device_api") == "vfio-ap\n"
    assert sh.cat(f"{VFIO_TYPE_DIR}/available_instances") == "65534\n"
    refused(errno.EEXIST, sh, UUID1.upper(), f"{VFIO_TYPE_DIR}/create")
    refused(errno.EINVAL, sh, UUID1[1:], f"{VFIO_TYPE_DIR}/create")
    refused(errno.EINVAL, sh, "x", f"{M1}/remove")
    sh.echo("0", f"{M1}/remove")
    sh.echo("5", f"{M1}/assign_adapter")
    sh.echo("4", f"{M1}/assign_domain")
    sh.vfio.start_guest(UUID1)
    assert sh.cat("/sys/devices/ap/card05/05.0004/status") == "in use\n"
    assert sh.vfio.guests[UUID1].show_apqns() == "05.0004\n"
    sh.echo("0xab", f"{M1}/assign_domain")  # hot plug: the running guest sees it
    assert sh.vfio.guests[UUID1].show_apqns() == "05.0004\n05.00ab\n"
    refused(errno.EBUSY, sh, "1", f"{M1}/remove")
    sh.vfio.stop_guest(UUID1)
    sh.echo("1", f"{M1}/remove")
    assert list(sh.vfio.mdevs) == [UUID2]
    assert sh.cat("/sys/devices/ap/card05/05.0004/status") == "unassigned\n"
    sh.echo("+5", f"{AP}/apmask")  # nobody holds adapter 5 any more


def test_no_instances_left() -> None:
    shell = VfioShell(max_instances=1)
    shell.echo(UUID1, f"{VFIO_TYPE_DIR}/create")
    refused(errno.EUSERS, shell, UUID2, f"{VFIO_TYPE_DIR}/create")


# --- the host TOML -------------------------------------------------------------------------


def test_toml_masks_and_flavor() -> None:
    toml = DEFAULT_HOST_TOML.replace(
        "[host]", '[host]\nflavor = "vfio_ap"\napmask = "-5"\naqmask = "-4,-0xab"')
    config = HostConfig.from_toml(toml)
    assert config.flavor == "vfio_ap"
    shell = VfioShell(toml)
    assert bound(shell, "vfio_ap") == ["05.0004", "05.0047", "05.00ab", "05.00ff", "06.0004",
                                       "06.00ab"]
    assert HostConfig.from_toml(toml, "vfio_ap").apmask == config.apmask


@pytest.mark.parametrize(("extra", "words"), [
    ('apmask = "-5"', ["apmask", "vfio_ap"]),  # the seed's flavor has no masks
    ('flavor = "vfio_ap"\napmask = "5 "', ["host.apmask", "'5 '"]),
    ('flavor = "upstream"', ["host.flavor", "upstream"]),
    ('flavor = "vfio_ap"\nfeatures = ["APSC"]\nmax_domain_id = "ff"',
     ["host.max_domain_id", "APXA"]),
])
def test_toml_mistakes_name_key_and_value(extra: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        HostConfig.from_toml(DEFAULT_HOST_TOML.replace("[host]", f"[host]\n{extra}"))
    for word in words:
        assert word in str(info.value)


def test_toml_bindings_must_agree_with_the_masks() -> None:
    with pytest.raises(ValueError, match=r"bindings\.05\.0004: 05\.0004 is inside apmask"):
        VfioShell(DEFAULT_HOST_TOML + '[bindings]\n"05.0004" = "vfio_ap"\n')
    with pytest.raises(ValueError, match="CEX3A is not supported"):
        VfioShell(DEFAULT_HOST_TOML.replace("CEX5A", "CEX3A"))
    shell = VfioShell(DEFAULT_HOST_TOML + '[bindings]\n"05.0004" = ""\n')
    assert shell.bus.devices["05.0004"].driver is None
