"""The one set of broker and run flags every fedmq command takes (--broker, --port, --mqtt-version, --run,
--topic-prefix, --client-id, TLS and login), declared once here, and how they become a BrokerAddress or settings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from federation.cli.version import add_version_flag
from federation.transport.broker_address import FORMS, AddressError, parse_address, split_addresses
from federation.transport.mqtt_link import BrokerAddress

CONNECTION_FLAGS = ("--config", "--broker", "--port", "--mqtt-version", "--run", "--topic-prefix", "--client-id")
SECURITY_FLAGS = ("--tls-ca", "--tls-cert", "--tls-key", "--username", "--password-file")
# Flag -> the setting it stands for (the coordinator's and the dashboard's --section.key form).
SETTING_OF = {"broker": "broker.host", "port": "broker.port", "mqtt_version": "broker.mqtt_version",
              "run": "run.name", "topic_prefix": "broker.topic_prefix", "tls_ca": "broker.tls_ca",
              "tls_cert": "broker.tls_cert", "tls_key": "broker.tls_key", "username": "broker.username",
              "password_file": "broker.password_file"}


def add_connection_flags(parser: argparse.ArgumentParser, default_client_id: str | None,
                         client_id_help: str = "this device's name in topics") -> None:
    """--config, --broker, --port, --mqtt-version, --run, --topic-prefix, --client-id.

    Also turns off argparse's prefix matching on `parser`: `--broker.h` must not quietly mean `--broker.host`."""
    parser.allow_abbrev = False
    add_version_flag(parser)
    conn = parser.add_argument_group("broker and run")
    conn.add_argument("--config", type=Path, default=None,
                      help="read [broker] and [run] defaults from this TOML file (config/default.toml)")
    conn.add_argument("--broker", default=None, metavar="ADDRESS",
                      help=f"the broker: {FORMS} (default: config [broker] host, else localhost)")
    conn.add_argument("--port", type=int, default=None,
                      help="broker port when ADDRESS has none (default: config, else 1883; mqtts:// 8883, ws:// "
                           "9001, wss:// 443)")
    conn.add_argument("--mqtt-version", choices=("3.1.1", "5"), default=None)
    conn.add_argument("--run", default=None, help="run id (default: config, else demo)")
    conn.add_argument("--topic-prefix", default=None, help="first level(s) of every topic (default: config, "
                                                           "else fedmq)")
    shown = f" (default: {default_client_id})" if default_client_id else ""
    conn.add_argument("--client-id", default=default_client_id, help=client_id_help + shown)


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-cert, --tls-key, --username, --password-file (`python -m broker add-device` prints them)."""
    parser.allow_abbrev = False
    sec = parser.add_argument_group(
        "secure broker", "TLS and login, from `python -m broker add-device NAME`; an edge device takes them from "
                         "these flags only (a config file's [broker] login is the coordinator's)")
    sec.add_argument("--tls-ca", default="", metavar="FILE",
                     help="CA certificate (ca.crt): connect with TLS and verify the broker against it")
    sec.add_argument("--tls-cert", default="", metavar="FILE", help="client certificate, for mutual TLS")
    sec.add_argument("--tls-key", default="", metavar="FILE", help="key of the client certificate")
    sec.add_argument("--username", default="", help="MQTT username; a device's must equal --client-id (default: "
                                                    "the client id when --password-file is given)")
    sec.add_argument("--password-file", default="", metavar="FILE",
                     help="file holding the MQTT password (never put the password itself on a command line)")


def add_broker_flags(parser: argparse.ArgumentParser, default_client_id: str | None,
                     client_id_help: str = "this device's name in topics") -> None:
    """The whole set: add_connection_flags and add_security_flags."""
    add_connection_flags(parser, default_client_id, client_id_help)
    add_security_flags(parser)


def login_username(args: argparse.Namespace, client_id: str) -> str:
    """The username a device logs in with; ValueError when it differs from the client id."""
    username = args.username or (client_id if args.password_file else "")
    if username and username != client_id:
        raise ValueError(f"--username {username!r} differs from --client-id {client_id!r}: the secure broker lets a "
                         "device publish only on topics named after its username, so use the device's name for both")
    return username


def device_address(args: argparse.Namespace, broker: Any, client_id: str) -> BrokerAddress:
    """An edge device's broker: --broker/--port/--mqtt-version over the config's [broker] (`broker`), TLS and login
    from the flags only. ValueError (AddressError) names a bad address or login."""
    base = BrokerAddress(port=broker.port, mqtt_version=args.mqtt_version or broker.mqtt_version,
                         keepalive_s=broker.keepalive_s, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                         tls_key=args.tls_key, username=login_username(args, client_id),
                         password_file=args.password_file)
    return BrokerAddress.parse(args.broker or broker.host, base, port_flag=args.port)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as {"section.key": value} settings overrides (the coordinator and the dashboard).
    --broker with a port sets broker.port too; AddressError when it and --port disagree."""
    overrides = {SETTING_OF[name]: value for name, value in vars(args).items()
                 if name in SETTING_OF and value not in (None, "")}
    if args.broker:
        parsed = parse_address(split_addresses(args.broker)[0])  # a cluster: the first node's port
        if parsed.port is not None:
            overrides["broker.port"] = parsed.choose_port(args.port)  # AddressError if --port says otherwise
    return overrides


__all__ = ["AddressError", "CONNECTION_FLAGS", "SECURITY_FLAGS", "add_broker_flags", "add_connection_flags",
           "add_security_flags", "device_address", "login_username", "settings_overrides"]
