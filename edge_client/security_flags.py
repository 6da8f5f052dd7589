"""The edge client's secure-broker flags (TLS, client certificate, login) and the BrokerAddress they make.

A device's MQTT username must equal its client id: the broker's ACL lets it publish only on topics named after it.
The flags themselves are declared once for every command in federation/cli/broker_flags.py."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from federation.cli.broker_flags import add_security_flags, device_address, login_username
from federation.transport.mqtt_link import BrokerAddress

__all__ = ["add_security_flags", "broker_address", "login_username"]


def broker_address(args: argparse.Namespace, host: str, port: int, mqtt_version: str, keepalive_s: int,
                   client_id: str) -> BrokerAddress:
    """The device's broker from its flags; `host` (any address form) and `port` are the defaults to use where
    --broker and --port say nothing. ValueError names a bad address or login."""
    broker = SimpleNamespace(host=host, port=port, mqtt_version=mqtt_version,
                             keepalive_s=keepalive_s)
    return device_address(args, broker, client_id)
