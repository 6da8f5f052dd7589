"""CIFAR-10 with your own model from a .keras file: convolutions with BatchNormalization, Dropout and
augmentation layers (RandomFlip, RandomTranslation), 2 devices with IID halves of the shared JPEG copy as an
image folder, up to 15 rounds; then the same model trained centrally with the same epochs.

Target: test accuracy >= 0.78 on the full 10k test set within 15 rounds. The devices have no code for this
model: they build it from the architecture in the global model message."""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar10_fedavg import DEFAULT_CACHE, DEFAULT_TAR, DataError, ensure_extracted
from federated_run import REPO_ROOT, print_table, run_for_bench, write_results

sys.path.insert(0, str(REPO_ROOT))

NAME = "cifar10_own_model"
TARGET_ACCURACY = 0.78
DEFAULT_ROUNDS = 15
DEFAULT_LOCAL_EPOCHS = 2
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 0.001


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python bench/cifar10_own_model.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run from the repository root. Exit code: 0 PASS, 1 FAIL, 2 missing data or a failed run. "
               "--quick: 1 round of 1 local epoch (and 1 central epoch): checks the set-up.")
    p.add_argument("--cifar-tar", type=Path, default=DEFAULT_TAR, help="the shared cifar10-jpg.tar.gz")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="extraction folder (reused)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"federated rounds (default {DEFAULT_ROUNDS})")
    p.add_argument("--local-epochs", type=int, default=DEFAULT_LOCAL_EPOCHS,
                   help=f"training.local_epochs (default {DEFAULT_LOCAL_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"default {DEFAULT_BATCH_SIZE}")
    p.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE,
                   help=f"the model's own Adam learning rate, saved in the .keras file (default "
                        f"{DEFAULT_LEARNING_RATE:g})")
    p.add_argument("--max-examples", type=int, default=0,
                   help="use the first N training images (devices take halves of them; 0: all 50,000). The "
                        "folder lists images class by class: a subset is a few classes only")
    p.add_argument("--eval-examples", type=int, default=0,
                   help="the first N test images evaluated (0: all 10,000; also listed class by class)")
    p.add_argument("--no-central", action="store_true", help="skip the centralized training")
    p.add_argument("--quick", action="store_true", help="a 1-round smoke run (see below)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="output folder")
    p.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds before the run is stopped")
    args = p.parse_args(argv)
    if args.quick:  # all images: the folder lists them class by class, so the first N would be one class
        args.rounds, args.local_epochs = 1, 1
    return args


def build_model(learning_rate: float) -> "object":
    """The model: 3 blocks of two 3x3 convolutions with BatchNormalization, max pooling and Dropout, after
    augmentation layers that act only while training; compiled with Adam. Takes raw pixels 0-255."""
    import keras
    from keras import layers

    def block(filters: int, dropout: float) -> list:
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False), layers.BatchNormalization(),
                layers.Activation("relu"),
                layers.Conv2D(filters, 3, padding="same", use_bias=False), layers.BatchNormalization(),
                layers.Activation("relu"), layers.MaxPooling2D(), layers.Dropout(dropout)]

    model = keras.Sequential([
        keras.Input(shape=(32, 32, 3), name="image"),
        layers.Rescaling(1.0 / 255, name="rescale"),
        layers.RandomFlip("horizontal", name="flip"),
        layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", name="shift"),
        *block(32, 0.2), *block(64, 0.3), *block(128, 0.4),
        layers.GlobalAveragePooling2D(), layers.Dense(10, activation="softmax", name="probabilities"),
    ], name="cifar_bn_net")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def central(model_file: Path, folder: Path, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    """The same model file trained in one place on the union of the devices' data, evaluated every
    local_epochs epochs (python -m coordinator baseline's loop)."""
    from coordinator.baseline import run_baseline
    from federation.config.settings import load_settings

    settings = load_settings(None, {"model.path": str(model_file), "model.dataset": str(folder),
                                    "training.rounds": args.rounds, "training.local_epochs": args.local_epochs,
                                    "training.batch_size": args.batch_size,
                                    "evaluation.max_examples": args.eval_examples, "run.name": NAME})
    result = run_baseline(settings, args.max_examples, out_dir)
    return [{"round": r.round, "test_accuracy": r.test_accuracy, "test_loss": r.test_loss,
             "round_time_s": r.round_time_s} for r in result.rows]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        folder = ensure_extracted(args.cifar_tar.resolve(), args.cache.resolve())
    except (DataError, OSError, tarfile.TarError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    out = args.out.resolve() / NAME
    out.mkdir(parents=True, exist_ok=True)
    import keras

    keras.utils.set_random_seed(0)
    model_file = out / "cifar_bn_net.keras"
    model = build_model(args.learning_rate)
    model.save(model_file)
    print(f"[bench] model {model_file.name}: {model.count_params():,} parameters", file=sys.stderr)
    limit = ["--max-examples", str(args.max_examples)] if args.max_examples else []
    clients = [["--dataset", str(folder), "--partition", f"{k}/2", *limit] for k in (1, 2)]
    overrides = {"model.path": str(model_file), "model.dataset": str(folder), "training.rounds": str(args.rounds),
                 "training.local_epochs": str(args.local_epochs), "training.batch_size": str(args.batch_size),
                 "evaluation.max_examples": str(args.eval_examples), "export.tflite": ["float32"]}
    outcome = run_for_bench(clients, overrides, out, NAME, args.timeout)
    if outcome is None:
        return 2
    report, fed_s = outcome
    federated = report.metrics
    started = time.monotonic()
    centralized = [] if args.no_central else central(model_file, folder, args, out / "central")
    central_s = time.monotonic() - started

    print(f"## CIFAR-10, own model from a .keras file ({model.count_params():,} parameters): 2 devices with "
          f"halves, {args.rounds} rounds x {args.local_epochs} local epoch(s), batch {args.batch_size}, "
          f"Adam {args.learning_rate:g}; centralized: the same model and epochs\n")
    by_round = {row["round"]: row for row in centralized}
    rows = [[m["round"], f"{m['test_accuracy']:.4f}",
             f"{by_round[m['round']]['test_accuracy']:.4f}" if m["round"] in by_round else "-",
             f"{m['round_time_s']:.1f}"] for m in federated]
    print_table(["round", "federated accuracy", "centralized accuracy", "round time (s)"], rows)
    best = max((float(m["test_accuracy"]) for m in federated), default=float("nan"))
    first = next((m["round"] for m in federated if float(m["test_accuracy"]) >= TARGET_ACCURACY), None)
    passed = report.summary.get("reason") == "completed" and first is not None
    print(f"\n- {'PASS' if passed else 'FAIL'}: best federated test accuracy {best:.4f}"
          f"{f', >= {TARGET_ACCURACY:.2f} from round {first}' if first else ''} (target >= {TARGET_ACCURACY:.2f} "
          f"within {args.rounds} rounds){' [quick run: not a measurement]' if args.quick else ''}")
    print(f"\n**{'PASS' if passed else 'FAIL'}** (federated {fed_s:.0f} s, centralized {central_s:.0f} s, "
          f"{os.cpu_count()} CPU cores)")
    path = write_results(args.out.resolve() / f"{NAME}{'_quick' if args.quick else ''}.json", {
        "bench": NAME, "passed": passed, "settings": {k: str(v) for k, v in vars(args).items()},
        "overrides": overrides, "federated": federated, "centralized": centralized, "target": TARGET_ACCURACY,
        "federated_s": round(fed_s, 1), "centralized_s": round(central_s, 1), "run": report.to_json()})
    print(f"results: {path}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
