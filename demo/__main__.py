"""The one-command demo: a broker, a coordinator and N edge clients on this machine, running the
default scenario (config/default.toml: Fashion-MNIST, FedAvg) and exporting a TFLite model."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from broker import BrokerError
from broker.__main__ import DEFAULT_WS_PORT
from demo.local_federation import LocalFederation
from federation.cli.version import add_version_flag

if TYPE_CHECKING:
    import subprocess


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo", description=" ".join(__doc__.split()), allow_abbrev=False)
    add_version_flag(p)
    p.add_argument("--clients", type=int, default=2, help="edge-client processes (IID parts of the training set)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: config/default.toml)")
    p.add_argument("--quick", action="store_true", help="small subset and 2 rounds: about a minute")
    p.add_argument("--dataset", default="fashion_mnist", help="built-in dataset or image folder")
    p.add_argument("--embedded-broker", action="store_true", help="use the amqtt fallback even if Mosquitto exists")
    p.add_argument("--workdir", type=Path, default=Path("runs"), help="results go to WORKDIR/RUN")
    p.add_argument("--run", default="demo", help="run id")
    p.add_argument("--dashboard", type=int, nargs="?", const=8080, default=None, metavar="PORT",
                   help="also serve the live dashboard on http://localhost:PORT (default 8080; the broker's "
                        "WebSockets on --ws-port) and keep it up after the run until Ctrl-C")
    p.add_argument("--ws-port", type=int, default=DEFAULT_WS_PORT, metavar="PORT",
                   help="with --dashboard: the broker's MQTT-over-WebSockets port, which the page uses "
                        "(default %(default)s)")
    args = p.parse_args(argv)
    if args.dashboard is not None and args.embedded_broker:
        p.error("--dashboard needs Mosquitto's websockets listener; the embedded broker has none")
    if args.dashboard is not None:
        if args.dashboard == args.ws_port:
            p.error(f"--dashboard {args.dashboard} and --ws-port {args.ws_port} must differ")
        for port, what, flag in ((args.ws_port, "the broker's WebSockets port for the dashboard", "--ws-port PORT"),
                                 (args.dashboard, "the dashboard page's port", "--dashboard PORT")):
            if not _port_free(port):
                print(f"error: port {port} ({what}) is in use, by another broker, dashboard or program; choose "
                      f"another with {flag}", file=sys.stderr)
                return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    overrides: dict[str, object] = {"quorum.min_clients": args.clients, "model.dataset": args.dataset}
    client_args = ["--dataset", args.dataset]
    if args.quick:
        overrides.update({"training.rounds": 2, "evaluation.max_examples": 2000})
        client_args += ["--max-examples", str(3000 * args.clients)]
    if args.rounds:
        overrides["training.rounds"] = args.rounds
    ws_port = args.ws_port if args.dashboard is not None else 0
    with LocalFederation(args.workdir, run_name=args.run, embedded_broker=args.embedded_broker,
                         ws_port=ws_port) as fed:
        try:
            fed.start_broker()
        except BrokerError as exc:  # e.g. a port taken between the check above and now
            print(f"error: the broker did not start: {exc}", file=sys.stderr)
            return 2
        if args.dashboard is not None:
            fed.start_dashboard(args.dashboard)
            print(f"live dashboard: http://localhost:{args.dashboard}/")
        coordinator = fed.start_coordinator(overrides)
        for k in range(1, args.clients + 1):
            fed.start_client(f"edge-{k}", [*client_args, "--partition", f"{k}/{args.clients}"])
        print(f"logs in {fed.workdir / 'logs'}; following the coordinator (Ctrl-C stops everything)\n")
        code = _follow(coordinator.log_path, coordinator.popen)
        codes = fed.wait_all(60)
        result = _summarize(fed, code, codes)
        if args.dashboard is not None and result == 0:
            print(f"\nThe dashboard stays up at http://localhost:{args.dashboard}/ (Ctrl-C stops it).")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return result


def _port_free(port: int) -> bool:
    """Whether this machine can listen on `port` (on every interface: the broker and the page listen there)."""
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _summarize(fed: LocalFederation, code: int, codes: dict[str, int]) -> int:
    if code != 0 or any(codes.values()):
        print(f"demo failed: exit codes {codes}; see {fed.workdir / 'logs'}", file=sys.stderr)
        return 1
    s = fed.summary()
    print(f"\nDone. Keras test accuracy {s['keras']['accuracy']:.4f}; TFLite float32 "
          f"{s['tflite']['float32']['accuracy']:.4f}.\nModel: {fed.run_dir / 'model.keras'}\n"
          f"TFLite: {fed.run_dir / 'model.tflite'}\nMetrics: {fed.run_dir / 'metrics.jsonl'}")
    return 0


def _follow(path: Path, popen: "subprocess.Popen") -> int:
    """Print the file's lines as they are written until the process exits; return its exit code."""
    with open(path, errors="replace") as fh:
        while True:
            line = fh.readline()
            if line:
                print(line, end="")
                continue
            if popen.poll() is not None:
                print(fh.read(), end="")
                return popen.returncode
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
