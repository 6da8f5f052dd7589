"""fedmq and Flower 1.41 side by side on one non-IID setting: MNIST, 10 devices, Dirichlet(0.1), FedAdam and FedProx.

Both train the same parts (fedmq's federation.learning.partition, computed by each process from the same seed),
the same model (small_cnn, the same initial weights), with the same client settings (Adam, 1 epoch, batch 32)
and the same server parameters (FedAdam eta, tau, beta_1, beta_2; FedProx mu; bench/non_iid.py's defaults), and
both evaluate the global model on the same test images after every round. fedmq runs as always (Mosquitto, the
coordinator, 10 edge-client processes); Flower as its gRPC server (flwr.server.start_server) and 10
flwr.client.start_client processes (bench/flower_roles.py). Runs alternate (fedmq, Flower) per strategy.
Reported: accuracy after rounds 10 and 20, and the wall-clock time of the 20 rounds (from the first round's
start) with its ratio Flower / fedmq.

Set-up of Flower (outside the product's virtual environment; it reuses the product's TensorFlow, numpy and grpcio
through a .pth file, and keeps its own protobuf, which TensorFlow 2.21 accepts):

    python3 -m venv .venv-flower                  # from the repository root (or set FEDMQ_FLOWER_PYTHON)
    echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > .venv-flower/lib/python3.11/site-packages/fedmq-product.pth
    .venv-flower/bin/pip install -r bench/requirements-flower.txt

This script runs with the product's Python and starts the Flower processes with --flower-python."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federated_run import REPO_ROOT, print_table, run_for_bench, write_results
from fleet_setup import DATASETS, accuracy_at_round, data_source, load_average, partition_args, percent
from non_iid import METHODS, training_overrides

NAME = "flower_non_iid"
# The Flower venv: $FEDMQ_FLOWER_PYTHON, else .venv-flower/ in the repository root (see the set-up above).
DEFAULT_FLOWER_PYTHON = Path(os.environ.get("FEDMQ_FLOWER_PYTHON",
                                            Path(__file__).resolve().parents[1] / ".venv-flower" / "bin" / "python"))
ROLES = Path(__file__).resolve().parent / "flower_roles.py"
STRATEGIES = ("fedadam", "fedprox")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python bench/flower_non_iid.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run from the repository root with the product's Python. --quick: 10 devices on 10,000 training "
               "images, 2,000 test images, 3 rounds, FedAdam only (a smoke test of a few minutes). Exit code: 0 "
               "both systems ran, 2 a run failed.")
    p.add_argument("--quick", action="store_true", help="smoke test (see below)")
    p.add_argument("--flower-python", type=Path, default=DEFAULT_FLOWER_PYTHON,
                   help=f"Python of the Flower virtual environment (default {DEFAULT_FLOWER_PYTHON})")
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="default mnist")
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet alpha (default 0.1)")
    p.add_argument("--clients", type=int, default=10, help="devices (default 10)")
    p.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    p.add_argument("--report-rounds", default="10,20", help="rounds whose accuracy is shown (default 10,20)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="fedadam,fedprox (default both)")
    p.add_argument("--seed", type=int, default=0, help="partition seed (default 0)")
    p.add_argument("--eta", type=float, default=float(METHODS["fedadam"].overrides["server_optimizer.eta"]),
                   help="FedAdam eta (default: bench/non_iid.py's)")
    p.add_argument("--tau", type=float, default=float(METHODS["fedadam"].overrides["server_optimizer.tau"]),
                   help="FedAdam tau (default: bench/non_iid.py's)")
    p.add_argument("--mu", type=float, default=float(METHODS["fedprox"].overrides["training.proximal_mu"]),
                   help="FedProx mu (default: bench/non_iid.py's)")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.001)
    p.add_argument("--max-examples", type=int, default=0, help="devices split only the first N training images")
    p.add_argument("--eval-examples", type=int, default=0, help="test images evaluated (default 0: all)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help=f"output folder: <out>/{NAME}.json and <out>/{NAME}/ (default bench/results)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds before one run is stopped (default 7200)")
    args = p.parse_args(argv)
    if args.quick:
        explicit = set(argv if argv is not None else sys.argv[1:])
        args.max_examples = args.max_examples or 10000
        args.eval_examples = args.eval_examples or 2000
        if "--rounds" not in explicit:
            args.rounds = 3
        if "--report-rounds" not in explicit:
            args.report_rounds = "2,3"
        if "--strategies" not in explicit:
            args.strategies = "fedadam"
        args.timeout = min(args.timeout, 900.0)
    args.optimizer = "adam"   # the clients' optimizer on both sides (Flower: bench/flower_roles.py)
    args.strategy_keys = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = set(args.strategy_keys) - set(STRATEGIES)
    if bad:
        p.error(f"unknown strategy {', '.join(sorted(bad))}; choose from {', '.join(STRATEGIES)}")
    args.report_at = [int(r) for r in args.report_rounds.split(",") if r.strip()]
    if not args.flower_python.is_file():
        p.error(f"{args.flower_python} not found: set up Flower as this script's --help says, or pass "
                "--flower-python PATH")
    return args


def fedmq_run(args: argparse.Namespace, strategy: str) -> list[dict[str, Any]] | None:
    source = data_source(args.dataset)
    fleet = [[*source.client_args(), *partition_args(k, args.clients, "dirichlet", args.alpha, args.seed,
                                                     args.max_examples)] for k in range(args.clients)]
    if strategy == "fedadam":
        method = {"server_optimizer.name": "fedadam", "server_optimizer.eta": str(args.eta),
                  "server_optimizer.tau": str(args.tau), "server_optimizer.beta_1": "0.9",
                  "server_optimizer.beta_2": "0.99"}
    else:
        method = {"training.proximal_mu": str(args.mu)}
    overrides = {**source.coordinator_overrides(), **training_overrides(args, args.rounds, args.clients), **method}
    run_name = f"{NAME}-fedmq-{strategy}"
    outcome = run_for_bench(fleet, overrides, args.out / NAME / run_name, run_name, args.timeout)
    return None if outcome is None else outcome[0].metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_run(args: argparse.Namespace, strategy: str) -> list[dict[str, Any]] | None:
    """Flower's server and clients as processes; the server's per-round results, or None (logs printed)."""
    source = data_source(args.dataset)
    address = f"127.0.0.1:{free_port()}"
    logs = args.out / NAME / "flower-logs" / strategy
    logs.mkdir(parents=True, exist_ok=True)
    result = args.out / NAME / f"flower-{strategy}.json"
    result.unlink(missing_ok=True)
    common = [str(ROLES), "--address", address, "--dataset", source.dataset, "--data-dir", source.data_dir,
              "--clients", str(args.clients), "--alpha", f"{args.alpha:g}", "--seed", str(args.seed),
              "--max-examples", str(args.max_examples), "--eval-examples", str(args.eval_examples),
              "--rounds", str(args.rounds), "--strategy", strategy, "--eta", str(args.eta), "--tau", str(args.tau),
              "--mu", str(args.mu), "--local-epochs", str(args.local_epochs), "--batch-size", str(args.batch_size),
              "--learning-rate", str(args.learning_rate)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    print(f"[bench] Flower {strategy} on {address}; logs in {logs}; load {load_average()}", file=sys.stderr)
    try:
        procs["server"] = _spawn([str(args.flower_python), common[0], "server", *common[1:], "--result",
                                  str(result)], logs / "server.log", env)
        time.sleep(3)
        for k in range(args.clients):
            procs[f"client-{k + 1}"] = _spawn([str(args.flower_python), common[0], "client", *common[1:],
                                               "--partition", f"{k + 1}/{args.clients}"],
                                              logs / f"client-{k + 1}.log", env)
        deadline = time.monotonic() + args.timeout
        while procs["server"].poll() is None:
            failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                print(f"ERROR: Flower {strategy}: {', '.join(failed) or 'timeout'}; see {logs}", file=sys.stderr)
                return None
            time.sleep(0.5)
        if procs["server"].returncode != 0 or not result.is_file():
            print(f"ERROR: the Flower server exited with {procs['server'].returncode}; see {logs / 'server.log'}",
                  file=sys.stderr)
            return None
        rows: list[dict[str, Any]] = json.loads(result.read_text(encoding="utf-8"))["rounds"]
        return rows
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    load_start = load_average()
    rows: list[dict[str, Any]] = []
    for strategy in args.strategy_keys:
        for system, runner in (("fedmq", fedmq_run), ("Flower 1.41", flower_run)):
            metrics = runner(args, strategy)
            if metrics is None:
                return 2
            rows.append({"system": system, "strategy": strategy, "metrics": metrics,
                         "accuracy": {str(r): accuracy_at_round(metrics, r) for r in args.report_at},
                         "elapsed_s": float(metrics[-1]["elapsed_s"]) if metrics else None})
    load_end = load_average()
    print(f"## fedmq and Flower 1.41: {args.dataset}, {args.clients} devices, Dirichlet {args.alpha:g}, "
          f"{args.rounds} rounds\n")
    print(f"FedAdam eta {args.eta:g}, tau {args.tau:g}, beta 0.9/0.99; FedProx mu {args.mu:g}; clients Adam lr "
          f"{args.learning_rate:g}, {args.local_epochs} epoch(s), batch {args.batch_size}; training images "
          f"{args.max_examples or 'all'}, test images {args.eval_examples or 'all'}. Load average at start: "
          f"{load_start}; at end: {load_end}.\n")
    shown = [str(r) for r in args.report_at]
    table = []
    for r in rows:
        fedmq = next(x for x in rows if x["system"] == "fedmq" and x["strategy"] == r["strategy"])
        ratio = (r["elapsed_s"] / fedmq["elapsed_s"]) if r["elapsed_s"] and fedmq["elapsed_s"] else None
        table.append([r["strategy"], r["system"], *[percent(r["accuracy"][s]) for s in shown],
                      f"{r['elapsed_s']:.1f}" if r["elapsed_s"] is not None else "n/a",
                      "n/a" if ratio is None else f"{ratio:.2f}"])
    print_table(["strategy", "system", *[f"round {s}" for s in shown], f"time of {args.rounds} rounds (s)",
                 "time / fedmq's"], table)
    path = write_results(args.out / f"{NAME}.json", {
        "bench": NAME, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average_start": load_start, "load_average_end": load_end, "rows": rows})
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
