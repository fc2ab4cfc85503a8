"""The AP bus: devices, drivers, bind/unbind and every bus, card and queue attribute."""

from __future__ import annotations

import errno

import pytest

from tests.unit.ap_shell import Shell, present
from vdev.ap import DEFAULT_HOST_TOML, ApBus, HostConfig
from vdev.ap.zcrypt import Zcrypt
from vdev.errors import DeviceError

AP = "/sys/bus/ap"
CARD05 = "/sys/devices/ap/card05"
Q0504 = f"{CARD05}/05.0004"
ZERO_MASK = "0x" + "0" * 64


def refused(errno_value: int, fn, *args) -> DeviceError:
    with pytest.raises(DeviceError) as info:
        fn(*args)
    assert info.value.errno == errno_value, info.value
    return info.value


@pytest.fixture
def sh() -> Shell:
    return Shell()


# -- the seed's host ----------------------------------------------------------------------


def test_seed_host_devices_and_drivers(sh: Shell) -> None:
    bus = sh.bus
    assert sorted(bus.devices) == [
        "05.0004", "05.0047", "05.00ab", "05.00ff",
        "06.0004", "06.0047", "06.00ab", "06.00ff",
        "card05", "card06",
    ]
    assert list(bus.drivers) == [
        "cex2acard", "cex2aqueue", "cex4card", "cex4queue",
        "pcixcccard", "pcixccqueue", "vfio_ap_matrix",
    ]
    assert sorted(bus.drivers["cex4card"].devices) == ["card05", "card06"]
    assert sorted(bus.drivers["cex4queue"].devices)[:2] == ["05.0004", "05.0047"]
    assert sorted(bus.drivers["vfio_ap_matrix"].devices) == []
    assert sh.cat(f"{AP}/bindings") == "8/8 (complete)\n"


def test_bus_masks_in_inv_bit_order(sh: Shell) -> None:
    assert sh.cat(f"{AP}/ap_adapter_mask") == "0x06" + "0" * 62 + "\n"
    usage = sh.cat(f"{AP}/ap_usage_domain_mask")
    assert usage == "0x0800000000000000010000000000000000000000001000000000000000000001\n"
    assert sh.cat(f"{AP}/ap_control_domain_mask") == usage


def test_bus_read_only_values(sh: Shell) -> None:
    assert sh.cat(f"{AP}/ap_domain") == "4\n"
    assert sh.cat(f"{AP}/ap_max_domain_id") == "255\n"
    assert sh.cat(f"{AP}/ap_max_adapter_id") == "255\n"
    assert sh.cat(f"{AP}/ap_interrupts") == "1\n"
    assert sh.cat(f"{AP}/config_time") == "30\n"
    assert sh.cat(f"{AP}/poll_thread") == "0\n"
    assert sh.cat(f"{AP}/poll_timeout") == "250000\n"
    assert sh.cat(f"{AP}/scans") == "1\n"
    assert sh.cat(f"{AP}/features") == "APSC APXA QACT RC8A\n"
    assert sh.cat(f"{AP}/drivers_autoprobe") == "1\n"


def test_ap_domain_store(sh: Shell) -> None:
    sh.echo("0x47", f"{AP}/ap_domain")
    assert sh.cat(f"{AP}/ap_domain") == "71\n"
    sh.echo("171", f"{AP}/ap_domain")
    assert sh.cat(f"{AP}/ap_domain") == "171\n"
    for bad in ("-1", "256", "abc", ""):
        err = refused(errno.EINVAL, sh.echo, bad, f"{AP}/ap_domain")
        assert err.message.startswith("ap_domain: ")
    assert sh.cat(f"{AP}/ap_domain") == "171\n"
    # The kernel checks aqmask (all ones without one), not the usage domains: lszcrypt -b
    # then reports the default domain as unavailable.
    sh.echo("5", f"{AP}/ap_domain")
    assert sh.cat(f"{AP}/ap_domain") == "5\n"


def test_config_time_poll_thread_poll_timeout_scans(sh: Shell) -> None:
    sh.echo("120", f"{AP}/config_time")
    assert sh.cat(f"{AP}/config_time") == "120\n"
    refused(errno.EINVAL, sh.echo, "4", f"{AP}/config_time")
    refused(errno.EINVAL, sh.echo, "121", f"{AP}/config_time")
    sh.echo("1", f"{AP}/poll_thread")
    assert sh.cat(f"{AP}/poll_thread") == "1\n"
    refused(errno.EINVAL, sh.echo, "2", f"{AP}/poll_thread")
    sh.echo("0x10", f"{AP}/poll_timeout")
    assert sh.cat(f"{AP}/poll_timeout") == "16\n"
    err = refused(errno.EINVAL, sh.echo, "120000000001", f"{AP}/poll_timeout")
    assert "120000000001" in err.message
    refused(errno.ERANGE, sh.echo, "99999999999999999999", f"{AP}/poll_timeout")
    assert sh.cat(f"{AP}/poll_timeout") == "16\n"
    sh.echo("1", f"{AP}/scans")
    assert sh.cat(f"{AP}/scans") == "2\n"


def test_uevent_and_drivers_autoprobe(sh: Shell) -> None:
    sh.echo("change", f"{AP}/uevent")
    refused(errno.EINVAL, sh.echo, "explode", f"{AP}/uevent")
    sh.echo("0", f"{AP}/drivers_autoprobe")
    assert sh.cat(f"{AP}/drivers_autoprobe") == "0\n"


# -- bind / unbind --------------------------------------------------------------------------


def test_seed_step_1_and_2_reserve_a_queue(sh: Shell) -> None:
    sh.echo("05.0004", f"{AP}/drivers/cex4queue/unbind")
    assert sh.cat(f"{AP}/bindings") == "7/8\n"
    sh.echo("05.0004", f"{AP}/drivers/vfio_ap_matrix/bind")
    assert sh.cat(f"{AP}/bindings") == "8/8 (complete)\n"
    assert sorted(sh.bus.drivers["vfio_ap_matrix"].devices) == ["05.0004"]
    assert "05.0004" not in sorted(sh.bus.drivers["cex4queue"].devices)


def test_bind_refusals_change_nothing(sh: Shell) -> None:
    bus = sh.bus
    err = refused(errno.ENODEV, bus.bind, "vfio_ap_matrix", "05.0004\n")
    assert err.message == "bind: 05.0004 is already bound to cex4queue"
    err = refused(errno.ENODEV, bus.bind, "cex4queue", "07.0004\n")
    assert err.message == "bind: no device named '07.0004' on the ap bus"
    refused(errno.ENODEV, bus.bind, "cex4queue", "05.0004\n\n")
    refused(errno.ENODEV, bus.bind, "cex4queue", " 05.0004")
    bus.unbind("cex4queue", "05.0004")
    err = refused(errno.ENODEV, bus.bind, "cex2aqueue", "05.0004\n")
    assert err.message == "bind: cex2aqueue does not handle 05.0004 (a CEX5C queue)"
    refused(errno.ENODEV, bus.bind, "cex4card", "05.0004\n")
    bus.unbind("cex4card", "card05\n")
    refused(errno.ENODEV, bus.bind, "vfio_ap_matrix", "card05\n")  # passthrough takes queues only
    refused(errno.ENODEV, bus.bind, "pcixcccard", "card05\n")
    assert bus.devices["05.0004"].driver is None
    assert bus.devices["card05"].driver is None


def test_unbind_refusals(sh: Shell) -> None:
    bus = sh.bus
    err = refused(errno.ENODEV, bus.unbind, "vfio_ap_matrix", "05.0004\n")
    assert err.message == "unbind: 05.0004 is bound to cex4queue, not to vfio_ap_matrix"
    refused(errno.ENODEV, bus.unbind, "cex4queue", "nonsense\n")
    bus.unbind("cex4queue", "05.0004\n")
    err = refused(errno.ENODEV, bus.unbind, "cex4queue", "05.0004\n")
    assert err.message == "unbind: 05.0004 is not bound, not to cex4queue"


def test_drivers_probe_rebinds_to_the_host_driver(sh: Shell) -> None:
    sh.echo("05.0004", f"{AP}/drivers/cex4queue/unbind")
    sh.echo("05.0004", f"{AP}/drivers_probe")
    assert sh.bus.devices["05.0004"].driver is sh.bus.drivers["cex4queue"]
    sh.echo("05.0004", f"{AP}/drivers_probe")  # bound already: nothing to do, no error
    refused(errno.ENODEV, sh.echo, "05.0005", f"{AP}/drivers_probe")


def test_old_card_types_use_their_own_drivers() -> None:
    toml = """
    [host]
    domains = [1]
    [[card]]
    id = "00"
    type = "CEX2A"
    [[card]]
    id = "01"
    type = "CEX3C"
    """
    bus = ApBus(HostConfig.from_toml(toml))
    assert sorted(bus.drivers["cex2acard"].devices) == ["card00"]
    assert sorted(bus.drivers["cex2aqueue"].devices) == ["00.0001"]
    assert sorted(bus.drivers["pcixccqueue"].devices) == ["01.0001"]
    bus.unbind("cex2aqueue", "00.0001")
    bus.bind("vfio_ap_matrix", "00.0001")
    assert bus.devices["card01"].show_ap_functions() == "0x10000000\n"
    assert bus.devices["card00"].show_modalias() == "ap:t06\n"


# -- card and queue attributes ------------------------------------------------------------


def test_card_attributes(sh: Shell) -> None:
    expected = {
        "hwtype": "11\n", "raw_hwtype": "11\n", "depth": "8\n",
        "ap_functions": "0x92000000\n", "request_count": "0\n", "requestq_count": "0\n",
        "pendingq_count": "0\n", "modalias": "ap:t0B\n", "config": "1\n", "chkstop": "0\n",
        "max_msg_size": "12288\n", "type": "CEX5C\n", "online": "1\n", "load": "0\n",
    }
    assert present(sh.bus.devices["card05"]) == set(expected)
    for attr, text in expected.items():
        assert sh.cat(f"{CARD05}/{attr}") == text, attr
    assert sh.cat("/sys/devices/ap/card06/type") == "CEX5A\n"
    assert sh.cat("/sys/devices/ap/card06/ap_functions") == "0xEA000000\n"


def test_queue_attributes_depend_on_the_driver(sh: Shell) -> None:
    queue = sh.bus.devices["05.0004"]
    always = {"request_count", "requestq_count", "pendingq_count", "reset", "interrupt",
              "config", "chkstop", "ap_functions"}
    assert present(queue) == always | {"online", "load"}
    assert sh.cat(f"{Q0504}/online") == "1\n"
    assert sh.cat(f"{Q0504}/reset") == "No Reset Timer set.\n"
    assert sh.cat(f"{Q0504}/interrupt") == "Interrupts enabled.\n"
    sh.echo("05.0004", f"{AP}/drivers/cex4queue/unbind")
    assert present(queue) == always
    sh.echo("05.0004", f"{AP}/drivers/vfio_ap_matrix/bind")
    assert present(queue) == always | {"status"}
    assert sh.cat(f"{Q0504}/status") == "unassigned\n"
    assert sh.cat(f"{Q0504}/interrupt") == "Interrupts disabled.\n"
    with pytest.raises(FileNotFoundError):
        sh.cat(f"{Q0504}/online")


def test_card_unbound_from_its_driver_loses_type_online_load(sh: Shell) -> None:
    sh.echo("card05", f"{AP}/drivers/cex4card/unbind")
    names = present(sh.bus.devices["card05"])
    assert not names & {"type", "online", "load"}
    assert "hwtype" in names


def test_card_online_propagates_to_host_queues(sh: Shell) -> None:
    sh.echo("05.00ff", f"{AP}/drivers/cex4queue/unbind")
    sh.echo("05.00ff", f"{AP}/drivers/vfio_ap_matrix/bind")
    sh.echo("0", f"{CARD05}/online")
    assert sh.cat(f"{CARD05}/online") == "0\n"
    assert sh.cat(f"{Q0504}/online") == "0\n"
    assert sh.cat("/sys/devices/ap/card06/06.0004/online") == "1\n"
    err = refused(errno.EINVAL, sh.echo, "1", f"{Q0504}/online")
    assert err.message == "online: 05.0004 cannot go online while card05 is offline"
    sh.echo("1", f"{CARD05}/online")
    assert sh.cat(f"{CARD05}/05.0047/online") == "1\n"
    sh.echo("0", f"{Q0504}/online")
    assert sh.cat(f"{Q0504}/online") == "0\n"
    sh.echo("1", f"{Q0504}/online")
    assert sh.cat(f"{Q0504}/online") == "1\n"
    for bad in ("2", "-1", "x", ""):
        refused(errno.EINVAL, sh.echo, bad, f"{CARD05}/online")
    assert sh.cat(f"{CARD05}/online") == "1\n"


def test_deconfigured_card_cannot_go_online(sh: Shell) -> None:
    sh.echo("0", f"{CARD05}/config")
    assert sh.cat(f"{CARD05}/config") == "0\n"
    assert sh.cat(f"{CARD05}/online") == "0\n"
    assert sh.cat(f"{Q0504}/config") == "0\n"
    assert sh.cat(f"{Q0504}/online") == "0\n"
    err = refused(errno.ENODEV, sh.echo, "1", f"{CARD05}/online")
    assert err.message == "online: card05 cannot go online while it is deconfigured (config is 0)"
    refused(errno.ENODEV, sh.echo, "1", f"{Q0504}/online")
    refused(errno.EINVAL, sh.echo, "yes", f"{CARD05}/config")
    sh.echo("1", f"{CARD05}/config")
    assert sh.cat(f"{CARD05}/online") == "1\n"


def test_check_stopped_card_from_config() -> None:
    toml = DEFAULT_HOST_TOML.replace('type = "CEX5A"', 'type = "CEX5A"\nchkstop = true')
    sh = Shell(toml)
    assert sh.cat("/sys/devices/ap/card06/chkstop") == "1\n"
    assert sh.cat("/sys/devices/ap/card06/06.00ab/chkstop") == "1\n"
    assert sh.cat("/sys/devices/ap/card06/online") == "0\n"
    refused(errno.ENODEV, sh.echo, "1", "/sys/devices/ap/card06/online")


def test_requests_count_on_queue_and_card_until_reset(sh: Shell) -> None:
    zcrypt = Zcrypt(sh.bus)
    zcrypt.store_request("05.0004 10\n")
    zcrypt.store_request("05.00ab\n")
    zcrypt.store_request("05.0004 3 pending\n")
    assert sh.cat(f"{Q0504}/request_count") == "13\n"
    assert sh.cat(f"{CARD05}/request_count") == "14\n"
    assert (sh.cat(f"{Q0504}/pendingq_count"), sh.cat(f"{CARD05}/pendingq_count")) == ("3\n",
                                                                                       "3\n")
    sh.echo("1", f"{Q0504}/reset")  # a reset drops what is in flight, not the totals
    assert (sh.cat(f"{Q0504}/pendingq_count"), sh.cat(f"{Q0504}/request_count")) == ("0\n",
                                                                                     "13\n")
    sh.echo("anything", f"{CARD05}/request_count")  # chzcrypt-style: zeroes card and queues
    assert sh.cat(f"{CARD05}/request_count") == sh.cat(f"{Q0504}/request_count") == "0\n"


def test_pending_requests_are_dropped_when_the_queue_goes_away(sh: Shell) -> None:
    zcrypt = Zcrypt(sh.bus)
    zcrypt.store_request("05.0004 2 pending")
    sh.echo("0", f"{CARD05}/online")  # the card's state is forced onto its queues
    assert sh.cat(f"{Q0504}/pendingq_count") == "0\n"
    sh.echo("1", f"{CARD05}/online")
    zcrypt.store_request("05.0004 2 pending")
    sh.echo("05.0004", f"{AP}/drivers/cex4queue/unbind")
    assert sh.cat(f"{CARD05}/pendingq_count") == "0\n"


@pytest.mark.parametrize(("text", "code"), [
    ("", errno.EINVAL), ("05.0004 0", errno.EINVAL), ("05.0004 x", errno.EINVAL),
    ("05.0004 1 later", errno.EINVAL), ("05.0004 1000001", errno.EINVAL),
    ("05.0099", errno.ENODEV), ("card05", errno.ENODEV),
])
def test_request_refusals(sh: Shell, text: str, code: int) -> None:
    refused(code, Zcrypt(sh.bus).store_request, text)
    assert sh.cat(f"{CARD05}/request_count") == "0\n"


def test_requests_need_an_online_queue_of_a_host_driver(sh: Shell) -> None:
    zcrypt = Zcrypt(sh.bus)
    sh.echo("0", f"{Q0504}/online")
    assert "offline" in refused(errno.ENODEV, zcrypt.store_request, "05.0004").message
    sh.echo("05.0004", f"{AP}/drivers/cex4queue/unbind")
    sh.echo("05.0004", f"{AP}/drivers/vfio_ap_matrix/bind")
    err = refused(errno.ENODEV, zcrypt.store_request, "05.0004")
    assert "vfio_ap_matrix, not to a zcrypt host driver" in err.message


# -- configuration -------------------------------------------------------------------------


def test_boot_bindings_from_config() -> None:
    toml = DEFAULT_HOST_TOML + '\n[bindings]\n"05.0004" = "vfio_ap_matrix"\n"06.00ff" = ""\n'
    bus = ApBus(HostConfig.from_toml(toml))
    assert sorted(bus.drivers["vfio_ap_matrix"].devices) == ["05.0004"]
    assert bus.devices["06.00ff"].driver is None
    assert bus.show_bindings() == "7/8\n"


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[[card]]\nid = "05"\ntype = "CEX9Z"', ["card 05", "'CEX9Z'"]),
        ('[[card]]\nid = "100"\ntype = "CEX5C"', ["card[0].id", "0x100 is outside"]),
        ('[[card]]\nid = 511\ntype = "CEX5C"', ["card[0].id", "0x1ff is outside"]),
        ('[[card]]\nid = "zz"\ntype = "CEX5C"', ["card[0].id", "'zz'"]),
        ('[[card]]\nid = 5\ntype = "CEX5C"\n[[card]]\nid = "05"\ntype = "CEX5A"',
         ["card[1].id", "twice"]),
        ('[host]\ndomains = ["04", 4]', ["host.domains", "0x04", "twice"]),
        ('[host]\ndomains = ["04"]\nap_domain = "05"', ["host.ap_domain", "0x05"]),
        ('[host]\nflavour = 1', ["unknown key 'flavour'"]),
        ('[host]\nmax_domain_id = "0f"\ndomains = ["10"]', ["host.domains", "0x10", "0x0f"]),
        ('[[card]]\nid = "05"\ntype = "CEX5C"\n[bindings]\n"05.0001" = ""',
         ["bindings", "05.0001"]),
        ('[host]\ndomains = [1]\n[[card]]\nid = "05"\ntype = "CEX5C"\n'
         '[bindings]\n"05.0001" = "cex2aqueue"', ["bindings.05.0001", "cex2aqueue"]),
        ('[host]\ndomains = [1]\n[[card]]\nid = "05"\ntype = "CEX5C"\n'
         '[bindings]\n"card05" = "nodriver"', ["bindings.card05", "'nodriver'"]),
        ("[host", ["not valid TOML"]),
    ],
)
def test_bad_configs_name_key_and_value(toml: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        ApBus(HostConfig.from_toml(toml))
    for word in words:
        assert word in str(info.value)


def test_grid_host_256_by_256() -> None:
    bus = ApBus(HostConfig.grid(256, 256))
    assert bus.show_bindings() == "65536/65536 (complete)\n"
    assert bus.show_ap_adapter_mask() == "0x" + "f" * 64 + "\n"
    assert bus.devices["ff.00ff"].show_online() == "1\n"
    bus.unbind("cex4queue", "ff.00ff\n")
    assert bus.show_bindings() == "65535/65536\n"
    assert sorted(bus.drivers["cex4queue"].devices)[-1] == "ff.00fe"


def test_empty_host() -> None:
    bus = ApBus(HostConfig(cards={}, domains=()))
    assert bus.show_ap_domain() == "-1\n"
    assert bus.show_ap_adapter_mask() == ZERO_MASK + "\n"
    assert bus.show_bindings() == "0/0 (complete)\n"
