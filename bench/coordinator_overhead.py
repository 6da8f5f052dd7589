"""Coordinator overhead benchmark: 10 Fashion-MNIST clients on loopback, short local training, 3 rounds.

Per round: round time, slowest client training, overhead (the difference), aggregation, evaluation, bytes."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federated_run import REPO_ROOT, print_table, run_for_bench, write_results

NAME = "coordinator_overhead"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python bench/coordinator_overhead.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run from the repository root. overhead = round_time_s - slowest_train_s from metrics.jsonl: "
               "publishing, transfer, decoding and waiting, plus client scheduling delays when the clients "
               "share fewer cores than there are clients. Exit code 0, or 2 when the run failed.")
    p.add_argument("--clients", type=int, default=10, help="clients (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    p.add_argument("--max-examples", type=int, default=6000,
                   help="clients take part K/N of the first N training examples (default 6000)")
    p.add_argument("--eval-examples", type=int, default=2000, help="evaluation.max_examples (default 2000)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help=f"output folder: <out>/{NAME}.json and <out>/{NAME}/ (logs, run) (default bench/results)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds before everything is stopped (default 1200)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clients = [["--dataset", "fashion_mnist", "--max-examples", str(args.max_examples),
                "--partition", f"{k}/{args.clients}"] for k in range(1, args.clients + 1)]
    overrides = {"model.dataset": "fashion_mnist", "training.rounds": str(args.rounds),
                 "evaluation.max_examples": str(args.eval_examples), "export.tflite": ["float32"]}
    out = args.out.resolve()
    outcome = run_for_bench(clients, overrides, out / NAME, NAME, args.timeout)
    if outcome is None:
        return 2
    report, total_s = outcome

    cores = os.cpu_count() or 0
    print(f"## Coordinator overhead: {args.clients} clients on loopback, {args.rounds} rounds, "
          f"{args.max_examples // args.clients} examples per client, evaluation on {args.eval_examples} examples, "
          f"{cores} CPU cores\n")
    headers = ["round", "clients", "round time (s)", "slowest client training (s)", "overhead (s)",
               "aggregate (s)", "evaluate (s)", "MB in", "MB out"]
    rows = [[m["round"], m["clients"], f"{m['round_time_s']:.2f}", f"{m['slowest_train_s']:.2f}",
             f"{m['overhead_s']:.2f}", f"{m['aggregate_s']:.3f}", f"{m['evaluate_s']:.3f}",
             f"{m['bytes_in'] / 1e6:.2f}", f"{m['bytes_out'] / 1e6:.2f}"] for m in report.metrics]
    print_table(headers, rows)
    later = [m["overhead_s"] for m in report.metrics if m["round"] > 1]
    mean_overhead = statistics.fmean(later) if later else float("nan")
    print()
    if later:
        print(f"Mean overhead excluding round 1 (client warm-up): **{mean_overhead:.2f} s** "
              f"over rounds 2-{report.metrics[-1]['round']}.")
    else:
        print("Mean overhead excluding round 1: n/a (only one round).")
    if args.clients > cores:
        print(f"Note: {args.clients} TensorFlow processes share {cores} CPU cores, so clients train in turns; "
              "the overhead includes that contention, not only the coordinator's and the broker's work.")
    print(f"\nwall time {total_s:.1f} s (federated run {report.wall_s:.1f} s)")
    results_path = write_results(out / f"{NAME}.json", {
        "bench": NAME, "settings": vars(args) | {"out": str(out)}, "overrides": overrides, "cpu_count": cores,
        "mean_overhead_excluding_round_1_s": mean_overhead, "wall_s": round(total_s, 2), "run": report.to_json()})
    print(f"results: {results_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
