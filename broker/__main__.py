"""Command line entry point: `python -m broker` runs the project's MQTT broker.

Mosquitto in the foreground when installed, else the embedded amqtt fallback.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from federation.errors import FedmqError
from broker.foreground import bind_problem, exit_code, forwarding_signals
from broker.mosquitto_process import DEFAULT_CONFIG, connect_host, find_mosquitto, render_config
from broker.open_files import raising_open_files
from federation.config.settings import BrokerSettings, load_settings
from federation.config.settings import ConfigError as SettingsError
from federation.cli.version import add_version_flag

log = logging.getLogger("broker")

DEFAULT_PORT = 1883
DEFAULT_WS_PORT = 9001
DEFAULT_BIND = "0.0.0.0"
EXIT_USAGE = 2
SECURE_COMMANDS = ("init-secure", "add-device", "add-coordinator", "revoke-device", "list-devices")


class ConfigError(FedmqError, ValueError):
    """The TOML config file exists but its `[broker] port` is unusable."""


@dataclass(frozen=True)
class BrokerOptions:
    """What to run, resolved from the command line and the TOML config."""

    port: int
    bind: str
    mosquitto: str | None
    """Path of the mosquitto binary; None means run the embedded amqtt broker."""
    embedded_requested: bool
    """True when --embedded was given (rather than mosquitto being missing)."""
    ws_port: int = DEFAULT_WS_PORT
    """MQTT over WebSockets (for the dashboard page); 0 means none."""
    ws_port_requested: bool = False
    """True when --ws-port was given: a busy port is then an error, not a warning."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the `python -m broker` command line."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m broker",
        description="Run the fedmq MQTT broker (Mosquitto, or the embedded amqtt fallback).",
        epilog="Secure profile (TLS, a password per device, ACLs): python -m broker init-secure | add-device NAME "
               "| add-coordinator NAME | revoke-device NAME | list-devices (each with --help), then "
               "python -m broker --secure.",
    )
    add_version_flag(parser)
    parser.add_argument("--secure", action="store_true",
                        help="run the secure profile made by init-secure (see python -m broker --secure --help)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the fleet's TOML settings file (config/default.toml): its [broker] port and ws_port "
                             "are used (default: the built-in defaults)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"TCP port; overrides the config file (default: config or {DEFAULT_PORT})")
    parser.add_argument("--ws-port", type=int, default=None,
                        help=f"MQTT-over-WebSockets port for the dashboard page; 0: none "
                             f"(default: [broker] ws_port of the config, else {DEFAULT_WS_PORT})")
    parser.add_argument("--bind", default=DEFAULT_BIND,
                        help="address to listen on (default: %(default)s, i.e. all interfaces)")
    parser.add_argument("--embedded", action="store_true",
                        help="use the embedded amqtt broker (MQTT 3.1.1 only) even if mosquitto exists")
    return parser.parse_args(argv)


def broker_settings(path: Path | None) -> BrokerSettings:
    """[broker] of the fleet's settings file, read and checked by the one settings loader (defaults without one)."""
    try:
        return load_settings(path).broker
    except SettingsError as error:
        raise ConfigError(str(error)) from None


def resolve_options(args: argparse.Namespace) -> BrokerOptions:
    """Combine CLI flags, the settings file and what is installed into BrokerOptions."""
    settings = broker_settings(args.config)
    port = settings.port if args.port is None else args.port
    ws_port = getattr(args, "ws_port", None)
    if ws_port is None:
        ws_port = settings.ws_port if args.config is not None else None
    mosquitto = None if args.embedded else find_mosquitto()
    return BrokerOptions(port=port, bind=args.bind, mosquitto=mosquitto, embedded_requested=args.embedded,
                         ws_port=DEFAULT_WS_PORT if ws_port is None else ws_port,
                         ws_port_requested=getattr(args, "ws_port", None) is not None)


def run_mosquitto_foreground(binary: str, port: int, bind: str, ws_port: int = 0) -> int:
    """Run Mosquitto with the rendered project config until it exits; return its exit code."""
    with tempfile.TemporaryDirectory(prefix="fedmq-broker-") as workdir:
        config_path = Path(workdir) / "mosquitto.conf"
        config_path.write_text(render_config(DEFAULT_CONFIG, port, bind, ws_port=ws_port), encoding="utf-8")
        log.info("starting %s on mqtt://%s:%s (local clients: mqtt://%s:%s); Ctrl-C stops it",
                 binary, bind, port, connect_host(bind), port)
        if ws_port:
            log.info("MQTT over WebSockets on ws://%s:%s for the dashboard (python -m coordinator dashboard)",
                     bind, ws_port)
        process = subprocess.Popen([binary, "-c", str(config_path)], stdin=subprocess.DEVNULL,
                                   preexec_fn=raising_open_files())
        with forwarding_signals(process):
            returncode = process.wait()
    log.info("mosquitto exited with code %s", returncode)
    return exit_code(returncode)


def run_embedded(port: int, bind: str) -> int:
    """Run the embedded amqtt broker until SIGINT/SIGTERM; return the exit code."""
    from broker.embedded import run_embedded_broker  # imported lazily: amqtt is optional

    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    log.info("embedded broker on mqtt://%s:%s (local clients: mqtt://%s:%s)",
             bind, port, connect_host(bind), port)
    try:
        run_embedded_broker(bind, port)
    except Exception as error:  # amqtt raises its own BrokerError and OSErrors
        log.error("embedded broker failed: %s", error)
        return 1
    return 0


def announce_embedded(requested: bool) -> None:
    """Log why the embedded broker is used instead of Mosquitto."""
    if requested:
        log.info("--embedded given; starting the embedded amqtt broker (MQTT 3.1.1 only)")
    else:
        log.warning("mosquitto not found (install with: sudo apt-get install mosquitto); "
                    "starting the embedded amqtt broker (MQTT 3.1.1 only)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the broker described by `argv`; return the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SECURE_COMMANDS or "--secure" in args:
        from broker.secure_cli import main as secure_main

        return secure_main(args)
    try:
        options = resolve_options(parse_args(argv))
    except ConfigError as error:
        log.error("%s", error)
        return EXIT_USAGE
    problem = bind_problem(options.bind, options.port)
    if not problem and options.ws_port and options.mosquitto is not None:
        ws_problem = bind_problem(options.bind, options.ws_port)
        if ws_problem and options.ws_port_requested:
            problem = f"--ws-port: {ws_problem}"
        elif ws_problem:  # only the default: MQTT matters more than the dashboard's listener
            log.warning("%s; starting without the MQTT-over-WebSockets listener that the dashboard needs "
                        "(choose a free one with --ws-port)", ws_problem)
            options = replace(options, ws_port=0)
    if problem:
        log.error("%s", problem)
        return EXIT_USAGE
    if options.mosquitto is None:
        announce_embedded(options.embedded_requested)
        if options.ws_port:
            log.warning("the embedded broker has no MQTT-over-WebSockets listener: the dashboard needs Mosquitto")
        return run_embedded(options.port, options.bind)
    return run_mosquitto_foreground(options.mosquitto, options.port, options.bind, options.ws_port)


if __name__ == "__main__":
    sys.exit(main())
