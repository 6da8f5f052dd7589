"""Operator commands of the secure broker: `python -m broker init-secure | add-device | revoke-device |
list-devices`, and `python -m broker --secure`, which runs Mosquitto with TLS, passwords and ACLs."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.foreground import bind_problem, exit_code, forwarding_signals
from broker.mosquitto_process import find_mosquitto
from broker.open_files import raising_open_files
from broker.secure import (
    DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MTLS_PORT, DEFAULT_PLAIN_PORT, DEFAULT_TLS_PORT, Credentials,
    SecureBrokerError, SecureLayout, SecureProfile, add_coordinator, add_device, check_state, default_state_dir,
    init_secure, list_devices, revoke_device, write_secure_config,
)
from federation.cli.version import add_version_flag

log = logging.getLogger("broker")
COMMANDS = ("init-secure", "add-device", "add-coordinator", "revoke-device", "list-devices")
MIB = 1024 * 1024
EXIT_USAGE = 2


def _dir_option(parser: argparse.ArgumentParser) -> None:
    """The options every secure-profile command has: --dir and --version."""
    add_version_flag(parser)
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"secure state directory (default: $FEDMQ_BROKER_DIR or {default_state_dir()})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m broker", allow_abbrev=False, description="Secure fedmq broker: TLS, a password "
                                     "per device, and ACLs that confine each device to its own topics.")
    add_version_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init-secure", allow_abbrev=False, help="create the CA, the server certificate and the coordinator's login")
    _dir_option(init)
    init.add_argument("--hostname", action="append", default=[],
                      help="a DNS name or IP address devices use to reach the broker (repeatable); localhost, "
                           "127.0.0.1 and this machine's names are always included")
    init.add_argument("--topic-prefix", default="fedmq", help="[broker] topic_prefix the ACL is written for")
    init.add_argument("--port", type=int, default=DEFAULT_PLAIN_PORT, help="plain listener, 127.0.0.1 only")
    init.add_argument("--tls-port", type=int, default=DEFAULT_TLS_PORT, help="TLS listener for devices")
    init.add_argument("--mtls-port", type=int, default=DEFAULT_MTLS_PORT,
                      help="mutual-TLS listener (client certificate required); 0: none")
    init.add_argument("--force", action="store_true", help="replace an existing directory (all logins change)")
    add = sub.add_parser("add-device", allow_abbrev=False, help="create a device's login (and client certificate) and show what to copy")
    add.add_argument("name", help="the device's client id; it is also its MQTT username")
    _dir_option(add)
    add.add_argument("--client-cert", action="store_true", help="also issue a client certificate (mutual TLS)")
    add.add_argument("--replace", action="store_true", help="give an existing device new credentials")
    add.add_argument("--broker-host", default=None, help="host name to show in the device's command line")
    coord = sub.add_parser("add-coordinator", allow_abbrev=False, help="another coordinator login, for a second coordinator running at "
                           "the same time (one login is one connection: two processes sharing one knock each other "
                           "off)")
    coord.add_argument("name", help="its MQTT username, e.g. coordinator-b")
    _dir_option(coord)
    rev = sub.add_parser("revoke-device", allow_abbrev=False, help="remove a device's (or an added coordinator's) login; a running "
                                               "broker drops it at once")
    rev.add_argument("name")
    _dir_option(rev)
    lst = sub.add_parser("list-devices", allow_abbrev=False, help="list the devices that may log in")
    _dir_option(lst)
    return parser


def build_serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m broker", allow_abbrev=False,
                                     description="Run Mosquitto with the secure profile of a state directory.")
    add_version_flag(parser)
    parser.add_argument("--secure", action="store_true", required=True, help="run the secure profile")
    _dir_option(parser)
    parser.add_argument("--port", type=int, default=None, help="plain listener port, 127.0.0.1 only (default: "
                                                               "the one chosen at init-secure)")
    parser.add_argument("--tls-port", type=int, default=None, help="TLS listener port")
    parser.add_argument("--mtls-port", type=int, default=None, help="mutual-TLS listener port (0: none)")
    parser.add_argument("--bind", default="", help="address of the TLS listeners (default: all interfaces)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the fleet's TOML settings file: its [broker] max_payload_mb caps message sizes "
                             "(default: the built-in 64 MiB)")
    parser.add_argument("--max-payload-mb", type=float, default=None,
                        help="refuse publishes larger than this many MiB on every listener (default: [broker] "
                             f"max_payload_mb of --config, else {DEFAULT_MAX_PAYLOAD_BYTES // MIB})")
    return parser


def max_payload_bytes(args: argparse.Namespace) -> int:
    """The broker's payload cap: --max-payload-mb, else [broker] max_payload_mb of --config, else 64 MiB."""
    source, value = "--max-payload-mb", args.max_payload_mb
    if value is None and args.config is not None:
        from federation.config.settings import ConfigError, load_settings

        try:
            value = load_settings(args.config).broker.max_payload_mb
        except ConfigError as exc:
            raise SecureBrokerError(str(exc)) from None
        source = f"{args.config}: [broker] max_payload_mb"
    if value is None:
        return DEFAULT_MAX_PAYLOAD_BYTES
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.001 <= value <= 255:
        raise SecureBrokerError(f"{source} must be a number of MiB between 0.001 and 255, got {value!r}")
    return int(value * MIB)


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    try:
        if "--secure" in argv:
            return serve(build_serve_parser().parse_args(argv))
        args = build_parser().parse_args(argv)
        root = (args.dir or default_state_dir()).expanduser()
        if args.command == "init-secure":
            return _init(args, root)
        if args.command == "add-device":
            creds = add_device(root, args.name, client_cert=args.client_cert, replace=args.replace)
            _print_device(root, creds, args.broker_host)
            return 0
        if args.command == "add-coordinator":
            creds = add_coordinator(root, args.name)
            print(f"Coordinator login {creds.name} added (files in {creds.directory}). Run the second coordinator "
                  "with it:")
            print("  " + _join(["python", "-m", "coordinator", "--tls-ca", str(creds.ca_cert), "--username",
                                creds.name, "--password-file", str(creds.password_file), "--run.name", "RUN"]))
            return 0
        if args.command == "revoke-device":
            result = revoke_device(root, args.name)
            print(f"device {result.name} revoked: its password entry and credentials folder are gone.")
            if result.certificate_revoked:
                print("Its client certificate is on the revocation list (crl.pem), which Mosquitto rereads with "
                      "the password file.")
            print("The running broker reloaded its password file; the device is disconnected and can't log in."
                  if result.broker_reloaded else
                  "No running `python -m broker --secure` from this directory was found; the change applies when "
                  "it starts (or send SIGHUP to your Mosquitto).")
            return 0
        for name, has_cert in list_devices(root):
            print(f"{name}{'  (client certificate)' if has_cert else ''}")
        return 0
    except SecureBrokerError as exc:
        log.error("%s", exc)
        return EXIT_USAGE


def _init(args: argparse.Namespace, root: Path) -> int:
    creds = init_secure(root, hostnames=args.hostname, topic_prefix=args.topic_prefix, plain_port=args.port,
                        tls_port=args.tls_port, mtls_port=args.mtls_port, force=args.force)
    layout = SecureLayout(root.resolve())
    profile = SecureProfile.load(layout)
    print(f"Secure broker created in {layout.root} (mode 700; the CA key is in private/).")
    print(f"Server certificate valid for: {', '.join(profile.hostnames)}")
    print(f"Listeners: TLS {profile.tls_port}, mutual TLS {profile.mtls_port or 'off'}, "
          f"plain 127.0.0.1:{profile.plain_port} (this machine only; passwords still required)")
    print("\nStart the broker:\n  python -m broker --secure" + _dir_flag(root))
    print("\nRun the coordinator on this machine with its own login (over TLS):")
    print("  " + _join(["python", "-m", "coordinator", "--broker.host", "localhost", "--broker.port",
                        str(profile.tls_port), "--tls-ca", str(creds.ca_cert), "--username", creds.name,
                        "--password-file", str(creds.password_file)]))
    print("\nAdd each device:\n  python -m broker add-device NAME" + _dir_flag(root))
    return 0


def _dir_flag(root: Path) -> str:
    return "" if root.expanduser().resolve() == default_state_dir().expanduser().resolve() else f" --dir {root}"


def _join(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _print_device(root: Path, creds: Credentials, host: str | None) -> None:
    profile = SecureProfile.load(SecureLayout(root.expanduser().resolve()))
    if host is None:
        host = next((h for h in profile.hostnames if h not in ("localhost", "127.0.0.1", "::1")), "localhost")
    port = profile.mtls_port if creds.cert and profile.mtls_port else profile.tls_port
    remote = f"~/.config/fedmq/{creds.name}"
    print(f"Device {creds.name} added. Copy these files to the device, into {remote}/ for example:")
    for path in creds.files():
        secret = "  (secret: keep it mode 600)" if path.name in ("password", "client.key") else ""
        print(f"  {path}{secret}")
    print(f"  e.g.  scp -rp {shlex.quote(str(creds.directory))} <user>@<device>:{remote}")
    print("\nThen run on the device (its client id must equal its username):")
    cmd = ["python", "-m", "edge_client", "--broker", host, "--port", str(port), "--client-id", creds.name,
           "--tls-ca", f"{remote}/ca.crt", "--username", creds.name, "--password-file", f"{remote}/password"]
    if creds.cert:
        cmd += ["--tls-cert", f"{remote}/client.crt", "--tls-key", f"{remote}/client.key"]
    print("  " + " ".join(cmd) + " --dataset ...")
    print("\nThe password is only in that file; it never needs to appear on a command line.")


def serve(args: argparse.Namespace) -> int:
    """Run Mosquitto with the secure config in the foreground; the pid file lets revoke-device reload it."""

    layout = SecureLayout((args.dir or default_state_dir()).expanduser().resolve())
    check_state(layout)
    profile = SecureProfile.load(layout)
    ports = {"plain_port": args.port if args.port is not None else profile.plain_port,
             "tls_port": args.tls_port if args.tls_port is not None else profile.tls_port,
             "mtls_port": args.mtls_port if args.mtls_port is not None else profile.mtls_port}
    for what, port in ports.items():
        if port:
            problem = bind_problem("127.0.0.1" if what == "plain_port" else args.bind or "0.0.0.0", port)
            if problem:
                raise SecureBrokerError(problem)
    binary = find_mosquitto()
    if binary is None:
        raise SecureBrokerError("mosquitto not found (sudo apt-get install mosquitto); the embedded broker has no "
                                "secure profile")
    payload_cap = max_payload_bytes(args)
    config = write_secure_config(layout, bind=args.bind, max_payload_bytes=payload_cap, **ports)
    if os.geteuid() == 0:
        log.warning("running as root: Mosquitto keeps root rights (it runs as the state directory's owner); "
                    "prefer an unprivileged user with its own --dir")
    log.info("starting %s: TLS on port %d%s, plain on 127.0.0.1:%d; messages up to %.2f MiB; config %s", binary,
             ports["tls_port"], f", mutual TLS on port {ports['mtls_port']}" if ports["mtls_port"] else "",
             ports["plain_port"], payload_cap / MIB, config)
    process = subprocess.Popen([binary, "-c", str(config)], stdin=subprocess.DEVNULL, preexec_fn=raising_open_files())
    layout.pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
    try:
        with forwarding_signals(process):
            returncode = process.wait()
    finally:
        layout.pid_file.unlink(missing_ok=True)
    log.info("mosquitto exited with code %s", returncode)
    return exit_code(returncode)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
