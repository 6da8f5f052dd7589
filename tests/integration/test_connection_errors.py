"""Connection failures say why, and what to do: a refused port, a host name that does not resolve, TLS against a
plain port, a plain client on a TLS port, a certificate from another CA, and a refused login, each against a real
Mosquitto (plain, TLS and password listeners, certificates made here with broker.secure's CA code)."""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker import MosquittoProcess, free_port
from broker.mosquitto_process import port_accepts
from broker.secure import hash_password, issue_certificate, make_ca
from federation.transport.mqtt_link import BrokerAddress, MqttLink

pytestmark = pytest.mark.timeout(120)

WAIT_S = 15.0


@dataclass
class Listeners:
    plain: int
    tls: int
    login: int
    ca: Path
    other_ca: Path
    password: Path


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    """One Mosquitto with a plain anonymous listener, a TLS one (certificate for localhost/127.0.0.1 from a CA made
    here) and a plain one that wants a password."""
    root = tmp_path_factory.mktemp("broker")
    ca_cert, ca_key = make_ca("test CA")
    server_cert, server_key, _ = issue_certificate(ca_cert, ca_key, "localhost",
                                                   server_names=["localhost", "127.0.0.1"])
    other_ca, _ = make_ca("someone else's CA")
    for name, data in (("ca.crt", ca_cert), ("server.crt", server_cert), ("server.key", server_key),
                       ("other-ca.crt", other_ca)):
        (root / name).write_bytes(data)
    (root / "passwd").write_text(hash_password("dev-1", "right-password", root) + "\n")
    (root / "password").write_text("wrong-password\n")
    (root / "password").chmod(0o600)
    plain, tls, login = free_port(), free_port(), free_port()
    template = root / "template.conf"
    template.write_text("\n".join([
        "per_listener_settings true",
        f"listener {plain} 127.0.0.1", "allow_anonymous true",
        f"listener {tls} 127.0.0.1", "allow_anonymous true", f"cafile {root / 'ca.crt'}",
        f"certfile {root / 'server.crt'}", f"keyfile {root / 'server.key'}",
        f"listener {login} 127.0.0.1", "allow_anonymous false", f"password_file {root / 'passwd'}",
        "persistence false", "log_dest stderr", "log_type all",
        f"user {getpass.getuser()}",  # as root, Mosquitto would become user mosquitto, who can't read tmp_path
        ""]))
    with MosquittoProcess(port=plain, config_template=template, workdir=root / "run") as mosquitto:
        deadline = time.monotonic() + 10
        while not (port_accepts("127.0.0.1", tls) and port_accepts("127.0.0.1", login)):
            assert time.monotonic() < deadline, mosquitto.log_path.read_text()
            time.sleep(0.1)
        yield Listeners(plain, tls, login, root / "ca.crt", root / "other-ca.crt", root / "password")


def failure_of(address: BrokerAddress, caplog: pytest.LogCaptureFixture) -> str:
    """Start a real MqttLink, wait for its first failure diagnosis, and return it (also checking it was logged)."""
    link = MqttLink("fedmq-test-diagnosis", address, [], lambda *_: None)
    caplog.set_level(logging.INFO, logger="federation.transport.mqtt_link")
    link.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not link.failure:
            assert not link.connected.is_set(), "it should not have connected"
            assert time.monotonic() < deadline, f"no diagnosis within {WAIT_S} s; log: {caplog.text}"
            time.sleep(0.05)
    finally:
        link.stop()
    assert link.failure in caplog.text
    return link.failure


def test_a_refused_port_says_nothing_listens_and_how_to_start_the_broker(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    message = failure_of(BrokerAddress("127.0.0.1", port), caplog)
    assert f"nothing listens on 127.0.0.1:{port}" in message
    assert "python -m broker" in message and "--broker" in message


def test_a_host_name_that_does_not_resolve_says_so(caplog: pytest.LogCaptureFixture) -> None:
    message = failure_of(BrokerAddress("no-such-broker.invalid", 1883), caplog)
    assert "'no-such-broker.invalid' does not resolve" in message and "--broker" in message


def test_tls_against_a_plain_port_says_it_is_plain(broker: Listeners, caplog: pytest.LogCaptureFixture) -> None:
    message = failure_of(BrokerAddress("127.0.0.1", broker.plain, tls_ca=str(broker.ca)), caplog)
    assert f"127.0.0.1:{broker.plain} speaks plain MQTT, not TLS" in message
    assert "TLS port" in message and "mqtt://" in message


def test_a_plain_client_on_the_tls_port_says_it_is_a_tls_port(broker: Listeners,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    message = failure_of(BrokerAddress("127.0.0.1", broker.tls), caplog)
    assert f"127.0.0.1:{broker.tls} is a TLS port" in message
    assert f"mqtts://127.0.0.1:{broker.tls}" in message and "--tls-ca" in message


def test_a_certificate_from_another_ca_names_the_ca_file(broker: Listeners, caplog: pytest.LogCaptureFixture) -> None:
    message = failure_of(BrokerAddress("127.0.0.1", broker.tls, tls_ca=str(broker.other_ca)), caplog)
    assert "certificate" in message and str(broker.other_ca) in message and "add-device" in message


def test_a_refused_login_names_the_user_and_the_fix(broker: Listeners, caplog: pytest.LogCaptureFixture) -> None:
    message = failure_of(BrokerAddress("127.0.0.1", broker.login, username="dev-1",
                                       password_file=str(broker.password)), caplog)
    assert "refused the login of 'dev-1'" in message and "--password-file" in message and "add-device" in message
    anonymous = failure_of(BrokerAddress("127.0.0.1", broker.login), caplog)
    assert "requires a login" in anonymous and "--username" in anonymous and "--password-file" in anonymous


def test_the_control_each_listener_takes_the_right_client(broker: Listeners) -> None:
    right = broker.password.with_name("right")
    right.write_text("right-password\n")
    right.chmod(0o600)
    for address in (BrokerAddress("127.0.0.1", broker.plain), BrokerAddress("localhost", broker.tls,
                                                                              tls_ca=str(broker.ca)),
                    BrokerAddress("127.0.0.1", broker.login, username="dev-1", password_file=str(right))):
        link = MqttLink("fedmq-test-control", address, [], lambda *_: None)
        link.start()
        try:
            assert link.wait_connected(WAIT_S), address
        finally:
            link.stop()
