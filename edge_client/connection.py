"""The edge client's secure-broker flags (TLS, client certificate, login) and the BrokerAddress they make.

A device's MQTT username must equal its client id: the broker's ACL lets it publish only on topics named after it."""

from __future__ import annotations

import argparse

from federation.mqtt_link import BrokerAddress


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-cert, --tls-key, --username, --password-file (`python -m broker add-device` prints them)."""
    sec = parser.add_argument_group(
        "secure broker", "TLS and login, from `python -m broker add-device NAME`; taken from these flags only "
                         "(a config file's [broker] login is the coordinator's)")
    sec.add_argument("--tls-ca", default="", metavar="FILE",
                     help="CA certificate (ca.crt): connect with TLS and verify the broker against it")
    sec.add_argument("--tls-cert", default="", metavar="FILE", help="client certificate, for mutual TLS")
    sec.add_argument("--tls-key", default="", metavar="FILE", help="key of the client certificate")
    sec.add_argument("--username", default="", help="MQTT username; must equal --client-id (default: the client "
                                                    "id when --password-file is given)")
    sec.add_argument("--password-file", default="", metavar="FILE",
                     help="file holding the MQTT password (never put the password itself on a command line)")


def login_username(args: argparse.Namespace, client_id: str) -> str:
    """The username to log in with; ValueError when it differs from the client id."""
    username = args.username or (client_id if args.password_file else "")
    if username and username != client_id:
        raise ValueError(f"--username {username!r} differs from --client-id {client_id!r}: the secure broker lets a "
                         "device publish only on topics named after its username, so use the device's name for both")
    return username


def broker_address(args: argparse.Namespace, host: str, port: int, mqtt_version: str, keepalive_s: int,
                   client_id: str) -> BrokerAddress:
    return BrokerAddress(host, port, mqtt_version, keepalive_s, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                         tls_key=args.tls_key, username=login_username(args, client_id),
                         password_file=args.password_file)
