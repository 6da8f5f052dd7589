"""Why a connection to the broker failed, in words that name the fix. paho says little ("connection failed",
"Unspecified error"), so on a failure this checks, one step at a time: the name, the port, TLS, then MQTT itself."""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

if TYPE_CHECKING:  # mqtt_link imports this module
    from federation.transport.mqtt_link import BrokerAddress

log = logging.getLogger(__name__)

START_BROKER = "`python -m broker`"
GET_CREDENTIALS = "`python -m broker add-device NAME` on the broker's machine"


def diagnose(address: "BrokerAddress", timeout: float = 3.0) -> str:
    """One sentence: what is wrong with connecting to `address`, and what to do about it."""
    host, port = address.host, address.port
    where = f"{_show(host)}:{port}"
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return (f"the broker host {host!r} does not resolve ({exc.strerror}): check the name given with --broker "
                "(or [broker] host), or give the broker's IP address")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        return (f"nothing listens on {where}: is the broker running? start it with {START_BROKER} "
                f"(`python -m broker --port {port}` for this port), or check --broker and --port")
    except TimeoutError:
        return (f"{where} does not answer within {timeout:g} s: the machine is off or a firewall drops the "
                "connection; check --broker and --port, and that the broker's port is open")
    except OSError as exc:
        return f"{where} can't be reached ({exc.strerror or exc}): check --broker and the network"
    if address.use_tls:
        return _diagnose_tls(address, where, timeout)
    if _tls_handshake(host, port, _any_certificate(), timeout) is None:
        return (f"{where} is a TLS port, and this client speaks plain MQTT: connect with --broker "
                f"mqtts://{where} and --tls-ca ca.crt (from {GET_CREDENTIALS}), or use the broker's plain port")
    if address.transport == "websockets":
        if _speaks_plain_mqtt(host, port, timeout):
            return (f"{where} is a plain MQTT port, not a WebSockets one: use --broker mqtt://{where}, or the "
                    "broker's WebSockets port ([broker] ws_port, 9001 by default)")
        return (f"{where} accepts connections but not MQTT over WebSockets at path {address.ws_path}: check the "
                "port ([broker] ws_port) and the path in --broker ws://HOST:PORT/PATH")
    return (f"{where} accepts connections but closes MQTT ones: is it an MQTT broker, and does it speak MQTT "
            f"{address.mqtt_version}? check --broker, --port and --mqtt-version, and the broker's log")


def _diagnose_tls(address: "BrokerAddress", where: str, timeout: float) -> str:
    ca = address.tls_ca or "the system's CA certificates"
    try:
        context = _client_context(address)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"the TLS files can't be used ({exc}): check --tls-ca, --tls-cert and --tls-key"
    error = _tls_handshake(address.host, address.port, context, timeout)
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"the broker at {where} shows a certificate that {ca} does not accept ({error.verify_message}): "
                f"use the ca.crt that came with this device's login ({GET_CREDENTIALS}), and a --broker name that "
                "the broker's certificate holds (python -m broker init-secure --hostname NAME)")
    if error is not None:
        if _speaks_plain_mqtt(address.host, address.port, timeout):
            return (f"{where} speaks plain MQTT, not TLS: use the broker's TLS port (--broker mqtts://"
                    f"{_show(address.host)}:8883 by default), or connect without TLS (--broker mqtt://{where}, "
                    "no --tls-ca)")
        return f"the TLS handshake with {where} failed ({error}): is it the broker's TLS port? check --port"
    if address.tls_cert:
        return (f"TLS to {where} works, but the broker closes the connection: it refuses the client certificate "
                f"{address.tls_cert} (another CA, or revoked); get a new one with {GET_CREDENTIALS}")
    return (f"TLS to {where} works, but the broker closes the connection: does this port want a client "
            "certificate (--tls-cert and --tls-key)? see the broker's log")


def _client_context(address: "BrokerAddress") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(Path(address.tls_ca).expanduser()) if address.tls_ca else None)
    if address.tls_cert:
        context.load_cert_chain(str(Path(address.tls_cert).expanduser()), str(Path(address.tls_key).expanduser()))
    return context


def _any_certificate() -> ssl.SSLContext:
    """A context that completes any handshake: only to learn whether a port speaks TLS at all."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _tls_handshake(host: str, port: int, context: ssl.SSLContext, timeout: float) -> Exception | None:
    """None if a TLS handshake with host:port succeeds, else the error."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return None
    except (ssl.SSLError, OSError) as exc:
        return exc


def _speaks_plain_mqtt(host: str, port: int, timeout: float) -> bool:
    """Whether host:port answers a plain MQTT CONNECT with a CONNACK (accepting or refusing: both are MQTT)."""
    answered: list[object] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fedmq-diagnosis-{secrets.token_hex(4)}")
    client.on_connect = lambda *args: answered.append(args[3])
    try:
        client.connect(host, port, keepalive=10)
        deadline = time.monotonic() + timeout
        while not answered and time.monotonic() < deadline:
            if client.loop(0.1) not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                break
    except (OSError, ValueError):
        return False
    finally:
        try:
            client.disconnect()
        except Exception:  # a probe's socket, already closed by the other side
            pass
    return bool(answered)


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host
