"""Command line of a site relay: `python -m coordinator relay --site NAME --upstream CENTRAL --local SITE_BROKER`
(every [relay] key is also a --relay.key flag; [broker] gives the central login, TLS files, run id and prefix)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from federation.cli.version import add_version_flag
from federation.config.settings import ConfigError, add_override_flags, load_settings, overrides_from_args
from federation.errors import FedmqError
from federation.transport.broker_address import AddressError
from federation.transport.mqtt_link import BrokerAddress

log = logging.getLogger("coordinator.relay")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coordinator relay", allow_abbrev=False,
                                description="Relay a site's devices to a central fedmq run: the model down, one "
                                            "partial aggregate per round up (README \"Site relays\").")
    add_version_flag(p)
    p.add_argument("--config", type=Path, default=None, help="TOML settings file (config/default.toml)")
    p.add_argument("--site", default=None, help="the site's name, unique in the run ([relay] site)")
    p.add_argument("--upstream", default=None, metavar="ADDRESS", help="the central broker ([relay] upstream)")
    p.add_argument("--local", default=None, metavar="ADDRESS", help="the site broker ([relay] local)")
    p.add_argument("--send-after-s", type=float, default=None, help="[relay] send_after_s")
    p.add_argument("--run", default=None, help="run id ([run] name)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_override_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = overrides_from_args(args)
    for flag, key in (("site", "relay.site"), ("upstream", "relay.upstream"), ("local", "relay.local"),
                      ("send_after_s", "relay.send_after_s"), ("run", "run.name")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    r = settings.relay
    if not r.site or not r.upstream:
        print("error: a relay needs --site NAME (unique in the run) and --upstream ADDRESS (the central broker)",
              file=sys.stderr)
        return 2
    from coordinator.relay import RelayOptions, SiteRelay
    from federation.protocol.topics import check_level

    try:
        check_level(r.site, "site")
        central = BrokerAddress.from_settings(settings.broker)
        upstream = BrokerAddress.parse(r.upstream, central)
        local = BrokerAddress.parse(r.local, BrokerAddress(mqtt_version=settings.broker.mqtt_version,
                                                           keepalive_s=settings.broker.keepalive_s))
        if (upstream.host, upstream.port) == (local.host, local.port):
            raise AddressError(f"--upstream and --local are the same broker ({upstream.url}): the relay would "
                               "re-publish the run onto itself; give the site broker's address to --local")
        relay = SiteRelay(RelayOptions(r.site, upstream, local, settings.broker.topic_prefix, settings.run.name,
                                       r.send_after_s, int(settings.broker.max_payload_mb * 1024 * 1024)))
    except (ValueError, FedmqError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    try:
        return relay.run()
    except KeyboardInterrupt:
        relay.stop()
        return 130
