"""Time to accuracy with uneven devices: Fashion-MNIST, 10 devices with IID parts, 2 of them 10 times slower.

Wall-clock seconds from the first round's start (metrics.jsonl elapsed_s) to 85% test accuracy under synchronous
FedAvg (every round waits for the slow devices), asynchronous FedBuff ([aggregation] mode = "async") and synchronous
FedAvg with a deadline that drops the stragglers (quorum.min_clients 8, fraction 0.8, round_deadline_s). Runs
alternate (sync, async, deadline; again with --repeats) so that a change in the machine's load hits all of them.
Target: async at least 1.5 times faster than synchronous FedAvg (the median of the repeats' ratios).

--speeds lognormal gives every device a speed of its own instead: slowdowns at the quantiles of a log-normal
distribution, from 1 (the fastest device) to --slowdown (the slowest), like a real fleet's mix of laptops and Pis."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federated_run import REPO_ROOT, print_table, run_for_bench, write_results
from fleet_setup import data_source, load_average, partition_args, seconds, time_to_accuracy

NAME = "uneven_devices"
TARGET_SPEEDUP = 1.5
MODES = ("sync", "async", "deadline")
SPEEDS = ("fixed", "lognormal")


@dataclass(frozen=True)
class AsyncSetting:
    """One FedBuff configuration: buffer_size K and max_staleness."""

    buffer_size: int
    max_staleness: int

    @property
    def label(self) -> str:
        return f"async K={self.buffer_size} S={self.max_staleness}"


def parse_async_settings(text: str) -> list[AsyncSetting]:
    """"5:20,8:10" -> [AsyncSetting(5, 20), AsyncSetting(8, 10)]."""
    settings = []
    for item in text.split(","):
        try:
            k, s = (int(v) for v in item.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad async setting {item!r}: expected K:S such as 5:20") from None
        if k < 1 or s < 0:
            raise argparse.ArgumentTypeError(f"bad async setting {item!r}: need K >= 1 and S >= 0")
        settings.append(AsyncSetting(k, s))
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python bench/uneven_devices.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run from the repository root. --quick: 10 devices on 10,000 training images, 2,000 test images, "
               "target 75%, one repeat (a smoke test of a few minutes). Exit code: 0 PASS, 1 FAIL, 2 a run failed.")
    p.add_argument("--quick", action="store_true", help="smoke test (see below)")
    p.add_argument("--repeats", type=int, default=1, help="times the three modes are run, alternating (default 1)")
    p.add_argument("--clients", type=int, default=10, help="devices, each with an IID part K/N (default 10)")
    p.add_argument("--slow-clients", type=int, default=2, help="how many of them are slowed down (default 2)")
    p.add_argument("--slowdown", type=float, default=10.0,
                   help="their --slowdown factor; with --speeds lognormal the slowest device's (default 10)")
    p.add_argument("--speeds", choices=SPEEDS, default="fixed",
                   help="fixed: --slow-clients devices at --slowdown, the rest at full speed; lognormal: every "
                        "device slowed down by a log-normal quantile from 1 to --slowdown, and the devices "
                        "at half of --slowdown or more count as slow (default fixed)")
    p.add_argument("--target", type=float, default=0.85, help="test accuracy to reach (default 0.85)")
    p.add_argument("--sync-rounds", type=int, default=5, help="rounds of the sync and deadline runs (default 5)")
    p.add_argument("--async-steps", type=int, default=20, help="versions (steps) of an async run (default 20)")
    p.add_argument("--async", dest="async_settings", type=parse_async_settings, default=parse_async_settings("5:20,8:20"),
                   help="FedBuff settings K:S (buffer_size:max_staleness), comma-separated; each is a mode of its "
                        "own in the alternation (default 5:20,8:20)")
    p.add_argument("--deadline-s", type=float, default=120.0,
                   help="deadline mode: quorum.round_deadline_s, with min_clients 8 and fraction 0.8 (default 120)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--local-epochs", type=int, default=1, help="training.local_epochs (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="training.batch_size (default 32)")
    p.add_argument("--learning-rate", type=float, default=0.001, help="training.learning_rate, Adam (default 0.001)")
    p.add_argument("--max-examples", type=int, default=0,
                   help="devices split only the first N training images (default 0: all 60,000)")
    p.add_argument("--eval-examples", type=int, default=0,
                   help="evaluation.max_examples (default 0: the whole 10,000-image test set)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help=f"output folder: <out>/{NAME}.json and <out>/{NAME}/ (logs, runs) (default bench/results)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before one run is stopped (default 3600)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_examples = args.max_examples or 10000
        args.eval_examples = args.eval_examples or 2000
        args.target = 0.75 if args.target == 0.85 else args.target
        args.sync_rounds = min(args.sync_rounds, 3)
        args.async_steps = min(args.async_steps, 10)
        args.timeout = min(args.timeout, 900.0)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if not 0 <= args.slow_clients <= args.clients:
        p.error("--slow-clients must be between 0 and --clients")
    if not 1.0 <= args.slowdown <= 1000:
        p.error(f"--slowdown {args.slowdown:g} is out of range: 1 to 1000")
    return args


def lognormal_slowdowns(clients: int, spread: float) -> list[float]:
    """Each device's slowdown, fastest first: exp(sigma * z) at the normal quantiles (k + 0.5) / clients, scaled
    so that the fastest device is 1 and the slowest `spread`. Deterministic: the same fleet in every run."""
    if clients == 1:
        return [1.0]
    normal = statistics.NormalDist()
    z = [normal.inv_cdf((k + 0.5) / clients) for k in range(clients)]
    return [math.exp(math.log(spread) * (q - z[0]) / (z[-1] - z[0])) for q in z]


def device_slowdowns(args: argparse.Namespace) -> list[float]:
    """Every device's --slowdown factor, in fleet order (1.0: full speed)."""
    if args.speeds == "lognormal":
        return lognormal_slowdowns(args.clients, args.slowdown)
    return [args.slowdown if k >= args.clients - args.slow_clients else 1.0 for k in range(args.clients)]


def mode_plan(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(label, coordinator overrides) of each mode, in the order they alternate."""
    common: dict[str, Any] = {
        "training.local_epochs": str(args.local_epochs), "training.batch_size": str(args.batch_size),
        "training.learning_rate": str(args.learning_rate), "training.optimizer": "adam",
        "evaluation.max_examples": str(args.eval_examples), "export.tflite": [], "deploy.enabled": "false",
        "quorum.wait_for_clients_s": "600", "quorum.start_grace_s": "5",
        "sampling.min_available_clients": str(args.clients),   # every mode starts with the whole fleet online
    }
    plan: list[tuple[str, dict[str, Any]]] = []
    for mode in args.modes:
        if mode == "sync":
            plan.append(("sync FedAvg", {**common, "training.rounds": str(args.sync_rounds),
                                         "quorum.min_clients": str(args.clients)}))
        elif mode == "async":
            for s in args.async_settings:
                plan.append((s.label, {**common, "training.rounds": str(args.async_steps),
                                       "aggregation.mode": "async", "aggregation.buffer_size": str(s.buffer_size),
                                       "aggregation.max_staleness": str(s.max_staleness),
                                       "quorum.min_clients": str(min(s.buffer_size, args.clients))}))
        else:
            quorum = max(1, round(0.8 * args.clients))
            plan.append((f"sync deadline {args.deadline_s:g} s, quorum {quorum}",
                         {**common, "training.rounds": str(args.sync_rounds), "quorum.min_clients": str(quorum),
                          "quorum.fraction": "0.8", "quorum.round_deadline_s": str(args.deadline_s)}))
    return plan


def run_slug(label: str) -> str:
    """A mode's label as a folder name: "async K=5 S=20" -> "async-K5-S20"."""
    if label.startswith("sync deadline"):
        return "deadline"
    return "-".join(label.replace("=", "").split()[:3]).replace("sync-FedAvg", "sync")


def fleet(args: argparse.Namespace, client_args: list[str]) -> list[list[str]]:
    """The devices' extra arguments: IID parts and each one's slowdown (device_slowdowns). The slow ones (at half of
    --slowdown or more) are called slow-K, the others fast-K; the table counts the slow ones' updates."""
    clients = []
    for k, slowdown in enumerate(device_slowdowns(args)):
        extra = [*client_args, *partition_args(k, args.clients, max_examples=args.max_examples)]
        slow = slowdown > 1.0 and slowdown >= args.slowdown / 2
        extra += ["--client-id", f"{'slow' if slow else 'fast'}-{k + 1}"]
        if slowdown > 1.0:
            extra += ["--slowdown", f"{slowdown:.3g}"]
        clients.append(extra)
    return clients


def summarize(label: str, repeat: int, metrics: list[dict[str, Any]], target: float) -> dict[str, Any]:
    last = metrics[-1] if metrics else {}
    refused = sum(int(m.get("rejected", {}).get("stale", 0)) for m in metrics)
    late = sum(sum(int(v) for v in m.get("ignored", {}).values()) for m in metrics)
    stale_used = sum(int(m.get("aggregation", {}).get("stale_updates", 0)) for m in metrics)
    slow_used = sum(1 for m in metrics for c in m.get("client_ids", []) if c.startswith("slow-"))
    return {"mode": label, "repeat": repeat, "time_to_target_s": time_to_accuracy(metrics, target),
            "rounds": len(metrics), "final_accuracy": float(last.get("test_accuracy", float("nan"))),
            "final_elapsed_s": float(last.get("elapsed_s", float("nan"))),
            "updates_used": sum(int(m["clients"]) for m in metrics), "slow_updates_used": slow_used,
            "stale_updates_used": stale_used, "stale_refused": refused, "late_or_ignored": late,
            "staleness_max": max((int(m.get("aggregation", {}).get("staleness_max", 0)) for m in metrics), default=0)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = load_average()
    source = data_source("fashion_mnist")
    clients = fleet(args, source.client_args())
    plan = mode_plan(args)
    out = args.out.resolve()
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        for label, overrides in plan:
            run_name = f"{NAME}-{run_slug(label)}-{repeat}"
            print(f"[bench] repeat {repeat}: {label} ({run_name}); load {load_average()}", file=sys.stderr)
            outcome = run_for_bench(clients, {**source.coordinator_overrides(), **overrides},
                                    out / NAME / run_name, run_name, args.timeout)   # its own logs/ folder
            if outcome is None:
                return 2
            report, _ = outcome
            rows.append(summarize(label, repeat, report.metrics, args.target))
            runs.append({"label": label, "repeat": repeat, "overrides": overrides, "run": report.to_json()})
    load_end = load_average()

    speeds = (f"{args.slow_clients} of them --slowdown {args.slowdown:g}" if args.speeds == "fixed" else
              "log-normal slowdowns " + ", ".join(f"{x:.3g}" for x in device_slowdowns(args)))
    print(f"## Time to {100 * args.target:.0f}% test accuracy: Fashion-MNIST, {args.clients} devices (IID parts), "
          f"{speeds}\n")
    print(f"Training images: {args.max_examples or 'all 60,000'}; test images: {args.eval_examples or 'all 10,000'}; "
          f"{args.local_epochs} local epoch(s), batch {args.batch_size}, Adam lr {args.learning_rate:g}. "
          f"Load average at start: {load_start}; at end: {load_end}.\n")
    print_table(["repeat", "mode", "time to target (s)", "rounds/steps", "final accuracy", "run time (s)",
                 "updates used", "from slow devices", "stale used", "stale refused", "late (ignored)",
                 "staleness max"],
                [[r["repeat"], r["mode"], seconds(r["time_to_target_s"]), r["rounds"], f"{r['final_accuracy']:.4f}",
                  f"{r['final_elapsed_s']:.1f}", r["updates_used"], r["slow_updates_used"], r["stale_updates_used"],
                  r["stale_refused"], r["late_or_ignored"], r["staleness_max"]] for r in rows])

    ratios = speedups(rows, [label for label, _ in plan])
    print()
    print_table(["mode", "median time to target (s)", "speed-up over sync FedAvg (median of repeats)",
                 "per repeat"],
                [[label, seconds(r["median_s"]), "n/a" if r["median_ratio"] is None else f"{r['median_ratio']:.2f}x",
                  ", ".join("n/a" if x is None else f"{x:.2f}" for x in r["ratios"])]
                 for label, r in ratios.items()])
    best_async = max((r["median_ratio"] for label, r in ratios.items() if label.startswith("async")
                      and r["median_ratio"] is not None), default=None)
    checks = [(f"async reaches {100 * args.target:.0f}% at least {TARGET_SPEEDUP:g}x faster than sync FedAvg "
               f"(best median ratio {'n/a' if best_async is None else f'{best_async:.2f}'})",
               best_async is not None and best_async >= TARGET_SPEEDUP)]
    print()
    for text, ok in checks:
        print(f"- {'PASS' if ok else 'FAIL'}: {text}")
    passed = all(ok for _, ok in checks)
    path = write_results(out / f"{NAME}.json", {
        "bench": NAME, "passed": passed, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                      for k, v in vars(args).items() if k != "async_settings"}
        | {"async_settings": [s.label for s in args.async_settings]},
        "load_average_start": load_start, "load_average_end": load_end, "rows": rows, "speedups": ratios,
        "checks": [{"check": t, "ok": ok} for t, ok in checks], "runs": runs})
    print(f"results: {path}", file=sys.stderr)
    return 0 if passed else 1


def speedups(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Per mode: the median time to target and the sync time / its time, per repeat and their median."""
    sync = {r["repeat"]: r["time_to_target_s"] for r in rows if r["mode"] == "sync FedAvg"}
    result: dict[str, dict[str, Any]] = {}
    for label in labels:
        mine = [r for r in rows if r["mode"] == label]
        times = [r["time_to_target_s"] for r in mine if r["time_to_target_s"] is not None]
        ratios = [None if r["time_to_target_s"] is None or sync.get(r["repeat"]) is None
                  else sync[r["repeat"]] / r["time_to_target_s"] for r in mine]
        known = [x for x in ratios if x is not None]
        result[label] = {"median_s": statistics.median(times) if len(times) == len(mine) and times else None,
                         "ratios": ratios, "median_ratio": statistics.median(known) if known else None}
    return result


if __name__ == "__main__":
    sys.exit(main())
