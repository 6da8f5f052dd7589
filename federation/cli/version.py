"""`--version` for every fedmq command: the software and the wire protocol version (federation/protocol/version.py)."""

from __future__ import annotations

import argparse

from federation.protocol.version import PROTOCOL_VERSION, SOFTWARE_VERSION

VERSION_TEXT = f"fedmq {SOFTWARE_VERSION} (wire protocol {PROTOCOL_VERSION})"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """Add `--version` (prints VERSION_TEXT and exits 0) to `parser`, unless it has one already."""
    if "--version" not in parser._option_string_actions:
        parser.add_argument("--version", action="version", version=VERSION_TEXT)
