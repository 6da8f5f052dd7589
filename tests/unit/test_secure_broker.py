"""The secure broker's files without a running broker: certificates, password file, ACL, config, permissions,
and the client side's TLS and login checks. tests/integration/test_security.py runs them against Mosquitto."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import stat
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from paho.mqtt.enums import CallbackAPIVersion

from broker.secure import (
    COORDINATOR_USER, SecureBrokerError, SecureLayout, SecureProfile, add_device, init_secure, list_devices,
    render_acl, render_secure_config,
)
from bench.attacks import Attack
from edge_client.security_flags import login_username
from federation.transport.mqtt_link import BrokerAddress, CredentialsError, configure_security, read_password
from federation.config.settings import ConfigError, load_settings


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("secure") / "broker"
    init_secure(root, hostnames=["broker.lan", "10.1.2.3"], topic_prefix="org/fedmq")
    add_device(root, "pi-1")
    add_device(root, "pi-2", client_cert=True)
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ---- files and permissions ----------------------------------------------------------------------------------


def test_secrets_are_readable_by_the_owner_only(state: Path) -> None:
    layout = SecureLayout(state)
    assert mode(state) == 0o700 and mode(state / "private") == 0o700 and mode(state / "clients") == 0o700
    for secret in (layout.ca_key, layout.server_key, layout.password_file, layout.acl_file, layout.profile,
                   layout.client_dir("pi-1") / "password", layout.client_dir("pi-2") / "client.key",
                   layout.client_dir(COORDINATOR_USER) / "password"):
        assert mode(secret) == 0o600, secret


def test_password_file_holds_hashes_only(state: Path) -> None:
    layout = SecureLayout(state)
    lines = layout.password_file.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == [COORDINATOR_USER, "pi-1", "pi-2"]
    for user, line in zip([COORDINATOR_USER, "pi-1", "pi-2"], lines):
        password = (layout.client_dir(user) / "password").read_text().strip()
        assert len(password) >= 40
        assert line.startswith(f"{user}:$7$") and password not in line


def test_certificates_chain_to_the_ca_with_the_right_names_and_uses(state: Path) -> None:
    layout = SecureLayout(state)
    ca = load_cert(layout.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = load_cert(layout.server_cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "broker.lan"} <= set(san.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")} <= set(
        san.get_values_for_type(x509.IPAddress))
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client = load_cert(layout.client_dir("pi-2") / "client.crt")
    client.verify_directly_issued_by(ca)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (layout.client_dir("pi-2") / "ca.crt").read_bytes() == layout.ca_cert.read_bytes()
    assert not (layout.client_dir("pi-1") / "client.crt").exists()


def test_acl_confines_devices_to_their_own_topics() -> None:
    acl = render_acl("org/fedmq")
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "user coordinator",
        "topic readwrite org/fedmq/+/model/#", "topic readwrite org/fedmq/+/coordinator/#",
        "topic readwrite org/fedmq/+/end", "topic readwrite org/fedmq/+/metrics/#",
        "topic read org/fedmq/+/update/#", "topic read org/fedmq/+/client/#",
        "pattern write org/fedmq/+/update/%u/#", "pattern readwrite org/fedmq/+/client/%u/#",
        "pattern read org/fedmq/+/model/#", "pattern read org/fedmq/+/end", "pattern read org/fedmq/+/coordinator/#",
    ]
    assert not any("write" in line and "%u" not in line for line in lines[8:]), "devices write only own topics"


def test_config_has_no_anonymous_access_and_plain_only_on_loopback(state: Path) -> None:
    layout = SecureLayout(state)
    text = render_secure_config(layout, SecureProfile.load(layout), plain_port=1999, tls_port=2000, mtls_port=2001)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "allow_anonymous false" in lines and "allow_anonymous true" not in text
    assert lines.index("per_listener_settings false") < lines.index("listener 1999 127.0.0.1")
    listeners = [line for line in lines if line.startswith("listener")]
    assert listeners == ["listener 1999 127.0.0.1", "listener 2000", "listener 2001"]
    after_tls = lines[lines.index("listener 2000"):]
    assert f"certfile {layout.server_cert}" in after_tls and "tls_version tlsv1.2" in after_tls
    mtls = lines[lines.index("listener 2001"):]
    assert "require_certificate true" in mtls and f"crlfile {layout.crl}" in mtls
    assert f"password_file {layout.password_file}" in lines and f"acl_file {layout.acl_file}" in lines
    without = render_secure_config(layout, SecureProfile.load(layout), mtls_port=0)
    assert "require_certificate" not in without and "listener 8884" not in without


def test_profile_and_device_listing(state: Path) -> None:
    profile = SecureProfile.load(SecureLayout(state))
    assert profile.topic_prefix == "org/fedmq" and profile.tls_port == 8883 and profile.mtls_port == 8884
    assert list_devices(state) == [("pi-1", False), ("pi-2", True)]


@pytest.mark.parametrize("name,match", [("coordinator", "coordinator's username"), ("a/b", "not usable"),
                                        ("pi-1", "already exists"), ("+", "not usable")])
def test_bad_or_duplicate_device_names_are_refused(state: Path, name: str, match: str) -> None:
    with pytest.raises((SecureBrokerError, ValueError), match=match):
        add_device(state, name)


def test_init_refuses_to_overwrite_and_commands_need_a_state_dir(state: Path, tmp_path: Path) -> None:
    with pytest.raises(SecureBrokerError, match="already holds a secure broker"):
        init_secure(state)
    with pytest.raises(SecureBrokerError, match="init-secure"):
        add_device(tmp_path / "nothing-here", "pi-1")


# ---- the client side: TLS files, password file, username rule ---------------------------------------------


def paho_client() -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t")


def test_password_is_read_from_its_file_and_open_permissions_are_flagged(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "password"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    assert read_password(str(path)) == "s3cret"
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_password(str(path))
    assert "readable by other users" in caplog.text
    with pytest.raises(CredentialsError, match="missing.*can't be read"):
        read_password(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialsError, match="empty"):
        read_password(str(tmp_path / "empty"))


@pytest.mark.parametrize("address,match", [
    (BrokerAddress(tls_ca="/nonexistent/ca.crt"), "CA certificate file /nonexistent/ca.crt does not exist"),
    (BrokerAddress(tls_cert="c.crt", tls_key="c.key"), "needs tls_ca"),
    (BrokerAddress(tls_ca="ca.crt", tls_cert="c.crt"), "both tls_cert and tls_key"),
    (BrokerAddress(password_file="p"), "needs a username"),
    (BrokerAddress(username="u", password_file="/nonexistent/pw"), "/nonexistent/pw can't be read"),
])
def test_unusable_tls_or_login_settings_are_named(address: BrokerAddress, match: str) -> None:
    with pytest.raises(CredentialsError, match=match):
        configure_security(paho_client(), address)


def test_configure_security_loads_real_files(state: Path) -> None:
    creds = SecureLayout(state).client_dir("pi-2")
    address = BrokerAddress(tls_ca=str(creds / "ca.crt"), tls_cert=str(creds / "client.crt"),
                            tls_key=str(creds / "client.key"), username="pi-2", password_file=str(creds / "password"))
    configure_security(paho_client(), address)
    assert str(address).startswith("mqtts://pi-2@localhost:1883")
    with pytest.raises(CredentialsError, match="TLS files unusable"):
        configure_security(paho_client(), BrokerAddress(tls_ca=str(creds / "password")))


def test_a_device_logs_in_with_its_client_id() -> None:
    def args(username: str = "", password_file: str = "") -> argparse.Namespace:
        return argparse.Namespace(username=username, password_file=password_file)

    assert login_username(args(password_file="pw"), "pi-1") == "pi-1"
    assert login_username(args("pi-1", "pw"), "pi-1") == "pi-1"
    assert login_username(args(), "pi-1") == ""
    with pytest.raises(ValueError, match="--username 'pi-2' differs from --client-id 'pi-1'"):
        login_username(args("pi-2", "pw"), "pi-1")


def test_edge_client_refuses_a_username_other_than_its_client_id(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from edge_client.__main__ import main

    code = main(["--client-id", "pi-1", "--username", "pi-2", "--password-file", str(tmp_path / "pw"),
                 "--dataset", str(tmp_path / "no-data")])
    assert code == 2
    assert "differs from --client-id 'pi-1'" in capsys.readouterr().err


def test_settings_check_tls_and_login_pairs() -> None:
    for overrides, match in [({"broker.tls_cert": "c"}, "tls_cert and tls_key"),
                             ({"broker.tls_cert": "c", "broker.tls_key": "k"}, "needs tls_ca"),
                             ({"broker.username": "coordinator"}, "username and password_file"),
                             ({"aggregation.rule": "multi_krum", "quorum.min_clients": 4}, "at least 5 updates"),
                             ({"aggregation.dp_noise_multiplier": 1.0, "aggregation.rule": "median",
                               "aggregation.clip_norm": 1.0}, "needs rule = \"fedavg\""),
                             ({"aggregation.rule": "krum"}, "not one of")]:
        with pytest.raises(ConfigError, match=match):
            load_settings(None, overrides)
    ok = load_settings(None, {"broker.tls_ca": "ca.crt", "broker.username": "coordinator",
                              "broker.password_file": "pw", "aggregation.rule": "multi_krum",
                              "quorum.min_clients": 5})
    assert BrokerAddress.from_settings(ok.broker) == BrokerAddress(tls_ca="ca.crt", username="coordinator",
                                                                   password_file="pw")


# ---- attacks (robustness testing) -----------------------------------------------------------------------------


def test_attacks_transform_the_delta() -> None:
    import numpy as np

    g = [np.array([1.0, 2.0], np.float32), np.array([7], np.int64)]
    t = [np.array([1.5, 1.0], np.float32), np.array([9], np.int64)]
    scaled = Attack.parse("scale:50").apply(g, t)
    np.testing.assert_allclose(scaled[0], [26.0, -48.0])
    assert scaled[0].dtype == np.float32 and scaled[1] is t[1]
    np.testing.assert_allclose(Attack.parse("sign_flip").apply(g, t)[0], [0.5, 3.0])
    np.testing.assert_allclose(Attack.parse("sign_flip:4").apply(g, t)[0], [-1.0, 6.0])
    for bad in ("scale", "scale:x", "sign_flip:-1", "flip", ""):
        with pytest.raises(ValueError, match="scale:F"):
            Attack.parse(bad)


def test_coordinator_short_flags_set_the_broker_login(capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.__main__ import main

    assert main(["run", "--username", "coordinator"]) == 2  # no --password-file: refused before anything runs
    assert "username and password_file go together" in capsys.readouterr().err
    assert main(["run", "--tls-cert", "c.crt", "--tls-key", "c.key"]) == 2
    assert "tls_cert needs tls_ca" in capsys.readouterr().err


# ---- client ids, message sizes, coordinator logins (issue 10) -------------------------------------------------


def _listener_blocks(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(lines) if line.startswith("listener ")]
    return {lines[i]: lines[i + 1:j] for i, j in zip(starts, [*starts[1:], len(lines)])}


def test_every_listener_replaces_the_client_id_with_the_username(state: Path) -> None:
    layout = SecureLayout(state)
    blocks = _listener_blocks(render_secure_config(layout, SecureProfile.load(layout), plain_port=1999,
                                                   tls_port=2000, mtls_port=2001))
    assert list(blocks) == ["listener 1999 127.0.0.1", "listener 2000", "listener 2001"]
    for listener, options in blocks.items():  # a listener option in Mosquitto 2.0.11, even without per-listener settings
        assert "use_username_as_clientid true" in options, listener


def test_message_sizes_are_capped_from_max_payload(state: Path) -> None:
    layout = SecureLayout(state)
    text = render_secure_config(layout, SecureProfile.load(layout), max_payload_bytes=3 * 1024 * 1024)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert f"message_size_limit {3 * 1024 * 1024}" in lines
    packet = next(int(line.split()[1]) for line in lines if line.startswith("max_packet_size "))
    assert 3 * 1024 * 1024 < packet <= 3 * 1024 * 1024 + 4096, "room for the topic and headers, no more"
    assert lines.index(f"message_size_limit {3 * 1024 * 1024}") < lines.index(next(
        line for line in lines if line.startswith("listener "))), "global options come before the listeners"
    default = render_secure_config(layout, SecureProfile.load(layout))
    assert f"message_size_limit {64 * 1024 * 1024}" in default and "message_size_limit 0" not in default
    with pytest.raises(SecureBrokerError, match="max_payload"):
        render_secure_config(layout, SecureProfile.load(layout), max_payload_bytes=0)


def test_serve_takes_the_cap_from_the_flag_or_the_config_file(tmp_path: Path) -> None:
    from broker.secure_cli import build_serve_parser, max_payload_bytes

    toml = tmp_path / "fleet.toml"
    toml.write_text("[broker]\nmax_payload_mb = 1.5\n")
    parse = build_serve_parser().parse_args
    assert max_payload_bytes(parse(["--secure", "--config", str(toml)])) == int(1.5 * 1024 * 1024)
    assert max_payload_bytes(parse(["--secure", "--config", str(toml), "--max-payload-mb", "4"])) == 4 * 1024 * 1024
    assert max_payload_bytes(parse(["--secure"])) == 64 * 1024 * 1024, "no settings file: the default"
    with pytest.raises(SecureBrokerError, match="does not exist"):
        max_payload_bytes(parse(["--secure", "--config", str(tmp_path / "none.toml")]))
    toml.write_text("[broker]\nmax_payload_mb = -1\n")
    with pytest.raises(SecureBrokerError, match="max_payload_mb"):
        max_payload_bytes(parse(["--secure", "--config", str(toml)]))


@pytest.mark.parametrize("cert,key,ca", [("c.crt", "", "ca.crt"), ("", "c.key", "ca.crt"), ("c.crt", "c.key", "")])
def test_the_tls_rule_is_one_rule_for_settings_and_connections(cert: str, key: str, ca: str) -> None:
    from federation.config.settings import tls_problem

    problem = tls_problem(cert, key, ca)
    assert problem
    with pytest.raises(ConfigError) as config_error:
        load_settings(None, {"broker.tls_cert": cert, "broker.tls_key": key, "broker.tls_ca": ca})
    assert problem in str(config_error.value)
    with pytest.raises(CredentialsError) as connect_error:
        configure_security(paho_client(), BrokerAddress(tls_ca=ca, tls_cert=cert, tls_key=key))
    assert str(connect_error.value) == problem
    assert tls_problem("c.crt", "c.key", "ca.crt") == tls_problem("", "", "") == ""
