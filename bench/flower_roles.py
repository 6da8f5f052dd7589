"""The Flower side of bench/flower_non_iid.py: a Flower 1.41 gRPC server (FedAdam or FedProx) or one client process,
started by that script with the Flower virtual environment's Python (bench/requirements-flower.txt).

Both sides load data, split it and build the model with fedmq's own functions (edge_client.local_data,
federation.learning), so Flower trains exactly the fedmq fleet's parts and model."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MODEL = "small_cnn"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="bench/flower_roles.py", description=__doc__)
    p.add_argument("role", choices=("server", "client"))
    p.add_argument("--address", required=True, help="host:port of the Flower server")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", default="")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--partition", default="", help="client: its part, 1-based K/N")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="partition seed")
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--max-examples", type=int, default=0)
    p.add_argument("--eval-examples", type=int, default=0)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--strategy", choices=("fedadam", "fedprox", "fedavg"), default="fedadam")
    p.add_argument("--eta", type=float, default=0.003)
    p.add_argument("--tau", type=float, default=0.001)
    p.add_argument("--beta-1", type=float, default=0.9)
    p.add_argument("--beta-2", type=float, default=0.99)
    p.add_argument("--mu", type=float, default=0.1)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.001)
    p.add_argument("--result", type=Path, help="server: write the per-round accuracy here (JSON)")
    return p.parse_args(argv)


def server(args: argparse.Namespace) -> None:
    """Run the Flower server for args.rounds rounds, evaluating the global model centrally after each."""
    import keras

    from federation.learning.datasets import load_dataset
    from federation.learning.models import build_model, compile_model

    fl = importlib.import_module("flwr")
    strategies = importlib.import_module("flwr.server.strategy")
    managers: Any = importlib.import_module("flwr.server.client_manager")
    data = load_dataset(args.dataset, data_dir=args.data_dir or None)
    x_test, y_test = data.x_test, data.y_test
    if args.eval_examples:
        x_test, y_test = x_test[: args.eval_examples], y_test[: args.eval_examples]
    keras.utils.set_random_seed(args.model_seed)   # as the fedmq coordinator: the same initial weights
    model = build_model(MODEL, tuple(data.x_train.shape[1:]), len(data.class_names))
    compile_model(model)
    rounds: list[dict[str, Any]] = []
    started: list[float] = []

    def evaluate(server_round: int, parameters: list[Any], config: dict[str, Any]) -> tuple[float, dict[str, float]]:
        model.set_weights(parameters)
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
        now = time.monotonic()
        if server_round > 0:
            rounds.append({"round": server_round, "test_accuracy": float(accuracy), "test_loss": float(loss),
                           "elapsed_s": round(now - started[0], 4)})
            print(f"[flower] round {server_round}: test accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
        return float(loss), {"accuracy": float(accuracy)}

    def fit_config(server_round: int) -> dict[str, Any]:
        return {"epochs": args.local_epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate}

    class TimedClientManager(managers.SimpleClientManager):
        """Notes when the whole fleet is connected: round 1 starts then, as fedmq's elapsed_s counts from its
        round 1, which starts once every client is online (both sides' clients load data and TensorFlow first)."""

        def register(self, client: Any) -> bool:
            added = bool(super().register(client))
            if not started and self.num_available() >= args.clients:
                started.append(time.monotonic())
            return added

    initial = fl.common.ndarrays_to_parameters(model.get_weights())
    common = {"fraction_fit": 1.0, "fraction_evaluate": 0.0, "min_fit_clients": args.clients,
              "min_evaluate_clients": 0, "min_available_clients": args.clients, "evaluate_fn": evaluate,
              "on_fit_config_fn": fit_config, "initial_parameters": initial}
    if args.strategy == "fedadam":
        strategy = strategies.FedAdam(**common, eta=args.eta, eta_l=args.learning_rate, beta_1=args.beta_1,
                                      beta_2=args.beta_2, tau=args.tau)
    elif args.strategy == "fedprox":
        strategy = strategies.FedProx(**common, proximal_mu=args.mu)
    else:
        strategy = strategies.FedAvg(**common)
    fl.server.start_server(server_address=args.address, config=fl.server.ServerConfig(num_rounds=args.rounds),
                           strategy=strategy, client_manager=TimedClientManager())
    if args.result:
        args.result.write_text(json.dumps({"strategy": args.strategy, "rounds": rounds}, indent=2) + "\n",
                               encoding="utf-8")


def client(args: argparse.Namespace) -> None:
    """One Flower client: fedmq's partition of the training set, fedmq's model, Adam, and FedProx's term (the
    product's federation.learning.proximal) when the server's config carries proximal_mu."""
    import keras
    import numpy as np

    from edge_client.local_data import DataChoice, LocalData, load_local_data
    from federation.learning.models import build_model, compile_model
    from federation.learning.proximal import with_proximal_term

    fl = importlib.import_module("flwr")
    local = load_local_data(DataChoice(args.dataset, data_dir=args.data_dir or None, partition=args.partition,
                                       scheme="dirichlet", alpha=args.alpha, seed=args.seed,
                                       max_examples=args.max_examples))
    assert isinstance(local, LocalData), "an image data set gives LocalData"
    x, y = local.x, np.asarray(local.y, dtype=np.int64)
    model = build_model(MODEL, tuple(x.shape[1:]), len(local.class_names))
    index = int(args.partition.split("/")[0])
    fit_round = [0]

    numpy_client: Any = fl.client.NumPyClient

    class FleetClient(numpy_client):
        def get_parameters(self, config: dict[str, Any]) -> list[Any]:
            return [w.numpy() for w in model.weights]

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
            model.set_weights(parameters)
            compile_model(model, "adam", float(config.get("learning_rate", args.learning_rate)))
            mu = float(config.get("proximal_mu", 0.0))
            if mu > 0:
                anchors = {w.path: p for w, p in zip(model.weights, parameters)}
                model.optimizer = with_proximal_term(model.optimizer, anchors, mu)
            fit_round[0] += 1
            keras.utils.set_random_seed(index * 100003 + fit_round[0])
            model.fit(x, y, epochs=int(config.get("epochs", 1)), batch_size=int(config.get("batch_size", 32)),
                      shuffle=True, verbose=0)
            return [w.numpy() for w in model.weights], len(y), {}

        def evaluate(self, parameters: list[Any], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
            return 0.0, len(y), {}

    fl.client.start_client(server_address=args.address, client=FleetClient().to_client(), insecure=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        server(args)
    else:
        client(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
