"""The one parser of broker addresses that every command and the config file use: `host`, `host:port`,
`[ipv6]:port`, and `mqtt://`, `mqtts://` (TLS), `ws://`, `wss://` (MQTT over WebSockets) URLs; a comma-separated
list names the nodes of a clustered broker."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from federation.errors import FedmqError

DEFAULT_PORT = 1883
Transport = Literal["tcp", "websockets"]  # paho's names
# scheme -> (paho transport, TLS, port when neither the address, --port nor [broker] port gives one)
SCHEMES: dict[str, tuple[Transport, bool, int]] = {
    "mqtt": ("tcp", False, 1883),
    "mqtts": ("tcp", True, 8883),
    "ws": ("websockets", False, 9001),   # the project's broker: [broker] ws_port
    "wss": ("websockets", True, 443),    # TLS WebSockets usually sit behind a web server on 443
}
DEFAULT_WS_PATH = "/mqtt"  # paho's default; Mosquitto ignores the path
FORMS = "host, host:port, [ipv6]:port, or a URL: mqtt://host:port, mqtts://host:port (TLS), ws://host:port, " \
        "wss://host:port"


class AddressError(FedmqError, ValueError):
    """A broker address that can't be parsed; the message names the forms that work."""


@dataclass(frozen=True)
class ParsedAddress:
    """What the text of an address says; port None and scheme None where it says nothing."""

    host: str
    port: int | None = None
    scheme: str | None = None   # None: a bare host or host:port
    path: str = ""              # WebSockets path of ws:// and wss:// URLs

    @property
    def transport(self) -> Transport:
        return SCHEMES[self.scheme][0] if self.scheme else "tcp"

    @property
    def tls(self) -> bool:
        return SCHEMES[self.scheme][1] if self.scheme else False

    def choose_port(self, port_flag: int | None = None, config_port: int = DEFAULT_PORT) -> int:
        """The port to dial: the address's own; else --port; else [broker] port, except that a URL's scheme gives
        its own default (mqtts 8883, ws 9001, wss 443) while [broker] port is left at 1883.
        AddressError when the address and --port disagree."""
        if self.port is not None:
            if port_flag is not None and port_flag != self.port:
                raise AddressError(f"the broker address says port {self.port} but --port says {port_flag}: "
                                   "give the port once")
            return self.port
        if port_flag is not None:
            return port_flag
        if self.scheme is not None and config_port == DEFAULT_PORT:
            return SCHEMES[self.scheme][2]
        return config_port


def parse_address(text: str) -> ParsedAddress:
    """Parse `text` (see FORMS); AddressError names what is wrong and the forms that work."""
    raw = text.strip()
    if not raw:
        raise AddressError(f"empty broker address; give {FORMS}")
    if raw.count("://") > 1:
        raise AddressError(f"broker address {text!r} has two schemes; give {FORMS}")
    has_scheme = "://" in raw
    if not has_scheme and raw.count(":") > 1 and not raw.startswith("["):
        return ParsedAddress(_check_ipv6(raw, text))  # a bare IPv6 address such as ::1 (no port possible)
    try:
        parts = urlsplit(raw if has_scheme else f"mqtt://{raw}")
        port = parts.port
    except ValueError as exc:
        raise AddressError(f"broker address {text!r}: {exc}; give {FORMS}") from None
    scheme = parts.scheme.lower() if has_scheme else None
    if scheme is not None and scheme not in SCHEMES:
        raise AddressError(f"broker address {text!r}: unknown scheme {parts.scheme}://; give {FORMS}")
    if parts.username is not None or parts.password is not None:
        raise AddressError(f"broker address {text!r} holds a login: give it with --username and --password-file "
                           "instead (a password on a command line is visible to every user of the machine)")
    if parts.query or parts.fragment:
        raise AddressError(f"broker address {text!r}: a query (?...) or fragment (#...) means nothing here; "
                           f"give {FORMS}")
    path = parts.path
    if path and path != "/" and (scheme is None or SCHEMES[scheme][0] != "websockets"):
        raise AddressError(f"broker address {text!r}: only ws:// and wss:// addresses have a path; give {FORMS}")
    host = parts.hostname or ""
    if not host:
        raise AddressError(f"broker address {text!r} names no host; give {FORMS}")
    if "[" in parts.netloc:
        host = _check_ipv6(host, text)
    elif any(c.isspace() or c in "/\\@" for c in host):
        raise AddressError(f"broker address {text!r}: {host!r} is not a host name; give {FORMS}")
    if port == 0:
        raise AddressError(f"broker address {text!r}: port 0 is not a port a broker listens on")
    return ParsedAddress(host, port, scheme, path if path not in ("", "/") else "")


def split_addresses(text: str) -> list[str]:
    """The addresses of a comma-separated list (the nodes of a clustered broker, tried in turn); AddressError for an
    empty item."""
    items = [item.strip() for item in text.split(",")]
    if len(items) > 1 and not all(items):
        raise AddressError(f"broker address list {text!r} has an empty item: give addresses separated by single "
                           f"commas, e.g. mqtt://node1:1883,mqtt://node2:1883")
    return items


def format_address(host: str, port: int, scheme: str, path: str = "") -> str:
    """The URL form of an address, e.g. mqtts://[::1]:8883; parse_address reads it back unchanged."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path}"


def _check_ipv6(host: str, text: str) -> str:
    try:
        ipaddress.IPv6Address(host)  # scope ids (fe80::1%eth0) included
    except ValueError:
        raise AddressError(f"broker address {text!r}: {host!r} is not an IPv6 address (write IPv6 with a port as "
                           f"[addr]:port); give {FORMS}") from None
    return host
