"""The secure broker's files without a running broker: certificates, password file, ACL, config, permissions,
and the client side's TLS and login checks. tests/integration/test_security.py runs them against Mosquitto.

The tests of test_secure_broker.py that start processes or import TensorFlow (the unit tier does neither)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from broker import secure
from broker.secure import (
    COORDINATOR_USER, SecureBrokerError, SecureLayout, add_device, init_secure, list_devices,
    revoke_device,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ---- files and permissions ----------------------------------------------------------------------------------


def test_mosquitto_passwd_never_sees_the_password_on_its_command_line(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real_run = subprocess.run

    def spy(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        seen.append(list(args))
        return real_run(args, **kwargs)

    monkeypatch.setattr(secure.subprocess, "run", spy)
    line = secure.hash_password("dev-9", "correct horse battery staple", tmp_path)
    assert line.startswith("dev-9:$7$")
    assert seen and all("correct horse battery staple" not in " ".join(args) for args in seen)
    assert "-b" not in seen[0]
    assert list(tmp_path.iterdir()) == [], "the plain-text temporary file is gone"


def test_revoke_removes_the_login_and_lists_the_certificate(tmp_path: Path) -> None:
    root = tmp_path / "broker"
    init_secure(root)
    creds = add_device(root, "cam-1", client_cert=True)
    serial = load_cert(creds.cert).serial_number
    result = revoke_device(root, "cam-1")
    assert result.certificate_revoked and not result.broker_reloaded  # no broker runs from this directory
    layout = SecureLayout(root)
    assert "cam-1" not in layout.password_file.read_text() and not creds.directory.exists()
    crl = x509.load_pem_x509_crl(layout.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.is_signature_valid(load_cert(layout.ca_cert).public_key())
    with pytest.raises(SecureBrokerError, match="no device 'cam-1'"):
        revoke_device(root, "cam-1")
    with pytest.raises(SecureBrokerError, match="can't be revoked"):
        revoke_device(root, COORDINATOR_USER)


# ---- the client side: TLS files, password file, username rule ---------------------------------------------


def paho_client() -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t")


# ---- attacks (robustness testing) -----------------------------------------------------------------------------


# ---- client ids, message sizes, coordinator logins (issue 10) -------------------------------------------------


def _listener_blocks(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(lines) if line.startswith("listener ")]
    return {lines[i]: lines[i + 1:j] for i, j in zip(starts, [*starts[1:], len(lines)])}


def test_a_second_coordinator_login_for_concurrent_runs(tmp_path: Path) -> None:
    from broker.secure import add_coordinator, password_users

    root = tmp_path / "broker"
    init_secure(root)
    add_device(root, "pi-1")
    creds = add_coordinator(root, "coordinator-b")
    layout = SecureLayout(root)
    assert creds.password_file.is_file() and mode(creds.password_file) == 0o600
    assert "coordinator-b" in password_users(layout)
    acl = layout.acl_file.read_text()
    assert "user coordinator-b\ntopic readwrite fedmq/+/model/#" in acl and "user coordinator\n" in acl
    assert list_devices(root) == [("pi-1", False)], "a coordinator login is not a device"
    with pytest.raises(SecureBrokerError, match="coordinator"):
        add_device(root, "coordinator-b")
    with pytest.raises(SecureBrokerError, match="already exists"):
        add_coordinator(root, "pi-1")
    revoke_device(root, "coordinator-b")
    assert "coordinator-b" not in layout.acl_file.read_text() and "coordinator-b" not in password_users(layout)
    with pytest.raises(SecureBrokerError, match="can't be revoked"):
        revoke_device(root, "coordinator")
