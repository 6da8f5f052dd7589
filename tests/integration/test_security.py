"""The secure broker profile against real Mosquitto with TLS: logins refused, ACLs enforced, forged updates
never aggregated. The broker is `python -m broker --secure` on a state directory made by the operator commands."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import free_port
from broker.mosquitto_process import port_accepts
from broker.secure import SecureLayout, issue_certificate, make_ca
from demo.local_federation import REPO_ROOT, LocalFederation
from federation.protocol.messages import GlobalModel, Update, decode_message

pytestmark = pytest.mark.timeout(300)

PREFIX = "fedmq"
WAIT_S = 10.0
MAX_PAYLOAD_MB = 2


@dataclass
class SecureBroker:
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    plain_port: int
    tls_port: int
    mtls_port: int

    @property
    def layout(self) -> SecureLayout:
        return SecureLayout(self.root)

    def creds(self, name: str) -> Path:
        return self.layout.client_dir(name)

    def password(self, name: str) -> str:
        return (self.creds(name) / "password").read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """init-secure, add-device for dev-1..3, cam-1 (client certificate) and gone-1, then `--secure`."""
    base = tmp_path_factory.mktemp("secure")
    root = base / "state"
    plain, tls, mtls = free_port(), free_port(), free_port()
    out = run_cli("init-secure", "--dir", str(root), "--port", str(plain), "--tls-port", str(tls),
                  "--mtls-port", str(mtls))
    assert out.returncode == 0, out.stderr
    for name in ("dev-1", "dev-2", "dev-3", "gone-1"):
        out = run_cli("add-device", name, "--dir", str(root))
        assert out.returncode == 0, out.stderr
        assert "--password-file" in out.stdout and (root / "clients" / name / "password").read_text().strip() \
            not in out.stdout, "the password itself is never printed"
    out = run_cli("add-device", "cam-1", "--client-cert", "--dir", str(root))
    assert out.returncode == 0 and "--tls-cert" in out.stdout and str(mtls) in out.stdout, out.stdout
    log_path = base / "broker.log"
    config = base / "fleet.toml"  # the fleet's updates are ~0.9 MB: cap messages at 2 MiB
    config.write_text(f"[broker]\nmax_payload_mb = {MAX_PAYLOAD_MB}\n")
    with log_path.open("wb") as fh:
        process = subprocess.Popen([sys.executable, "-m", "broker", "--secure", "--dir", str(root), "--config",
                                    str(config)], cwd=REPO_ROOT,
                                   stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    sb = SecureBroker(root, process, log_path, plain, tls, mtls)
    try:
        deadline = time.monotonic() + 20
        while not all(port_accepts("127.0.0.1", p) for p in (plain, tls, mtls)):
            assert process.poll() is None, f"broker exited:\n{sb.log()}"
            assert time.monotonic() < deadline, f"broker ports not open:\n{sb.log()}"
            time.sleep(0.1)
        yield sb
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


# ---- a plain paho client that tries to log in -----------------------------------------------------------------


@dataclass
class Peer:
    client: mqtt.Client
    connected: bool = False
    failure: str = ""
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    got: threading.Event = field(default_factory=threading.Event)

    def subscribe(self, *topics: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe([(t, 1) for t in topics])
        assert done.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)

    def topics(self) -> list[str]:
        return [m.topic for m in list(self.messages)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def login(port: int, *, name: str = "peer", username: str | None = None, password: str | None = None,
          ca: Path | None = None, cert: Path | None = None, key: Path | None = None, client_id: str | None = None,
          will: tuple[str, bytes] | None = None) -> Peer:
    """Connect and wait for the outcome: peer.connected, or peer.failure (refused, TLS error, connection lost)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{name}-{os.getpid()}")
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    peer = Peer(client)
    outcome = threading.Event()

    def on_connect(c: mqtt.Client, u: object, f: object, reason: mqtt.ReasonCode, p: object) -> None:
        if reason.is_failure:
            peer.failure = f"refused: {reason}"
        else:
            peer.connected = True
        outcome.set()

    def on_disconnect(c: mqtt.Client, u: object, f: object, reason: mqtt.ReasonCode, p: object) -> None:
        peer.failure = peer.failure or f"connection lost: {reason}"
        peer.connected = False
        outcome.set()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        peer.messages.append(msg)
        peer.got.set()

    client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
    client.reconnect_delay_set(60, 60)  # never during a test
    if ca:
        client.tls_set(ca_certs=str(ca), certfile=str(cert) if cert else None, keyfile=str(key) if key else None)
    if username is not None:
        client.username_pw_set(username, password)
    try:
        client.connect("localhost", port, keepalive=30)
    except (ssl.SSLError, OSError) as exc:
        peer.failure = f"tls: {exc}"
        return peer
    client.loop_start()
    if not outcome.wait(WAIT_S):
        peer.failure = "no answer"
    if peer.connected:
        time.sleep(0.3)  # TLS 1.3: a refused client certificate may only show up after CONNACK... or as a drop
    return peer


def device_login(broker: SecureBroker, name: str, port: int | None = None, **kw: object) -> Peer:
    return login(port or broker.tls_port, name=name, username=name, password=broker.password(name),
                 ca=broker.creds(name) / "ca.crt", **kw)


def coordinator_login(broker: SecureBroker, **kw: object) -> Peer:
    return login(broker.plain_port, name="coordinator", username="coordinator", password=broker.password("coordinator"),
                 **kw)


# ---- refused logins ----------------------------------------------------------------------------------------------


def test_anonymous_and_wrong_password_are_refused(broker: SecureBroker) -> None:
    ca = broker.creds("dev-1") / "ca.crt"
    anonymous = login(broker.tls_port, ca=ca)
    assert not anonymous.connected and anonymous.failure == "refused: Not authorized"
    anonymous_plain = login(broker.plain_port)
    assert not anonymous_plain.connected and anonymous_plain.failure == "refused: Not authorized"
    wrong = login(broker.tls_port, username="dev-1", password="not-the-password", ca=ca)
    assert not wrong.connected and wrong.failure.startswith("refused:")
    unknown = login(broker.tls_port, username="nobody", password=broker.password("dev-1"), ca=ca)
    assert not unknown.connected and unknown.failure.startswith("refused:")
    ok = device_login(broker, "dev-1")  # the control: the right password gets in
    assert ok.connected, ok.failure
    ok.close()


def test_plain_listener_is_bound_to_loopback_only(broker: SecureBroker) -> None:
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) == broker.plain_port:
                listening.append(address)
    assert listening == ["0100007F"], listening  # 127.0.0.1 (little-endian hex), and no IPv6 socket


def test_broker_certificate_is_checked_by_clients(broker: SecureBroker, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(make_ca("someone else's CA")[0])
    peer = login(broker.tls_port, username="dev-1", password=broker.password("dev-1"), ca=other_ca)
    assert not peer.connected and "CERTIFICATE_VERIFY_FAILED" in peer.failure


def test_mutual_tls_needs_a_certificate_from_our_ca(broker: SecureBroker, tmp_path: Path) -> None:
    creds = broker.creds("cam-1")
    ok = device_login(broker, "cam-1", broker.mtls_port, cert=creds / "client.crt", key=creds / "client.key")
    assert ok.connected, ok.failure
    ok.close()
    no_cert = device_login(broker, "cam-1", broker.mtls_port)
    assert not no_cert.connected and no_cert.failure
    other_ca_pem, other_ca_key = make_ca("rogue CA")
    cert_pem, key_pem, _ = issue_certificate(other_ca_pem, other_ca_key, "cam-1", client=True)
    (tmp_path / "c.crt").write_bytes(cert_pem)
    (tmp_path / "c.key").write_bytes(key_pem)
    foreign = device_login(broker, "cam-1", broker.mtls_port, cert=tmp_path / "c.crt", key=tmp_path / "c.key")
    assert not foreign.connected and foreign.failure, "a certificate from another CA must not get in"
    assert "certificate verify failed" in broker.log()


def test_revoked_device_is_cut_off_and_refused(broker: SecureBroker, tmp_path: Path) -> None:
    password = broker.password("gone-1")
    session = device_login(broker, "gone-1")
    assert session.connected, session.failure
    out = run_cli("revoke-device", "gone-1", "--dir", str(broker.root))
    assert out.returncode == 0, out.stderr
    assert "reloaded its password file" in out.stdout, out.stdout
    deadline = time.monotonic() + WAIT_S
    while session.connected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session.connected, "the revoked device's open session was closed"
    session.close()
    again = login(broker.tls_port, name="gone-again", username="gone-1", password=password,
                  ca=broker.layout.ca_cert)
    assert not again.connected and again.failure.startswith("refused:")
    assert "gone-1" not in run_cli("list-devices", "--dir", str(broker.root)).stdout


# ---- ACLs ----------------------------------------------------------------------------------------------------------


def test_devices_publish_and_read_only_their_own_topics(broker: SecureBroker) -> None:
    run = f"{PREFIX}/acl"
    coordinator = coordinator_login(broker)
    other = device_login(broker, "dev-2")
    rogue = device_login(broker, "dev-1")
    try:
        assert coordinator.connected and other.connected and rogue.connected
        coordinator.subscribe(f"{PREFIX}/+/update/+", f"{PREFIX}/+/model/#", f"{PREFIX}/+/end",
                              f"{PREFIX}/+/coordinator/#", f"{PREFIX}/+/client/+/status")
        other.subscribe(f"{PREFIX}/#")
        for topic in (f"{run}/update/dev-2", f"{run}/model/global", f"{run}/model/deploy", f"{run}/end",
                      f"{run}/coordinator/state", f"{run}/client/dev-2/status", f"{run}/metrics"):
            rogue.publish(topic, b"forged")
        rogue.publish(f"{run}/update/dev-1", b"own update")      # allowed: the control
        rogue.publish(f"{run}/client/dev-1/status", b"own status")
        deadline = time.monotonic() + WAIT_S
        while len(coordinator.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything forged would have arrived by now, in order, before the controls
        assert sorted(coordinator.topics()) == [f"{run}/client/dev-1/status", f"{run}/update/dev-1"]
        assert other.topics() == [], "a device reads neither forged topics nor another device's update"
        coordinator.publish(f"{run}/model/global", b"the real model")
        assert other.got.wait(WAIT_S) and other.topics() == [f"{run}/model/global"]
    finally:
        for peer in (coordinator, other, rogue):
            peer.close()


# ---- client ids tied to logins ---------------------------------------------------------------------------------------


def test_a_device_cannot_take_over_the_client_id_of_the_coordinator_or_another_device(broker: SecureBroker) -> None:
    """Issue 10: with a valid login and the client id `fedmq-coordinator-<run>` (or `fedmq-client-<other>`) a device
    disconnected the coordinator (or that device, whose last will "offline" the broker then published)."""
    run = f"{PREFIX}/takeover"
    coordinator = coordinator_login(broker, client_id="fedmq-coordinator-takeover",
                                    will=(f"{run}/coordinator/state", b"coordinator offline"))
    victim = device_login(broker, "dev-2", client_id="fedmq-client-dev-2", will=(f"{run}/client/dev-2/status",
                                                                                  b"dev-2 offline"))
    attackers: list[Peer] = []
    try:
        assert coordinator.connected and victim.connected, (coordinator.failure, victim.failure)
        coordinator.subscribe(f"{run}/client/+/status")
        for stolen in ("fedmq-coordinator-takeover", "fedmq-client-dev-2"):
            attackers.append(device_login(broker, "dev-1", client_id=stolen))
            assert attackers[-1].connected, f"dev-1 can still log in (as itself): {attackers[-1].failure}"
        time.sleep(1.0)  # a takeover disconnects the victim at once
        assert coordinator.connected, f"the coordinator was disconnected: {coordinator.failure}"
        assert victim.connected, f"dev-2 was disconnected: {victim.failure}"
        assert not any(m.payload == b"dev-2 offline" for m in coordinator.messages), "dev-2's last will was published"
        victim.publish(f"{run}/client/dev-2/status", b"dev-2 still here")  # and both still work
        assert coordinator.got.wait(WAIT_S) and coordinator.messages[-1].payload == b"dev-2 still here"
    finally:
        for peer in (*attackers, victim, coordinator):
            peer.close()


def test_one_login_is_one_connection_so_a_second_coordinator_gets_its_own_login(broker: SecureBroker) -> None:
    """The price of tying client ids to logins: two processes on one login knock each other off. A second coordinator
    running at the same time gets its own login (`add-coordinator`), with the coordinator's permissions."""
    first = coordinator_login(broker, client_id="fedmq-coordinator-run-a")
    out = run_cli("add-coordinator", "coordinator-b", "--dir", str(broker.root))
    assert out.returncode == 0 and "--username coordinator-b" in out.stdout, out.stdout + out.stderr
    second = login(broker.plain_port, name="coordinator-b", username="coordinator-b",
                   password=broker.password("coordinator-b"), client_id="fedmq-coordinator-run-b")
    try:
        assert first.connected and second.connected, (first.failure, second.failure)
        second.subscribe(f"{PREFIX}/+/model/global")
        first.publish(f"{PREFIX}/run-a/model/global", b"from a")
        second.publish(f"{PREFIX}/run-b/model/global", b"from b")  # the ACL lets coordinator-b publish models
        deadline = time.monotonic() + WAIT_S
        while len(second.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(m.payload for m in second.messages) == [b"from a", b"from b"]
        time.sleep(0.5)
        assert first.connected and second.connected, "two coordinator logins coexist"
        again = coordinator_login(broker, client_id="fedmq-coordinator-run-c")  # the first login, a second time
        try:
            assert again.connected, again.failure
            time.sleep(0.5)
            assert not first.connected, "one login, one connection: the newer one wins"
        finally:
            again.close()
    finally:
        first.close()
        second.close()
        run_cli("revoke-device", "coordinator-b", "--dir", str(broker.root))


# ---- message size cap ---------------------------------------------------------------------------------------------


def _publish_outcome(peer: Peer, topic: str, payload: bytes) -> str:
    """'acknowledged', 'disconnected' or 'no answer' for one QoS 1 publish."""
    info = peer.client.publish(topic, payload, qos=1)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if info.is_published():
            return "acknowledged"
        if not peer.connected:
            return "disconnected"
        time.sleep(0.05)
    return "no answer"


def test_oversized_publishes_are_refused_on_every_listener_and_normal_updates_pass(broker: SecureBroker) -> None:
    """Issue 10: the secure broker acknowledged (and delivered) a 100 MiB publish although sizes are capped."""
    run = f"{PREFIX}/sizes"
    watcher = coordinator_login(broker)
    cam = broker.creds("cam-1")
    senders = {  # one device per listener: plain (loopback), TLS, mutual TLS
        "plain": ("dev-3", lambda: login(broker.plain_port, name="dev-3", username="dev-3",
                                         password=broker.password("dev-3"))),
        "tls": ("dev-1", lambda: device_login(broker, "dev-1")),
        "mtls": ("cam-1", lambda: device_login(broker, "cam-1", broker.mtls_port, cert=cam / "client.crt",
                                               key=cam / "client.key")),
    }
    cap = MAX_PAYLOAD_MB * 1024 * 1024
    normal = os.urandom(900_800)  # a default model's update
    just_over = os.urandom(cap + 1)  # dropped: MQTT 3.1.1 can't say so, the broker acknowledges and delivers nothing
    far_over = os.urandom(cap + 64 * 1024)  # its sender is disconnected before the broker reads it
    try:
        assert watcher.connected, watcher.failure
        watcher.subscribe(f"{run}/update/+")
        for listener, (name, connect) in senders.items():
            peer = connect()
            try:
                assert peer.connected, f"{listener}: {peer.failure}"
                assert _publish_outcome(peer, f"{run}/update/{name}", normal) == "acknowledged", listener
                assert _publish_outcome(peer, f"{run}/update/{name}", just_over) != "no answer", listener
                outcome = _publish_outcome(peer, f"{run}/update/{name}", far_over)
                assert outcome == "disconnected", f"{listener}: an oversized publish was {outcome}"
            finally:
                peer.close()
        time.sleep(1.0)
        sizes = [(m.topic, len(m.payload)) for m in watcher.messages]
        assert sizes == [(f"{run}/update/{n}", len(normal)) for n, _ in senders.values()], sizes
        assert broker.log().count("disconnected due to oversize packet") >= 3
    finally:
        watcher.close()


# ---- a real federation over TLS with a rogue device --------------------------------------------------------------


class Rogue:
    """dev-2's credentials in the hands of an attacker: when round 1's model arrives it publishes a forged update
    on dev-1's topic, a forged global model, and on its own topic an update that claims to come from dev-1."""

    def __init__(self, broker: SecureBroker, run: str) -> None:
        self.run = run
        self.peer = device_login(broker, "dev-2")
        assert self.peer.connected, self.peer.failure
        self.done = threading.Event()
        self.forged_model_seen = False
        self.peer.client.on_message = self._on_message
        self.peer.subscribe(f"{PREFIX}/{run}/model/global")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        message = decode_message(msg.payload)
        if isinstance(message, GlobalModel) and message.sender != "coordinator":
            self.forged_model_seen = True
        if not isinstance(message, GlobalModel) or message.round != 1 or self.done.is_set():
            return
        self.done.set()
        base = f"{PREFIX}/{self.run}"
        junk = [(name, np.full_like(w, 1e3)) for name, w in message.tensors]

        def update(sender: str) -> bytes:
            return Update(run=self.run, round=1, sender=sender, num_examples=10**6, metrics={},
                          tensors=junk).encode()

        forged_model = GlobalModel(run=self.run, round=2, sender="rogue", model=message.model, train=message.train,
                                   tensors=junk, total_rounds=message.total_rounds)
        threading.Thread(target=lambda: [
            client.publish(f"{base}/update/dev-1", update("dev-1"), qos=1),        # denied by the ACL
            client.publish(f"{base}/model/global", forged_model.encode(), qos=1, retain=True),  # denied
            client.publish(f"{base}/update/dev-2", update("dev-1"), qos=1),        # reaches the coordinator
        ], daemon=True).start()


def test_federation_over_tls_never_aggregates_forged_updates(broker: SecureBroker, tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "fed", run_name="sec", port=broker.tls_port)
    rogue = Rogue(broker, "sec")
    try:
        coordinator = broker.creds("coordinator")
        fed.start_coordinator({
            "broker.host": "localhost", "broker.tls_ca": coordinator / "ca.crt", "broker.username": "coordinator",
            "broker.password_file": coordinator / "password", "training.rounds": 2, "quorum.min_clients": 2,
            "quorum.round_deadline_s": 120, "evaluation.max_examples": 300, "deploy.enabled": "false",
        })
        data = ["--dataset", "fashion_mnist", "--max-examples", "1200"]
        dev1 = broker.creds("dev-1")
        fed.start_client("dev-1", [*data, "--partition", "1/2", "--broker", "localhost", "--tls-ca",
                                   str(dev1 / "ca.crt"), "--password-file", str(dev1 / "password")])
        cam = broker.creds("cam-1")
        fed.start_client("cam-1", [*data, "--partition", "2/2", "--broker", "localhost", "--port",
                                   str(broker.mtls_port), "--tls-ca", str(cam / "ca.crt"), "--username", "cam-1",
                                   "--password-file", str(cam / "password"), "--tls-cert", str(cam / "client.crt"),
                                   "--tls-key", str(cam / "client.key")])
        codes = fed.wait_all(240)
        assert codes == {"coordinator": 0, "dev-1": 0, "cam-1": 0}, codes
        assert rogue.done.is_set(), "the rogue saw round 1's model and attacked"
    finally:
        rogue.peer.close()
        fed.stop()
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["client_ids"] == ["cam-1", "dev-1"] and r["clients"] == 2
    # The update sent on dev-2's own topic naming dev-1 was rejected; the one sent on dev-1's topic never arrived
    # (else dev-1's real update would have been rejected as a duplicate, or the forgery aggregated).
    assert rows[0]["rejected"] == {"sender_mismatch": 1}
    assert rows[1]["rejected"] == {}
    assert not rogue.forged_model_seen, "the broker let a device publish a global model"
    log = fed.procs["coordinator"].log_path.read_text()
    assert "rejected a message from dev-2 (sender_mismatch)" in log
    assert "connected to mqtts://coordinator@localhost" in log
    assert rows[-1]["test_accuracy"] > 0.3, "the forged 1e3-valued tensors never reached the model"


def test_edge_client_with_a_wrong_password_exits_with_a_clear_error(broker: SecureBroker, tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    out = subprocess.run([sys.executable, "-m", "edge_client", "--broker", "localhost", "--port",
                          str(broker.tls_port), "--client-id", "dev-3", "--tls-ca", str(broker.layout.ca_cert),
                          "--password-file", str(wrong), "--dataset", "fashion_mnist", "--max-examples", "50"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 4, out.stdout + out.stderr
    assert "refused the login of 'dev-3'" in out.stdout + out.stderr
    assert "not-the-password" not in out.stdout + out.stderr


def test_passwords_are_not_in_process_listings(broker: SecureBroker) -> None:
    secrets_ = [broker.password(n) for n in ("coordinator", "dev-1", "dev-2", "cam-1")]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert not any(s in cmdline for s in secrets_), f"a password is on the command line of pid {pid}"


def test_coordinator_with_a_wrong_password_stops_with_a_clear_error(broker: SecureBroker, tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    out = subprocess.run([sys.executable, "-m", "coordinator", "--broker.host", "localhost", "--broker.port",
                          str(broker.tls_port), "--tls-ca", str(broker.layout.ca_cert), "--username", "coordinator",
                          "--password-file", str(wrong), "--run.output_dir", str(tmp_path / "runs"),
                          "--evaluation.max_examples", "100"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "refused the coordinator's login" in out.stderr


def test_differential_privacy_reports_the_epsilon_spent(federation: LocalFederation) -> None:
    """A real run with central DP: every round's metrics and the summary carry dp-accounting's epsilon."""
    from dp_accounting import dp_event, rdp

    fed = federation
    fed.start_coordinator({"training.rounds": 2, "quorum.min_clients": 2, "quorum.round_deadline_s": 120,
                           "evaluation.max_examples": 300, "deploy.enabled": "false", "export.tflite": [],
                           "aggregation.clip_norm": 3.0, "aggregation.dp_noise_multiplier": 0.5,
                           "aggregation.dp_total_clients": 8})
    for k in (1, 2):
        fed.start_client(f"dp-{k}", ["--dataset", "fashion_mnist", "--partition", f"{k}/2", "--max-examples", "600"])
    codes = fed.wait_all(240)
    assert codes == {"coordinator": 0, "dp-1": 0, "dp-2": 0}, codes
    reference = rdp.RdpAccountant()
    epsilons = []
    for row in fed.metrics():
        reference.compose(dp_event.PoissonSampledDpEvent(0.25, dp_event.GaussianDpEvent(0.5)))
        agg = row["aggregation"]
        assert agg["dp_sampling_rate"] == 0.25 and agg["dp_noise_std"] == pytest.approx(0.5 * 3.0 / 2)
        assert agg["dp_epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-4)
        epsilons.append(agg["dp_epsilon"])
    assert len(epsilons) == 2 and epsilons[0] < epsilons[1]
    summary = fed.summary()
    assert summary["aggregation"]["rule"] == "fedavg" and summary["aggregation"]["dp_epsilon"] == epsilons[-1]
    assert "spent epsilon" in fed.procs["coordinator"].log_path.read_text()
