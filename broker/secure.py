"""The secure broker profile: a private CA, server and device certificates, Mosquitto password and ACL files.

Everything lives in one 0700 state directory outside the repository; `python -m broker init-secure` etc. call this."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.errors import FedmqError
from federation.protocol.topics import RunTopics, check_level

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger(__name__)

SECURE_TEMPLATE = Path(__file__).with_name("mosquitto-secure.conf")
COORDINATOR_USER = "coordinator"
DEFAULT_TLS_PORT = 8883
DEFAULT_MTLS_PORT = 8884
DEFAULT_PLAIN_PORT = 1883
CA_DAYS = 3650
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024  # [broker] max_payload_mb of config/default.toml
# max_packet_size = the payload cap plus room for the rest of a PUBLISH packet: the topic (fedmq's are under 300
# bytes), the packet id, the fixed header and MQTT 5 properties. A payload over the cap that fits this room is
# dropped by message_size_limit instead (acknowledged to an MQTT 3.1.1 client, never delivered).
PACKET_OVERHEAD_BYTES = 4096
LEAF_DAYS = 825
_MTLS_BLOCK = ("#>>> mutual-tls", "#<<< mutual-tls")


class SecureBrokerError(FedmqError, RuntimeError):
    """A secure-profile operation failed; the message says what and what to do."""


def default_state_dir() -> Path:
    """$FEDMQ_BROKER_DIR, else $XDG_CONFIG_HOME/fedmq/broker, else ~/.config/fedmq/broker (never the repo)."""
    if os.environ.get("FEDMQ_BROKER_DIR"):
        return Path(os.environ["FEDMQ_BROKER_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "fedmq" / "broker"


@dataclass(frozen=True)
class SecureLayout:
    """Where each file of a secure broker lives inside its state directory."""

    root: Path

    @property
    def profile(self) -> Path:
        return self.root / "profile.json"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "private" / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "private" / "server.key"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def revoked(self) -> Path:
        return self.root / "revoked.json"

    @property
    def password_file(self) -> Path:
        return self.root / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.root / "acl"

    @property
    def config(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def pid_file(self) -> Path:
        return self.root / "mosquitto.pid"

    def client_dir(self, name: str) -> Path:
        return self.root / "clients" / name


@dataclass(frozen=True)
class SecureProfile:
    """The choices made at `init-secure`, kept in profile.json."""

    topic_prefix: str = "fedmq"
    hostnames: list[str] = field(default_factory=list)
    plain_port: int = DEFAULT_PLAIN_PORT
    tls_port: int = DEFAULT_TLS_PORT
    mtls_port: int = DEFAULT_MTLS_PORT
    coordinator_user: str = COORDINATOR_USER
    # More coordinator logins (`add-coordinator NAME`), one per coordinator that runs at the same time as another:
    # the broker makes a login's username its client id, so two processes sharing one login disconnect each other.
    coordinators: list[str] = field(default_factory=list)

    @property
    def coordinator_users(self) -> list[str]:
        return [self.coordinator_user, *self.coordinators]

    def save(self, layout: "SecureLayout") -> None:
        _write(layout.profile, json.dumps(asdict(self), indent=2) + "\n", 0o600)

    @classmethod
    def load(cls, layout: SecureLayout) -> "SecureProfile":
        if not layout.profile.is_file():
            raise SecureBrokerError(f"{layout.root} is not a secure broker directory (no {layout.profile.name}); "
                                    f"create it with: python -m broker init-secure --dir {layout.root}")
        return cls(**json.loads(layout.profile.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Credentials:
    """What one MQTT user (a device or the coordinator) needs, in one folder to copy."""

    name: str
    directory: Path
    ca_cert: Path
    password_file: Path
    cert: Path | None = None
    key: Path | None = None

    def files(self) -> list[Path]:
        return [p for p in (self.ca_cert, self.password_file, self.cert, self.key) if p is not None]


@dataclass(frozen=True)
class RevokeResult:
    name: str
    certificate_revoked: bool   # its client certificate went onto the CRL (Mosquitto rereads it on SIGHUP)
    broker_reloaded: bool       # a running `python -m broker --secure` got SIGHUP and dropped the password


# ---- files -------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes | str, mode: int) -> None:
    """Write atomically with `mode` from the first byte (a secret is never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _owner(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# ---- certificates (the `cryptography` package) ---------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key():  # cryptography's EC private key
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _load_ca_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """The CA's private key: an EC key, as init-secure makes it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SecureBrokerError(f"the CA key is a {type(key).__name__}, not the EC key init-secure makes")
    return key


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmq"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "fedmq CA", days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A self-signed CA that may only sign end-entity certificates: (certificate PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _new_key()
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _cert_pem(cert), _key_pem(key)


def issue_certificate(ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, *, server_names: Sequence[str] = (),
                      client: bool = False, days: int = LEAF_DAYS) -> tuple[bytes, bytes, int]:
    """A certificate signed by the CA: a TLS server one for `server_names` (DNS names or IP addresses), or a
    TLS client one. Returns (certificate PEM, key PEM, serial number)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = _load_ca_key(ca_key_pem)
    key = _new_key()
    now = _now()
    serial = x509.random_serial_number()
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                     else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in server_names]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key), serial


def _san(name: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_crl(ca_cert_pem: bytes, ca_key_pem: bytes, revoked: Iterable[tuple[int, str]], number: int) -> bytes:
    """A CRL listing `revoked` (serial, ISO date) and valid until the CA expires (an expired CRL would make
    OpenSSL refuse every client certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = _load_ca_key(ca_key_pem)
    now = _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - dt.timedelta(minutes=5)).next_update(ca_cert.not_valid_after_utc)
               .add_extension(x509.CRLNumber(number), critical=False))
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(dt.datetime.fromisoformat(when)).build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def default_hostnames(extra: Sequence[str] = ()) -> list[str]:
    """Names the server certificate is valid for: loopback, this machine's names, and `extra`."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn(), *extra]
    return list(dict.fromkeys(n for n in names if n))


# ---- passwords and ACL ---------------------------------------------------------------------------------


def find_mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd") if os.access(p, os.X_OK)), None)
    if found is None:
        raise SecureBrokerError("mosquitto_passwd not found; it comes with Mosquitto (sudo apt-get install mosquitto)")
    return found


def hash_password(user: str, password: str, workdir: Path) -> str:
    """One password-file line `user:$7$...` made by mosquitto_passwd. The password goes through a 0600 file in
    `workdir` (`mosquitto_passwd -U`), never through a command line where `ps` would show it."""
    if ":" in user or "\n" in password or not password:
        raise SecureBrokerError(f"unusable user name or password for {user!r}")
    fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".passwd-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"{user}:{password}\n")
        out = subprocess.run([find_mosquitto_passwd(), "-U", tmp], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise SecureBrokerError(f"mosquitto_passwd -U failed: {out.stderr.strip() or out.stdout.strip()}")
        line = Path(tmp).read_text(encoding="utf-8").strip()
    finally:
        Path(tmp).unlink(missing_ok=True)
    if not line.startswith(f"{user}:$"):
        raise SecureBrokerError(f"mosquitto_passwd wrote an unexpected line for {user!r}")
    return line


def password_users(layout: SecureLayout) -> list[str]:
    if not layout.password_file.is_file():
        return []
    return [line.split(":", 1)[0] for line in layout.password_file.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def _set_password_line(layout: SecureLayout, user: str, line: str | None) -> None:
    """Replace (or, with line None, remove) the user's entry of the password file."""
    old = layout.password_file.read_text(encoding="utf-8").splitlines() if layout.password_file.is_file() else []
    kept = [entry for entry in old if entry.split(":", 1)[0] != user]
    if line is not None:
        kept.append(line)
    _write(layout.password_file, "".join(f"{entry}\n" for entry in kept), 0o600)


def render_acl(topic_prefix: str, coordinator_users: Sequence[str] | str = (COORDINATOR_USER,)) -> str:
    """The Mosquitto ACL of a fedmq broker: what the coordinator logins and each device may publish and read."""
    RunTopics(topic_prefix, "run")  # validates the prefix
    p = topic_prefix
    users = [coordinator_users] if isinstance(coordinator_users, str) else list(coordinator_users)
    coordinators = "\n".join(f"""\
user {user}
topic readwrite {p}/+/model/#
topic readwrite {p}/+/coordinator/#
topic readwrite {p}/+/end
topic readwrite {p}/+/metrics/#
topic read {p}/+/update/#
topic read {p}/+/client/#
""" for user in users)
    return f"""\
# fedmq ACL, generated by `python -m broker init-secure` (broker/secure.py): regenerate, don't edit.
# Mosquitto denies everything not granted here. A denied publish is dropped (MQTT 3.1.1 has no way to
# say so), a denied subscription delivers nothing.

# A coordinator publishes the global and deployed models (model/...), its state, the end of a run and
# its metrics, and reads every device's updates and status (one block per coordinator login).
{coordinators}
# Every device (pattern lines apply to every user; %u is the username, which for a device equals its
# fedmq client id): publishes only its own update and status topics (the broker publishes its last will
# there too) and reads the coordinator's topics. No device reads another device's topics.
pattern write {p}/+/update/%u/#
pattern readwrite {p}/+/client/%u/#
pattern read {p}/+/model/#
pattern read {p}/+/end
pattern read {p}/+/coordinator/#
"""


# ---- the Mosquitto configuration ---------------------------------------------------------------------------


def render_secure_config(layout: SecureLayout, profile: SecureProfile, *, plain_port: int | None = None,
                         tls_port: int | None = None, mtls_port: int | None = None, bind: str = "",
                         max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """broker/mosquitto-secure.conf with this state directory's files and these ports (None: the profile's).

    mtls_port 0 leaves the mutual-TLS listener out; bind "" listens on all interfaces (TLS listeners only:
    the plain listener is always 127.0.0.1). Payloads above max_payload_bytes are refused on every listener."""
    if not 1024 <= max_payload_bytes <= 256 * 1024 * 1024 - PACKET_OVERHEAD_BYTES:
        raise SecureBrokerError(f"max_payload of {max_payload_bytes} bytes is not usable: between 1 KiB and 255 MiB "
                                "(MQTT's ceiling is 256 MB); set [broker] max_payload_mb or --max-payload-mb")
    ports = {"plain_port": profile.plain_port if plain_port is None else plain_port,
             "tls_port": profile.tls_port if tls_port is None else tls_port,
             "mtls_port": profile.mtls_port if mtls_port is None else mtls_port}
    for what, port in ports.items():
        if not (0 <= port <= 65535) or (port == 0 and what != "mtls_port"):
            raise SecureBrokerError(f"{what} {port} is not a usable port")
    text = SECURE_TEMPLATE.read_text(encoding="utf-8")
    if ports["mtls_port"] == 0:
        start, end = text.index(_MTLS_BLOCK[0]), text.index(_MTLS_BLOCK[1]) + len(_MTLS_BLOCK[1])
        text = text[:start] + "# (mutual TLS listener disabled)" + text[end:]
    values = {**ports, "bind": bind, "password_file": layout.password_file, "acl_file": layout.acl_file,
              "ca_file": layout.ca_cert, "server_cert": layout.server_cert, "server_key": layout.server_key,
              "crl_file": layout.crl, "run_as": _owner(layout.root), "message_size_limit": max_payload_bytes,
              "max_packet_size": max_payload_bytes + PACKET_OVERHEAD_BYTES}
    for key, value in values.items():
        if any(c.isspace() for c in str(value)) and key != "bind":
            raise SecureBrokerError(f"Mosquitto can't read paths with spaces: {key} = {value}")
    rendered = string.Template(text).substitute({k: str(v) for k, v in values.items()})
    return "\n".join(line.rstrip() for line in rendered.splitlines()) + "\n"


def write_secure_config(layout: SecureLayout, **options: Any) -> Path:
    """Render the config (options: those of render_secure_config) into the state directory and return its path."""
    check_state(layout)
    _write(layout.config, render_secure_config(layout, SecureProfile.load(layout), **options), 0o600)
    return layout.config


def check_state(layout: SecureLayout) -> None:
    """SecureBrokerError naming what is missing or readable by others in the state directory."""
    SecureProfile.load(layout)
    for path in (layout.ca_cert, layout.server_cert, layout.server_key, layout.password_file, layout.acl_file,
                 layout.crl):
        if not path.is_file():
            raise SecureBrokerError(f"{path} is missing; re-create the directory with init-secure --force")
    mode = layout.root.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecureBrokerError(f"{layout.root} is accessible to other users (mode {mode:o}); chmod 700 it")


# ---- operator commands ---------------------------------------------------------------------------------------


def init_secure(root: Path, *, hostnames: Sequence[str] = (), topic_prefix: str = "fedmq",
                plain_port: int = DEFAULT_PLAIN_PORT, tls_port: int = DEFAULT_TLS_PORT,
                mtls_port: int = DEFAULT_MTLS_PORT, force: bool = False) -> Credentials:
    """Create the state directory: CA, server certificate, CRL, ACL, and the coordinator's credentials."""
    layout = SecureLayout(Path(root).expanduser().resolve())
    if layout.profile.exists() and not force:
        raise SecureBrokerError(f"{layout.root} already holds a secure broker; --force replaces it (every device "
                                "then needs new credentials)")
    RunTopics(topic_prefix, "run")
    if layout.root.exists() and force:
        for sub in ("clients", "private"):
            shutil.rmtree(layout.root / sub, ignore_errors=True)
        for path in (layout.password_file, layout.revoked, layout.crl, layout.profile):
            path.unlink(missing_ok=True)
    layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.root.chmod(0o700)
    names = default_hostnames(hostnames)
    profile = SecureProfile(topic_prefix, names, plain_port, tls_port, mtls_port, COORDINATOR_USER)
    ca_pem, ca_key = make_ca()
    _write(layout.ca_key, ca_key, 0o600)
    _write(layout.ca_cert, ca_pem, 0o644)
    server_pem, server_key, _ = issue_certificate(ca_pem, ca_key, names[0], server_names=names)
    _write(layout.server_key, server_key, 0o600)
    _write(layout.server_cert, server_pem, 0o644)
    _write(layout.revoked, "[]\n", 0o600)
    _write(layout.crl, make_crl(ca_pem, ca_key, [], 1), 0o644)
    _write(layout.acl_file, render_acl(topic_prefix, profile.coordinator_users), 0o600)
    _write(layout.password_file, "", 0o600)
    profile.save(layout)
    log.info("secure broker state in %s (server certificate for %s)", layout.root, ", ".join(names))
    return _add_user(layout, COORDINATOR_USER, client_cert=False)


def add_device(root: Path, name: str, *, client_cert: bool = False, replace: bool = False) -> Credentials:
    """A new password (and optionally a client certificate) for device `name`, whose username is its client id."""
    layout = SecureLayout(Path(root).expanduser().resolve())
    profile = SecureProfile.load(layout)
    check_level(name, "device name")
    if name in profile.coordinator_users:
        raise SecureBrokerError(f"{name!r} is a coordinator's username; pick another device name")
    if name in password_users(layout) and not replace:
        raise SecureBrokerError(f"device {name!r} already exists; revoke-device it first, or --replace")
    return _add_user(layout, name, client_cert=client_cert)


def add_coordinator(root: Path, name: str) -> Credentials:
    """Another coordinator login, with the coordinator's permissions, for a coordinator that runs at the same time
    as another one: the broker makes a login's username its MQTT client id, so two coordinator processes sharing
    one login would disconnect each other."""
    layout = SecureLayout(Path(root).expanduser().resolve())
    profile = SecureProfile.load(layout)
    check_level(name, "coordinator login name")
    if name in password_users(layout) or name in profile.coordinator_users:
        raise SecureBrokerError(f"{name!r} already exists (a device or a coordinator); pick another name")
    profile = replace(profile, coordinators=[*profile.coordinators, name])
    profile.save(layout)
    _write(layout.acl_file, render_acl(profile.topic_prefix, profile.coordinator_users), 0o600)
    return _add_user(layout, name, client_cert=False)  # reloads the broker: the new ACL and password together


def _add_user(layout: SecureLayout, name: str, client_cert: bool) -> Credentials:
    directory = layout.client_dir(name)
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(exist_ok=True, mode=0o700)
    directory.mkdir(mode=0o700)
    password = secrets.token_urlsafe(32)
    line = hash_password(name, password, layout.root)
    ca_copy = directory / "ca.crt"
    _write(ca_copy, layout.ca_cert.read_bytes(), 0o644)
    password_path = directory / "password"
    _write(password_path, password + "\n", 0o600)
    cert_path = key_path = None
    if client_cert:
        cert_pem, key_pem, _ = issue_certificate(layout.ca_cert.read_bytes(), layout.ca_key.read_bytes(), name,
                                                 client=True)
        cert_path, key_path = directory / "client.crt", directory / "client.key"
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o644)
    _set_password_line(layout, name, line)
    reload_broker(layout)
    return Credentials(name, directory, ca_copy, password_path, cert_path, key_path)


def revoke_device(root: Path, name: str) -> RevokeResult:
    """Remove the device's password (effective at once on a running broker: SIGHUP) and put its client
    certificate, if it had one, on the CRL; delete its credentials folder."""
    layout = SecureLayout(Path(root).expanduser().resolve())
    profile = SecureProfile.load(layout)
    if name == profile.coordinator_user:
        raise SecureBrokerError("the coordinator can't be revoked; re-create the directory with init-secure --force")
    if name in profile.coordinators:  # a second coordinator login: its ACL block goes too
        profile = replace(profile, coordinators=[c for c in profile.coordinators if c != name])
        profile.save(layout)
        _write(layout.acl_file, render_acl(profile.topic_prefix, profile.coordinator_users), 0o600)
    directory = layout.client_dir(name)
    if name not in password_users(layout) and not directory.exists():
        raise SecureBrokerError(f"no device {name!r} in {layout.root}")
    cert_revoked = False
    cert_path = directory / "client.crt"
    if cert_path.is_file():
        from cryptography import x509

        serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
        revoked = json.loads(layout.revoked.read_text(encoding="utf-8")) if layout.revoked.is_file() else []
        revoked.append([serial, _now().isoformat()])
        _write(layout.revoked, json.dumps(revoked) + "\n", 0o600)
        _write(layout.crl, make_crl(layout.ca_cert.read_bytes(), layout.ca_key.read_bytes(),
                                    [(int(s), w) for s, w in revoked], len(revoked) + 1), 0o644)
        cert_revoked = True
    _set_password_line(layout, name, None)
    shutil.rmtree(directory, ignore_errors=True)
    return RevokeResult(name, cert_revoked, reload_broker(layout))


def list_devices(root: Path) -> list[tuple[str, bool]]:
    """(device name, has a client certificate) for every device, coordinator left out."""
    layout = SecureLayout(Path(root).expanduser().resolve())
    profile = SecureProfile.load(layout)
    return [(u, (layout.client_dir(u) / "client.crt").is_file()) for u in password_users(layout)
            if u not in profile.coordinator_users]


def reload_broker(layout: SecureLayout) -> bool:
    """SIGHUP the Mosquitto that `python -m broker --secure` runs from this directory, if any, so that it
    rereads the password and ACL files. Returns whether one was signalled."""
    try:
        pid = int(layout.pid_file.read_text(encoding="utf-8").strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    if not any(arg.endswith(b"mosquitto") for arg in cmdline[:1]) or str(layout.config).encode() not in cmdline:
        return False  # a stale pid file: that process is not our broker
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError:
        return False
    log.info("broker (pid %d) told to reload its password and ACL files", pid)
    return True
