"""The Flower side of bench/scale.py: a Flower 1.41 gRPC server (FedAvg) or a process of simulated Flower clients,
started by that script with the Flower virtual environment's Python (bench/requirements-flower.txt).

Simulated clients are as light as fedmq's simulator: fit() sleeps the training time and returns the parameters it
received (the same 0.9 MB of small_cnn), evaluate() is not asked. As the Flower guide says for 1,000 simulated
clients, the clients' gRPC connectivity polling is off (one polling thread per channel otherwise) and the server's
thread pools (its gRPC server and its round) get one worker per client, or Flower would measure its own limits.
The server times each round from the moment its cohort is sampled to the end of aggregate_fit, and notes its RSS
when round 1 starts and its peak (VmHWM) at the end, in the --result JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

GRPC_MAX_MESSAGE = 512 * 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="bench/flower_scale.py", description=__doc__)
    p.add_argument("role", choices=("server", "clients"))
    p.add_argument("--address", required=True, help="host:port of the Flower server")
    p.add_argument("--shapes", type=Path, required=True, help="JSON list of the model's weight shapes (float32)")
    p.add_argument("--devices", type=int, required=True, help="server: clients online")
    p.add_argument("--cohort", type=int, default=0, help="server: clients training per round (0: all)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=0, help="clients: how many this process runs")
    p.add_argument("--train-seconds", type=float, default=2.0, help="clients: the simulated training time")
    p.add_argument("--result", type=Path, help="server: write the rounds' times and its memory here (JSON)")
    return p.parse_args(argv)


def memory() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    values = {"VmRSS": 0, "VmHWM": 0}
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        name, _, rest = line.partition(":")
        if name in values:
            values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def parameters(shapes_file: Path) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.standard_normal(tuple(shape)).astype(np.float32) * 0.05
            for shape in json.loads(shapes_file.read_text(encoding="utf-8"))]


def server(args: argparse.Namespace) -> None:
    """FedAvg over args.devices clients, args.cohort of them per round, args.rounds rounds."""
    fl = importlib.import_module("flwr")
    grpc_bidi: Any = importlib.import_module("flwr.server.superlink.fleet.grpc_bidi.grpc_server")
    server_module: Any = importlib.import_module("flwr.server.server")
    managers: Any = importlib.import_module("flwr.server.client_manager")
    strategies: Any = importlib.import_module("flwr.server.strategy")
    cohort = args.cohort or args.devices
    rounds: list[dict[str, float]] = []
    started: dict[int, float] = {}
    at_round_1: list[int] = []

    class TimedFedAvg(strategies.FedAvg):
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            instructions = super().configure_fit(server_round, parameters, client_manager)  # waits for the fleet
            started[server_round] = time.monotonic()
            if server_round == 1:
                at_round_1.append(memory()[0])
            return instructions

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            aggregated = super().aggregate_fit(server_round, results, failures)
            round_time = time.monotonic() - started[server_round]
            rounds.append({"round": server_round, "round_time_s": round(round_time, 4), "clients": len(results),
                           "failures": len(failures),
                           "overhead_s": round(round_time - min(args.train_seconds, round_time), 4)})
            print(f"[flower] round {server_round}: {len(results)} results, {len(failures)} failures, "
                  f"{round_time:.2f} s", file=sys.stderr, flush=True)
            return aggregated

    strategy = TimedFedAvg(fraction_fit=cohort / args.devices, min_fit_clients=cohort, fraction_evaluate=0.0,
                           min_evaluate_clients=0, min_available_clients=args.devices,
                           initial_parameters=fl.common.ndarrays_to_parameters(parameters(args.shapes)))
    manager = managers.SimpleClientManager()
    fl_server = server_module.Server(client_manager=manager, strategy=strategy)
    fl_server.set_max_workers(args.devices)
    grpc_server = grpc_bidi.start_grpc_server(client_manager=manager, server_address=args.address,
                                              max_concurrent_workers=args.devices + 64,
                                              max_message_length=GRPC_MAX_MESSAGE)
    try:
        server_module.run_fl(server=fl_server, config=fl.server.ServerConfig(num_rounds=args.rounds))
    finally:
        grpc_server.stop(grace=1)
    if args.result:
        args.result.write_text(json.dumps({"rounds": rounds, "rss_at_round_1": at_round_1[0] if at_round_1 else 0,
                                           "rss_peak": memory()[1]}, indent=2) + "\n", encoding="utf-8")


def clients(args: argparse.Namespace) -> None:
    """args.clients simulated Flower clients, one thread each (Flower's client API blocks per client)."""
    import grpc

    channel_class: Any = importlib.import_module("grpc._channel").Channel
    channel_class.subscribe = lambda self, callback, try_to_connect=False: None   # no connectivity polling thread
    assert grpc is not None
    fl = importlib.import_module("flwr")
    numpy_client: Any = fl.client.NumPyClient

    class SleepingClient(numpy_client):
        def get_parameters(self, config: dict[str, Any]) -> list[Any]:
            return []

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
            time.sleep(args.train_seconds)
            return parameters, 600, {}

        def evaluate(self, parameters: list[Any], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
            return 0.0, 600, {}

    def run_one() -> None:
        fl.client.start_client(server_address=args.address, client=SleepingClient().to_client(), insecure=True,
                               grpc_max_message_length=GRPC_MAX_MESSAGE)

    threads = [threading.Thread(target=run_one, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        server(args)
    else:
        clients(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
