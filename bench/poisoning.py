"""Poisoning benchmark: 5 real edge clients on Fashion-MNIST, one of them malicious (bench/attacks.py `--attack`), under plain FedAvg
and under the robust rules. Prints a Markdown table: final accuracy per (rule, attack) and its distance to clean FedAvg.

Attacks: the update delta x50, sign-flipped (x -1), and sign-flipped and scaled (x -4). Pass: clip + trimmed mean and
Multi-Krum stay within 2 points of clean FedAvg under every attack, and FedAvg collapses under the x50 scaling and the
x -4 flip (otherwise those attacks prove nothing)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federated_run import (
    REPO_ROOT, FederationError, RunReport, print_table, run_federation, write_results,
)

NAME = "poisoning"
MAX_ROBUST_GAP_POINTS = 2.0
COLLAPSE_POINTS = 10.0   # FedAvg "collapses" when it loses more than this many points to the clean run


@dataclass(frozen=True)
class Scenario:
    rule: str                 # label in the table
    overrides: dict[str, str]
    attack: str               # "" (all honest) or a bench/attacks.py --attack spec
    clip: bool = False        # apply the calibrated clip_norm

    @property
    def key(self) -> str:
        import re

        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.rule}--{self.attack or 'none'}").strip("_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python bench/poisoning.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run from the repository root. Exit code: 0 PASS, 1 FAIL, 2 a run failed.")
    p.add_argument("--rounds", type=int, default=4, help="federated rounds per run (default 4)")
    p.add_argument("--clients", type=int, default=5, help="clients, the last one malicious (default 5)")
    p.add_argument("--examples-per-client", type=int, default=2000, help="IID training examples each (default 2000)")
    p.add_argument("--eval-examples", type=int, default=0, help="evaluation.max_examples (default 0: all 10k)")
    p.add_argument("--scale", type=float, default=50.0, help="the scaling attack's factor (default 50)")
    p.add_argument("--flip", type=float, default=4.0, help="the strong sign flip's factor (default 4)")
    p.add_argument("--clip-norm", type=float, default=0.0,
                   help="aggregation.clip_norm of the clipped rules (default 0: the largest per-round median "
                        "update norm of the clean FedAvg run, so that honest updates are hardly ever clipped)")
    p.add_argument("--trim-fraction", type=float, default=0.2, help="trimmed mean's trim_fraction (default 0.2)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help=f"output folder: <out>/{NAME}.json and <out>/{NAME}/ (logs, runs)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per run before it is stopped")
    return p.parse_args(argv)


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    scale, flip = f"scale:{args.scale:g}", f"sign_flip:{args.flip:g}"
    fedavg = {"aggregation.rule": "fedavg"}
    trimmed = {"aggregation.rule": "trimmed_mean", "aggregation.trim_fraction": str(args.trim_fraction)}
    krum = {"aggregation.rule": "multi_krum", "aggregation.krum_byzantine": "1"}
    attacks = ("", scale, "sign_flip", flip)
    out = [Scenario("FedAvg", fedavg, attack) for attack in attacks]
    out += [Scenario("clip + trimmed mean", trimmed, attack, clip=True) for attack in attacks]
    out += [Scenario("Multi-Krum (f=1)", krum, attack) for attack in attacks]
    return out


def run_scenario(s: Scenario, args: argparse.Namespace, clip_norm: float, out: Path) -> RunReport:
    n = args.clients
    clients = [["--dataset", "fashion_mnist", "--partition", f"{k}/{n}", "--max-examples",
                str(n * args.examples_per_client)] for k in range(1, n + 1)]
    attacks = {n - 1: s.attack} if s.attack else {}  # the last client, through bench/attacks.py
    overrides: dict[str, Any] = {
        "model.dataset": "fashion_mnist", "training.rounds": str(args.rounds), "training.local_epochs": "1",
        "training.batch_size": "32", "training.learning_rate": "0.001", "training.optimizer": "adam",
        "evaluation.max_examples": str(args.eval_examples), "export.tflite": [], "deploy.enabled": "false",
        "quorum.round_deadline_s": "900", **s.overrides,
    }
    if s.clip:
        overrides["aggregation.clip_norm"] = f"{clip_norm:.6g}"
    print(f"[bench] {s.rule} / {s.attack or 'no attack'}", file=sys.stderr, flush=True)
    return run_federation(clients, overrides, out / s.key, s.key, args.timeout, attacks=attacks)


def attacker_note(report: RunReport, attacker: str) -> str:
    """How often the rule neutralised the attacker: excluded by Krum, or clipped."""
    rows = report.metrics
    excluded = sum(attacker in r.get("aggregation", {}).get("krum_excluded", []) for r in rows)
    clipped = sum(attacker in r.get("aggregation", {}).get("clipped", []) for r in rows)
    if any("krum_excluded" in r.get("aggregation", {}) for r in rows):
        return f"{attacker} excluded {excluded}/{len(rows)} rounds"
    if any("clip_norm" in r.get("aggregation", {}) for r in rows):
        return f"{attacker} clipped {clipped}/{len(rows)} rounds"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (args.out / NAME).resolve()
    attacker = f"client-{args.clients}"
    started = time.monotonic()
    reports: list[tuple[Scenario, RunReport]] = []
    clip_norm = args.clip_norm
    try:
        for s in scenarios(args):
            if s.clip and not clip_norm:
                clean = reports[0][1]
                clip_norm = max(r["aggregation"]["update_norm_median"] for r in clean.metrics)
                print(f"[bench] clip_norm = {clip_norm:.4g} (largest per-round median update norm of the clean "
                      "run)", file=sys.stderr, flush=True)
            reports.append((s, run_scenario(s, args, clip_norm, out)))
    except FederationError as exc:
        print(f"ERROR: a federated run failed: {exc}", file=sys.stderr)
        return 2
    total_s = time.monotonic() - started

    clean_acc = float(reports[0][1].metrics[-1]["test_accuracy"])
    strong = {f"scale:{args.scale:g}", f"sign_flip:{args.flip:g}"}
    rows, results, passed = [], [], True
    for s, report in reports:
        acc = float(report.metrics[-1]["test_accuracy"])
        gap = 100.0 * (acc - clean_acc)
        if s.rule == "FedAvg" and not s.attack:
            verdict = "baseline"
        elif s.rule == "FedAvg":
            collapsed = gap < -COLLAPSE_POINTS
            verdict = "collapses" if collapsed else "survives"
            if s.attack in strong and not collapsed:
                verdict += " (FAIL: attack too weak)"
                passed = False
        else:
            ok = abs(gap) <= MAX_ROBUST_GAP_POINTS
            verdict = "PASS" if ok else "FAIL"
            passed &= ok
        attack = {"": "none"}.get(s.attack, s.attack)
        rows.append([s.rule + (f" (clip {clip_norm:.3g})" if s.clip else ""), attack, f"{acc:.4f}",
                     f"{gap:+.2f}", verdict, attacker_note(report, attacker)])
        results.append({"rule": s.rule, "attack": attack, "overrides": s.overrides, "clip_norm": clip_norm if s.clip
                        else 0.0, "final_accuracy": acc, "delta_points": gap, "verdict": verdict,
                        "accuracy_per_round": [m["test_accuracy"] for m in report.metrics],
                        "aggregation_per_round": [m.get("aggregation", {}) for m in report.metrics],
                        "wall_s": round(report.wall_s, 1)})

    n, e = args.clients, args.examples_per_client
    print(f"## Poisoning: {n} clients x {e} Fashion-MNIST examples (IID), {attacker} malicious, {args.rounds} rounds, "
          f"test set {args.eval_examples or 10000}\n")
    print_table(["rule", "attack (client " + str(n) + ")", "final accuracy", "vs clean FedAvg (points)", "verdict",
                 "what the rule did"], rows, align="llrrll")
    print(f"\nRobust rules must stay within {MAX_ROBUST_GAP_POINTS:g} points of clean FedAvg "
          f"({clean_acc:.4f}); FedAvg 'collapses' when it loses more than {COLLAPSE_POINTS:g}.")
    print(f"\n**{'PASS' if passed else 'FAIL'}** (wall time {total_s / 60:.1f} min)")
    path = write_results(args.out.resolve() / f"{NAME}.json", {
        "bench": NAME, "passed": passed, "settings": vars(args) | {"out": str(args.out)}, "clip_norm": clip_norm,
        "clean_accuracy": clean_acc, "results": results, "wall_s": round(total_s, 1)})
    print(f"results: {path}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
