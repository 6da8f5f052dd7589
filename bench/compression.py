"""Smaller updates: bytes on the wire and accuracy of each uplink/downlink encoding against float32, Fashion-MNIST,
10 devices (IID and Dirichlet 0.5), 10 rounds; device encode and coordinator decode CPU time per update.

The federation runs in one process, through the code the processes run: each device trains the round's model
(Keras, 1 epoch, Adam), its update goes through edge_client.update_encoding (deltas, error feedback, the residual
file) and Update.encode(); the coordinator decodes every payload with decode_message, checks it as the intake does
and adds it to the FedAvg rule; the global model goes out through GlobalModel.encode() and is decoded by each
device. Bytes are those payloads (the msgpack messages as published, MQTT's few header bytes aside), chunk
messages and manifests included with --chunk-bytes. Training is sequential here; on a fleet it is parallel, so a
round's reference time is one device's training time."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from coordinator.aggregation import ClientResult, make_aggregator
from edge_client.update_encoding import ResidualStore, UpdateEncoder
from federation.config.settings import AggregationSettings
from federation.protocol.chunked_transfer import outgoing_messages
from federation.protocol.codec import DecodeLimits, check_tensors
from federation.protocol.encodings import Encoded, EncodingPlan, check_update_encoding, encode_model
from federation.protocol.messages import (
    GlobalModel, ModelInfo, TrainingPlan, Update, check_finite, decode_message, weights_digest,
)

NAME = "compression"
# (label, uplink, downlink, topk values): float32 first, the reference of every ratio
ENCODINGS = [
    ("float32", "float32", "float32", "float16"),
    ("float16", "float16", "float16", "float16"),
    ("int8", "int8", "float16", "float16"),
    ("topk 1% (float16 values)", "topk", "float16", "float16"),
    ("topk 1% (int8 values)", "topk", "float16", "int8"),
]
TARGETS = {"float16": (0.501, 0.1), "int8": (0.26, 0.5), "topk": (0.03, 1.0)}   # bytes ratio, accuracy points


@dataclass
class RowResult:
    label: str
    uplink: str
    downlink: str
    model: str = ""            # the model's label and size, e.g. "small_cnn (225,034 parameters)"
    update_bytes: list[int] = field(default_factory=list)
    model_bytes: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/compression.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--max-examples", type=int, default=0,
                   help="use only the first N training examples before partitioning (default 0: all 60,000)")
    p.add_argument("--eval-examples", type=int, default=0, help="test examples (default 0: all 10,000)")
    p.add_argument("--partitions", nargs="*", default=["iid", "dirichlet"], choices=("iid", "dirichlet"))
    p.add_argument("--encodings", nargs="*", default=[e[0] for e in ENCODINGS],
                   help="rows to run, by label (float32 always runs: it is the reference)")
    p.add_argument("--topk-fraction", type=float, default=0.01)
    p.add_argument("--topk-rounds", type=int, default=0,
                   help="run the top-k rows this many rounds (default 0: --rounds), to see when they reach float32's "
                        "last accuracy")
    p.add_argument("--chunk-bytes", type=int, default=0, help="count chunked messages of this size (0: whole)")
    p.add_argument("--model-file", type=Path, default=None,
                   help="your own model: a .keras file, loaded as [model] path loads it (default: small_cnn)")
    p.add_argument("--own-model", action="store_true",
                   help="the larger own model of the README's row: writes fmnist_bn_net.keras (convolutions with "
                        "BatchNormalization, a 256-unit dense layer: about 3.5 MB of float32) under --out and uses it")
    p.add_argument("--quick", action="store_true",
                   help="a reduced setting for a busy machine: 600 examples per device, 4 rounds, 2,000 test images")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.max_examples = args.max_examples or 600 * args.devices
        args.rounds = min(args.rounds, 4)
        args.eval_examples = args.eval_examples or 2000
    return args


def run_row(row: tuple[str, str, str, str], args: argparse.Namespace, parts: list[np.ndarray], data: Any,
            x_test: np.ndarray, y_test: np.ndarray) -> RowResult:
    import keras

    from federation.learning.model_source import ModelChoice, load_model_source
    from federation.learning.models import compile_model, weight_specs

    label, uplink, downlink, topk_values = row
    plan = TrainingPlan(1, 32, 0.001, "adam", args.chunk_bytes,
                        encoding=EncodingPlan(uplink, downlink, args.topk_fraction, topk_values, 256))
    keras.utils.set_random_seed(0)
    choice = ModelChoice(path=str(args.model_file)) if args.model_file else ModelChoice(name="small_cnn")
    sourced = load_model_source(choice, data.input_shape, data.num_classes)
    info = ModelInfo(sourced.label, data.input_shape, data.num_classes, tuple(data.class_names))
    model = sourced.model
    compile_model(model)
    specs = weight_specs(model)
    names = [s.name for s in specs]
    global_weights = [np.array(w) for w in model.get_weights()]
    limits = DecodeLimits.for_model(specs)
    aggregator = make_aggregator(AggregationSettings())
    result = RowResult(label, uplink, downlink, f"{sourced.label} ({model.count_params():,} parameters)")
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-") as state:
        encoders = [UpdateEncoder(ResidualStore(Path(state) / f"dev-{k}")) for k in range(len(parts))]
        rounds = max(args.rounds, args.topk_rounds) if uplink == "topk" else args.rounds
        for r in range(1, rounds + 1):
            _, loaded = encode_model(global_weights, downlink)
            digest = weights_digest(loaded)
            message = GlobalModel(run="bench", round=r, sender="coordinator", model=info, train=plan,
                                  tensors=list(zip(names, loaded)), total_rounds=rounds, weights_sha256=digest)
            down = _wire_bytes(message.encode(), "model/global", plan.chunk_bytes, r)
            received = decode_message(message.encode(), limits=limits)
            assert isinstance(received, GlobalModel)
            device_weights = [w for _, w in received.tensors]
            aggregator.begin(loaded)
            for k, part in enumerate(parts):
                model.set_weights(device_weights)
                fresh_optimizer(model)
                keras.utils.set_random_seed(k * 100003 + r)
                started = time.monotonic()
                model.fit(data.x_train[part], data.y_train[part], epochs=1, batch_size=32, shuffle=True, verbose=0)
                result.train_s.append(time.monotonic() - started)
                trained = [w.numpy() for w in model.weights]

                t0 = time.thread_time()
                update = Update(run="bench", round=r, sender=f"dev-{k}", num_examples=len(part),
                                metrics={"loss": 0.0, "accuracy": 0.0, "train_time_s": 0.0},
                                tensors=list(zip(names, trained)))
                if plan.encoding.sends_deltas:
                    update.tensors = encoders[k].encode("bench", r, digest, names, device_weights, trained,
                                                        plan.encoding)
                    update.base_sha256 = digest
                payload = update.encode()
                result.encode_s.append(time.thread_time() - t0)
                result.update_bytes.append(_wire_bytes(payload, f"update/dev-{k}", plan.chunk_bytes, r))

                t0 = time.thread_time()
                got = decode_message(payload, limits=limits)
                assert isinstance(got, Update)
                check_tensors(got.tensors, specs)
                check_update_encoding(got.tensors, got.base_sha256, plan.encoding, digest)
                check_finite(got.tensors)
                values = [t.value if isinstance(t, Encoded) else t for _, t in got.tensors]
                if got.base_sha256:
                    aggregator.add(ClientResult(got.sender, got.num_examples, deltas=values))
                else:
                    aggregator.add(ClientResult(got.sender, got.num_examples,
                                                [v for v in values if isinstance(v, np.ndarray)]))
                result.decode_s.append(time.thread_time() - t0)
            result.model_bytes.append(down)
            global_weights = aggregator.result()
            model.set_weights(global_weights)
            _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
            result.accuracy.append(float(accuracy))
            print(f"[bench] {label}: round {r}: accuracy {accuracy:.4f}, update {np.mean(result.update_bytes[-len(parts):]):,.0f} B, "
                  f"model {down:,} B", file=sys.stderr, flush=True)
    return result


def fresh_optimizer(model: Any) -> None:
    """A device's fresh Adam for its round, without compiling again: each compile kept its traced functions, and
    the process grew by about 10 MB per device and round (15 GB over the full setting)."""
    optimizer = model.optimizer
    for variable in optimizer.variables:
        if variable is not optimizer._learning_rate:   # the moments and the step count, not the learning rate
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))


def write_own_model(path: Path) -> Path:
    """The README's larger own model for Fashion-MNIST, saved as a user would (model.save): two blocks of two 3x3
    convolutions with BatchNormalization and max pooling, a 256-unit dense layer with Dropout, softmax."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)

    def block(filters: int) -> list:
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False), layers.BatchNormalization(),
                layers.Activation("relu"), layers.Conv2D(filters, 3, padding="same", use_bias=False),
                layers.BatchNormalization(), layers.Activation("relu"), layers.MaxPooling2D()]

    model = keras.Sequential([keras.Input(shape=(28, 28, 1), name="image"), *block(32), *block(64),
                              layers.Flatten(), layers.Dense(256, activation="relu"), layers.Dropout(0.3),
                              layers.Dense(10, activation="softmax", name="probabilities")], name="fmnist_bn_net")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def _wire_bytes(payload: bytes, topic: str, chunk_bytes: int, round_: int) -> int:
    return sum(len(part) for _, part in outgoing_messages(topic, payload, chunk_bytes, "bench", round_, "dev"))


def summarize(rows: list[RowResult], devices: int, rounds: int) -> list[dict[str, Any]]:
    base = rows[0]
    base_update = float(np.mean(base.update_bytes))
    base_final = base.accuracy[-1]
    mid = min(5, rounds) - 1
    out = []
    for row in rows:
        kind = row.uplink
        ratio = float(np.mean(row.update_bytes)) / base_update
        train = float(np.median(row.train_s))
        encode, decode = float(np.median(row.encode_s)), float(np.median(row.decode_s))
        reach = next((i + 1 for i, a in enumerate(row.accuracy) if a >= base_final), None)
        entry = {
            "encoding": row.label, "uplink": row.uplink, "downlink": row.downlink,
            "update_bytes": round(float(np.mean(row.update_bytes))), "update_ratio": round(ratio, 4),
            "model_bytes": round(float(np.mean(row.model_bytes))),
            "up_bytes_per_round": round(float(np.mean(row.update_bytes)) * devices),
            "down_bytes_per_round": round(float(np.mean(row.model_bytes)) * devices),
            f"accuracy_round_{mid + 1}": round(row.accuracy[mid], 4),
            f"accuracy_round_{rounds}": round(row.accuracy[rounds - 1], 4),
            "points_vs_float32": round(100 * (row.accuracy[rounds - 1] - base_final), 2),
            "round_reaching_float32_final": reach,
            "encode_ms": round(1000 * encode, 2), "decode_ms": round(1000 * decode, 2),
            "train_s": round(train, 3),
            "encode_pct_of_round": round(100 * encode / train, 2),
            "decode_pct_of_round": round(100 * decode * devices / (train + decode * devices), 2),
            "accuracy": [round(a, 4) for a in row.accuracy],
        }
        if kind in TARGETS:
            max_ratio, max_points = TARGETS[kind]
            entry["target"] = f"<= {max_ratio}x, within {max_points} points"
            entry["meets_target"] = ratio <= max_ratio and -entry["points_vs_float32"] <= max_points
        out.append(entry)
    return out


def print_table(partition: str, summary: list[dict[str, Any]], rounds: int) -> None:
    mid = min(5, rounds)
    print(f"\n### {partition}\n")
    print(f"| encoding (up / down) | bytes per update | x float32 | up per round | down per round | acc r{mid} "
          f"| acc r{rounds} | points vs float32 | encode ms (% of round) | decode ms (% of round) | target met |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for s in summary:
        print(f"| {s['encoding']} ({s['uplink']} / {s['downlink']}) | {s['update_bytes']:,} | {s['update_ratio']:.4f} "
              f"| {s['up_bytes_per_round'] / 1e6:.2f} MB | {s['down_bytes_per_round'] / 1e6:.2f} MB "
              f"| {s[f'accuracy_round_{mid}']:.4f} | {s[f'accuracy_round_{rounds}']:.4f} | {s['points_vs_float32']:+.2f} "
              f"| {s['encode_ms']:.1f} ({s['encode_pct_of_round']:.2f} %) | {s['decode_ms']:.1f} "
              f"({s['decode_pct_of_round']:.2f} %) | {s.get('meets_target', '-')} |")
    for s in summary:
        if s["uplink"] == "topk" and len(s["accuracy"]) > rounds:
            reach = s["round_reaching_float32_final"] or f"none of {len(s['accuracy'])}"
            curve = ", ".join(f"{a:.4f}" for a in s["accuracy"])
            print(f"\n{s['encoding']}: float32's round-{rounds} accuracy reached in round {reach} (by round: {curve})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from federation.learning.datasets import load_dataset
    from federation.learning.partition import partition_indices

    data = load_dataset("fashion_mnist")
    if args.own_model:
        args.model_file = write_own_model(args.out / "fmnist_bn_net.keras")
    labels = data.y_train[:args.max_examples] if args.max_examples else data.y_train
    x_test = data.x_test[:args.eval_examples] if args.eval_examples else data.x_test
    y_test = data.y_test[:len(x_test)]
    chosen = [e for e in ENCODINGS if e[0] == "float32" or e[0] in args.encodings]
    results: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    started = time.monotonic()
    for partition in args.partitions:
        parts = partition_indices(labels, args.devices, partition, seed=0, alpha=0.5)
        rows = [run_row(row, args, parts, data, x_test, y_test) for row in chosen]
        summary = summarize(rows, args.devices, args.rounds)
        results[partition] = summary
        print_table(f"{partition}: {rows[0].model}, {args.devices} devices, {len(labels):,} training examples, {args.rounds} rounds, "
                    f"{len(x_test):,} test images", summary, args.rounds)
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    args.out.mkdir(parents=True, exist_ok=True)
    model = f"_{args.model_file.stem}" if args.model_file else ""
    path = args.out / f"{NAME}{model}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {path} in {results['wall_s']} s; load average {' '.join(results['loadavg_start'])} at the "
          f"start, {' '.join(results['loadavg_end'])} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
