"""Fashion-MNIST FedAvg benchmark: N clients with IID parts of the 60k training set, the full 10k test set.

Target: test accuracy >= 0.90 after the last round (5 by default) and |TFLite float32 - Keras| <= 0.1 points."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federated_run import REPO_ROOT, print_table, round_table, run_for_bench, write_results

NAME = "fashion_mnist_fedavg"
TARGET_ACCURACY = 0.90
MAX_TFLITE_DELTA_POINTS = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python bench/fashion_mnist_fedavg.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run from the repository root. Exit code: 0 PASS, 1 FAIL, 2 the run itself failed (see the logs).")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    p.add_argument("--clients", type=int, default=2, help="clients, each with an IID part K/N (default 2)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help=f"output folder: <out>/{NAME}.json and <out>/{NAME}/ (logs, run) (default bench/results)")
    p.add_argument("--local-epochs", type=int, default=1, help="training.local_epochs (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="training.batch_size (default 32)")
    p.add_argument("--learning-rate", type=float, default=0.001, help="training.learning_rate, Adam (default 0.001)")
    p.add_argument("--max-examples", type=int, default=0,
                   help="clients use only the first N training examples before partitioning (default 0: all 60k; "
                        "for smoke tests)")
    p.add_argument("--eval-examples", type=int, default=0,
                   help="evaluation.max_examples (default 0: the whole 10k test set; for smoke tests)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before everything is stopped (default 1800)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clients = []
    for k in range(1, args.clients + 1):
        extra = ["--dataset", "fashion_mnist", "--partition", f"{k}/{args.clients}"]
        if args.max_examples:
            extra += ["--max-examples", str(args.max_examples)]
        clients.append(extra)
    overrides = {
        "model.dataset": "fashion_mnist",
        "training.rounds": str(args.rounds),
        "training.local_epochs": str(args.local_epochs),
        "training.batch_size": str(args.batch_size),
        "training.learning_rate": str(args.learning_rate),
        "training.optimizer": "adam",
        "evaluation.max_examples": str(args.eval_examples),
        "export.tflite": ["float32"],
    }
    out = args.out.resolve()
    outcome = run_for_bench(clients, overrides, out / NAME, NAME, args.timeout)
    if outcome is None:
        return 2
    report, total_s = outcome

    print(f"## Fashion-MNIST FedAvg: {args.clients} clients (IID parts), {args.rounds} rounds, "
          f"{args.local_epochs} local epoch(s), batch {args.batch_size}, Adam lr {args.learning_rate:g}\n")
    print_table(*round_table(report.metrics))
    summary = report.summary
    keras_acc = float(summary["keras"]["accuracy"])
    tflite = summary.get("tflite", {}).get("float32")
    print()
    if tflite is None:
        print("TFLite float32 was not exported (summary.json has no tflite.float32)")
        tflite_acc, delta = float("nan"), float("inf")
    else:
        tflite_acc = float(tflite["accuracy"])
        delta = 100.0 * (tflite_acc - keras_acc)
        print_table(["model", "test accuracy", "examples"],
                    [["Keras (final global model)", f"{keras_acc:.4f}", summary["examples_evaluated"]],
                     ["TFLite float32", f"{tflite_acc:.4f}", summary["examples_evaluated"]],
                     ["delta (points)", f"{delta:+.2f}", ""]])

    last = report.metrics[-1] if report.metrics else None
    final_acc = float(last["test_accuracy"]) if last else float("nan")
    checks = [
        (f"all {args.rounds} rounds completed", last is not None and last["round"] == args.rounds
         and summary.get("reason") == "completed"),
        (f"test accuracy after round {last['round'] if last else '?'} = {final_acc:.4f} >= {TARGET_ACCURACY:.2f}",
         final_acc >= TARGET_ACCURACY),
        (f"|TFLite - Keras| = {abs(delta):.2f} points <= {MAX_TFLITE_DELTA_POINTS:g}",
         abs(delta) <= MAX_TFLITE_DELTA_POINTS),
        (f"all {args.clients} clients exited 0", all(c == 0 for c in report.client_exit_codes.values())),
    ]
    print()
    for text, ok in checks:
        print(f"- {'PASS' if ok else 'FAIL'}: {text}")
    passed = all(ok for _, ok in checks)
    print(f"\n**{'PASS' if passed else 'FAIL'}** (wall time {total_s:.1f} s, federated run {report.wall_s:.1f} s)")

    results_path = write_results(out / f"{NAME}.json", {
        "bench": NAME, "passed": passed, "settings": vars(args) | {"out": str(out)}, "overrides": overrides,
        "final_accuracy": final_acc, "keras_accuracy": keras_acc, "tflite_float32_accuracy": tflite_acc,
        "tflite_delta_points": delta, "checks": [{"check": t, "ok": ok} for t, ok in checks],
        "wall_s": round(total_s, 2), "run": report.to_json()})
    print(f"results: {results_path}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
