"""How fast one coordinator process takes in N births and N updates, in process (no broker, no other process):
real encoded messages go through the node's admission and inbox, the intake and the engine's aggregate path.

Prints a table: births/s, updates/s, ms per update, coordinator RSS growth from 10 to N updates; --profile also
writes a cProfile of the update phase. It is the "one process taking in N updates" limit of issue 15."""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np

RULES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "clip": {"aggregation.clip_norm": 1.0},
    "dp": {"aggregation.clip_norm": 1.0, "aggregation.dp_noise_multiplier": 0.5},
    "float16": {"compression.uplink": "float16"},
    "topk": {"compression.uplink": "topk", "compression.topk_fraction": 0.05},
    "async": {"aggregation.mode": "async", "aggregation.buffer_size": 100000},
}


def rss_mb() -> float:
    """This process's resident set size now, in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def write_profile(profiler: cProfile.Profile, path: Path) -> None:
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python bench/ingest.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=1000, help="devices: N births, then N updates (default 1000)")
    p.add_argument("--rules", default="fedavg", help=f"comma-separated, of {', '.join(RULES)} (default fedavg)")
    p.add_argument("--model", default="small_cnn", help="registry model (default small_cnn, 0.9 MB)")
    p.add_argument("--variants", type=int, default=8, help="distinct update payloads re-sent under each id")
    p.add_argument("--profile", type=Path, help="write the update phase's cProfile (pstats text) here")
    p.add_argument("--log-level", default="INFO", help="the coordinator's log level (default INFO, as shipped)")
    return p.parse_args(argv)


def measure(rule: str, args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    from coordinator.engine import Coordinator
    from federation.config.settings import settings_from_dict
    from federation.protocol.encodings import EncodingPlan, encode_dense, encode_topk
    from federation.protocol.messages import ClientStatus, Update
    from federation.learning.models import named_weights

    overrides = {"run.name": f"ingest-{rule}", "run.output_dir": str(out_dir), "model.name": args.model,
                 "evaluation.max_examples": 100, "quorum.min_clients": 2, "broker.port": 1, **RULES[rule]}
    coordinator = Coordinator(settings_from_dict(overrides=overrides))
    p = coordinator._prepare()
    node, topics, run = coordinator.node, coordinator.topics, coordinator.settings.run.name
    published = [0, 0]

    def count_publish(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        published[0] += 1
        published[1] += len(payload)

    node.link.publish = count_publish  # type: ignore[method-assign,assignment]  # no broker: count what goes out
    n = args.updates
    ids = [f"dev-{i:05d}" for i in range(n)]

    def feed(topic: str, payload: bytes) -> None:
        node._on_message(topic, payload, False)      # paho's thread's part: admission, then the inbox
        coordinator._process_next(0.0)               # the engine's part: decode, validate, aggregate
        if coordinator.rounds.tracker is not None:   # and the round's decision after every event
            coordinator.rounds.poll(time.monotonic())

    births_profiler = cProfile.Profile() if args.profile else None
    if births_profiler:
        births_profiler.enable()
    t0 = time.perf_counter()
    for cid in ids:
        feed(topics.client_status(cid), ClientStatus(run=run, round=0, sender=cid, num_examples=600,
                                                     device={"host": "sim"}).encode())
    births_s = time.perf_counter() - t0
    if births_profiler and args.profile:
        births_profiler.disable()
        write_profile(births_profiler, args.profile.with_suffix(f".{rule}.births.txt"))
    birth_bytes = published[1]

    # Round 1 as coordinator._run_round opens it; then N updates.
    from coordinator.metrics import RoundStats
    from federation.protocol.encodings import encode_model
    from federation.protocol.messages import weights_digest

    r = 1
    coordinator.round = r
    _, weights = encode_model([w for _, w in named_weights(p.model)], p.plan.encoding.downlink)
    digest = weights_digest(weights)
    p.intake.version_sha256[r] = digest
    if coordinator.asynchronous:
        coordinator.versions.add(r, weights)
    cohort = coordinator.rounds.sample(r)
    coordinator.aggregator.begin(weights)
    assert node.admission is not None
    node.admission.new_round()
    coordinator.stats = RoundStats()
    opened = coordinator.rounds.open(r, time.monotonic(), cohort)
    coordinator.progress.round_started(r, opened.target, opened.deadline)
    names = [spec.name for spec in p.specs]
    rng = np.random.default_rng(0)
    plan: EncodingPlan = p.plan.encoding
    variants = []
    for _ in range(args.variants):
        trained = [w + rng.normal(0, 0.01, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w for w in weights]
        if plan.sends_deltas:
            tensors: list[Any] = []
            for name, w, g in zip(names, trained, weights):
                if w.dtype.kind != "f" or w.size == 0:
                    tensors.append((name, w))
                elif plan.uplink == "topk":
                    tensors.append((name, encode_topk(w - g, plan.topk_fraction, plan.topk_values, plan.int8_block)))
                else:
                    tensors.append((name, encode_dense(w - g, plan.uplink, plan.int8_block)))
            variants.append((tensors, digest))
        else:
            variants.append((list(zip(names, trained)), ""))
    update_bytes = 0
    rss: dict[int, float] = {}
    engine_s = 0.0
    profiler = cProfile.Profile() if args.profile else None
    for i, cid in enumerate(ids):
        tensors, base = variants[i % len(variants)]
        payload = Update(run=run, round=r, sender=cid, num_examples=600, metrics={"train_time_s": 2.0, "loss": 0.5},
                         tensors=tensors, base_sha256=base).encode()
        update_bytes = len(payload)
        t = time.perf_counter()
        if profiler:
            profiler.enable()
        feed(topics.update(cid), payload)
        if profiler:
            profiler.disable()
        engine_s += time.perf_counter() - t
        del payload
        if i + 1 in (10, n):
            rss[i + 1] = rss_mb()
    accepted = coordinator.aggregator.count
    t = time.perf_counter()
    coordinator.aggregator.result()
    result_s = time.perf_counter() - t
    if profiler and args.profile:
        write_profile(profiler, args.profile.with_suffix(f".{rule}.txt"))
    rejected, ignored = coordinator.drops.take()
    if accepted != n:
        raise SystemExit(f"{rule}: {accepted} of {n} updates accepted (rejected {rejected}, ignored {ignored})")
    return {"births_per_s": n / births_s, "ms_per_birth": 1000 * births_s / n, "state_mb": birth_bytes / 1e6,
            "updates_per_s": n / engine_s, "ms_per_update": 1000 * engine_s / n, "update_mb": update_bytes / 1e6,
            "rss_10": rss.get(10, float("nan")), "rss_n": rss[n], "result_s": result_s}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=open(os.devnull, "w"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="fedmq-ingest-") as tmp:
        for rule in args.rules.split(","):
            if rule not in RULES:
                raise SystemExit(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
            rows.append((rule, measure(rule, args, Path(tmp))))
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    print(f"{args.updates} devices, model {args.model} ({rows[0][1]['update_mb']:.2f} MB per float32 update), "
          f"load average {load}")
    print(f"{'rule':8} {'births/s':>9} {'ms/birth':>9} {'state MB out':>12} {'updates/s':>10} {'ms/update':>10} "
          f"{'RSS@10 MB':>10} {'RSS@N MB':>9} {'growth MB':>10} {'result s':>9}")
    for rule, m in rows:
        print(f"{rule:8} {m['births_per_s']:9.0f} {m['ms_per_birth']:9.3f} {m['state_mb']:12.2f} "
              f"{m['updates_per_s']:10.1f} {m['ms_per_update']:10.2f} {m['rss_10']:10.0f} {m['rss_n']:9.0f} "
              f"{m['rss_n'] - m['rss_10']:10.1f} {m['result_s']:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
