"""Broker addresses: one parser for every form (host, host:port, [ipv6]:port, mqtt://, mqtts://, ws://, wss://), the
port rules, and what the coordinator's, the devices' and the dashboard's flags make of them."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.transport.broker_address import AddressError, format_address, parse_address
from federation.cli.broker_flags import add_broker_flags, device_address, settings_overrides
from federation.transport.mqtt_link import BrokerAddress
from federation.config.settings import ConfigError, load_settings


@pytest.mark.parametrize("text, host, port, transport, tls, path", [
    ("broker.lan", "broker.lan", 1883, "tcp", False, "/mqtt"),
    ("broker.lan:1884", "broker.lan", 1884, "tcp", False, "/mqtt"),
    ("10.0.0.5:1885", "10.0.0.5", 1885, "tcp", False, "/mqtt"),
    ("[::1]:1886", "::1", 1886, "tcp", False, "/mqtt"),
    ("::1", "::1", 1883, "tcp", False, "/mqtt"),
    ("mqtt://h:1887", "h", 1887, "tcp", False, "/mqtt"),
    ("mqtt://h", "h", 1883, "tcp", False, "/mqtt"),
    ("mqtts://h", "h", 8883, "tcp", True, "/mqtt"),
    ("MQTTS://Broker.LAN:8884", "broker.lan", 8884, "tcp", True, "/mqtt"),
    ("mqtts://[fd00::5]:8885", "fd00::5", 8885, "tcp", True, "/mqtt"),
    ("ws://h", "h", 9001, "websockets", False, "/mqtt"),
    ("ws://h:9002/ws", "h", 9002, "websockets", False, "/ws"),
    ("wss://h", "h", 443, "websockets", True, "/mqtt"),
    ("  h:1888 ", "h", 1888, "tcp", False, "/mqtt"),
])
def test_every_form_parses(text: str, host: str, port: int, transport: str, tls: bool, path: str) -> None:
    address = BrokerAddress.parse(text)
    assert (address.host, address.port, address.transport, address.use_tls, address.ws_path) == (
        host, port, transport, tls, path)


@pytest.mark.parametrize("text, complaint", [
    ("mqtt://mqtt://h:1883", "two schemes"),          # what `--broker mqtt://h` used to become
    ("", "empty broker address"),
    ("h:abc", "could not be cast"),
    ("h:70000", "out of range"),
    ("h:0", "port 0"),
    ("http://h:80", "unknown scheme http://"),
    ("tcp://h", "unknown scheme tcp://"),
    ("mqtt://u:secret@h", "--password-file"),
    ("mqtt://h/some/path", "only ws:// and wss://"),
    ("h:1883?x=1", "query"),
    ("fe80::zz", "not an IPv6 address"),
    ("mqtt://:1883", "names no host"),
])
def test_bad_addresses_say_what_is_wrong_and_what_works(text: str, complaint: str) -> None:
    with pytest.raises(AddressError, match=complaint) as info:
        parse_address(text)
    assert "mqtts://" in str(info.value) or "--password-file" in str(info.value) or "port 0" in str(info.value)


def test_port_rules() -> None:
    assert BrokerAddress.parse("h", BrokerAddress(port=1890)).port == 1890, "[broker] port for a bare host"
    assert BrokerAddress.parse("mqtts://h", BrokerAddress(port=1890)).port == 1890, "a [broker] port that was set"
    assert BrokerAddress.parse("mqtts://h", BrokerAddress(port=1883)).port == 8883, "left at 1883: the scheme's"
    assert BrokerAddress.parse("h:1891", BrokerAddress(port=1890)).port == 1891, "the address's own port wins"
    assert BrokerAddress.parse("mqtts://h", port_flag=9999).port == 9999
    assert BrokerAddress.parse("h:1892", port_flag=1892).port == 1892
    with pytest.raises(AddressError, match="port 1892 but --port says 1893"):
        BrokerAddress.parse("h:1892", port_flag=1893)


def test_tls_from_a_ca_file_or_the_scheme_never_both_ways() -> None:
    assert BrokerAddress.parse("h", BrokerAddress(tls_ca="ca.crt")).use_tls, "a bare host with a CA: TLS, as before"
    assert BrokerAddress.parse("wss://h", BrokerAddress(tls_ca="ca.crt")).url == "wss://h:443/mqtt"
    with pytest.raises(AddressError, match="mqtt:// is plain MQTT.*write mqtts://h:1883"):
        BrokerAddress.parse("mqtt://h:1883", BrokerAddress(tls_ca="ca.crt"))


hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(host=hosts, port=st.integers(1, 65535), scheme=st.sampled_from(["mqtt", "mqtts", "ws", "wss"]),
       path=st.sampled_from(["", "/mqtt", "/a/b"]))
def test_a_formatted_address_parses_back_unchanged(host: str, port: int, scheme: str, path: str) -> None:
    path = path if scheme.startswith("ws") else ""
    parsed = parse_address(format_address(host, port, scheme, path))
    assert (parsed.host, parsed.port, parsed.scheme, parsed.path) == (host, port, scheme, path.rstrip("/") and path)
    address = BrokerAddress.parse(format_address(host, port, scheme, path))
    assert BrokerAddress.parse(address.url) == address, "url is an address form too"


@given(host=hosts, port=st.integers(1, 65535))
def test_host_port_and_its_mqtt_url_are_the_same_address(host: str, port: int) -> None:
    bare = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert BrokerAddress.parse(bare) == BrokerAddress.parse(f"mqtt://{bare}")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_broker_flags(parser, "dev-1")
    return parser.parse_args(list(argv))


def test_a_device_address_from_flags_over_the_config() -> None:
    cfg = load_settings(None, {"broker.host": "broker.lan", "broker.port": 1900})
    assert device_address(_args(), cfg.broker, "dev-1").url == "mqtt://broker.lan:1900"
    assert device_address(_args("--broker", "mqtts://b2"), cfg.broker, "dev-1").url == "mqtts://b2:1900"
    assert device_address(_args("--broker", "mqtt://b2:1884"), cfg.broker, "dev-1").url == "mqtt://b2:1884"
    assert device_address(_args("--broker", "b2:1884"), cfg.broker, "dev-1").url == "mqtt://b2:1884"
    assert device_address(_args("--port", "1901"), cfg.broker, "dev-1").url == "mqtt://broker.lan:1901"
    address = device_address(_args("--broker", "wss://b3:8443/mqtt", "--mqtt-version", "5"), cfg.broker, "dev-1")
    assert (address.url, address.mqtt_version, address.transport) == ("wss://b3:8443/mqtt", "5", "websockets")
    with pytest.raises(ValueError, match="--port says 1902"):
        device_address(_args("--broker", "b2:1884", "--port", "1902"), cfg.broker, "dev-1")


def test_the_coordinators_flags_become_settings() -> None:
    args = _args("--broker", "mqtts://b:8884", "--run", "r7", "--topic-prefix", "lab", "--mqtt-version", "5",
                 "--tls-ca", "ca.crt", "--username", "coordinator", "--password-file", "pw")
    overrides = settings_overrides(args)
    assert overrides == {"broker.host": "mqtts://b:8884", "broker.port": 8884, "run.name": "r7",
                         "broker.topic_prefix": "lab", "broker.mqtt_version": "5", "broker.tls_ca": "ca.crt",
                         "broker.username": "coordinator", "broker.password_file": "pw"}
    settings = load_settings(None, overrides)
    assert BrokerAddress.from_settings(settings.broker).url == "mqtts://b:8884"
    assert settings_overrides(_args("--port", "1905")) == {"broker.port": 1905}
    with pytest.raises(AddressError, match="--port says 1906"):
        settings_overrides(_args("--broker", "b:1884", "--port", "1906"))


def test_a_bad_host_in_the_config_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[broker]\nhost = "mqtt://mqtt://b:1883"\n')
    with pytest.raises(ConfigError, match=r"\[broker\] host: .*two schemes"):
        load_settings(path)
    path.write_text('[broker]\nhost = "mqtts://b"\n')
    assert BrokerAddress.from_settings(load_settings(path).broker).url == "mqtts://b:8883"
