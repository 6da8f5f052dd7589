"""`python -m edge_client predict MODEL INPUTS...`: classify image files or .npy/.npz arrays with a TFLite model, or
predict a regression model's values for them.

MODEL is a .tflite file, a model folder kept by `serve`, or `none` for the deployed model of --run; needs no TF."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from federation.errors import FedmqError
from edge_client.cli_common import add_broker_args, default_model_dir, host_name, setup_logging
from edge_client.security_flags import add_security_flags
from edge_client.images import Batch, InputError, load_inputs
from edge_client.model_store import CURRENT, ModelStore
from federation.inference.runtime import TFLiteClassifier, regression_answer

log = logging.getLogger("edge_client.predict")

DEPLOYED = ("none", "-", "deployed")


class ModelNotFoundError(FedmqError, FileNotFoundError):
    """The model argument names no usable model; the message says what was looked for."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    class_names: tuple[str, ...]
    version: str | None = None
    variant: str | None = None
    task: str = "classification"


def resolve_model(model: str, model_dir: Path | None, run: str, labels: str | None) -> ResolvedModel:
    """Find the .tflite file and its class names for the MODEL argument."""
    if model.lower() in DEPLOYED:
        folder = model_dir or default_model_dir(run)
        return _from_folder(folder)
    path = Path(model)
    if path.is_dir():
        return _from_folder(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such .tflite file or model folder")
    names = _labels(labels) if labels else _names_from_summary(path)
    return ResolvedModel(path, names, task=_task_from_summary(path))


def _from_folder(folder: Path) -> ResolvedModel:
    if not (folder / CURRENT).is_file():
        raise ModelNotFoundError(f"no deployed model in {folder} (no {CURRENT}); run `python -m edge_client serve` "
                                 "first, or give a .tflite file")
    stored = ModelStore(folder).current()
    if stored is None:
        raise ModelNotFoundError(f"the deployed model in {folder} is damaged; see the log above")
    return ResolvedModel(stored.path, stored.info.class_names, stored.info.model_version, stored.info.variant,
                         stored.info.task)


def _labels(spec: str) -> tuple[str, ...]:
    """--labels: a text file with one class name per line, or a comma-separated list."""
    path = Path(spec)
    if path.is_file():
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    return tuple(name.strip() for name in spec.split(","))


def _names_from_summary(model: Path) -> tuple[str, ...]:
    """Class names from the coordinator's summary.json next to an exported .tflite file, if there is one."""
    summary = model.parent / "summary.json"
    try:
        names = json.loads(summary.read_text()).get("class_names", [])
    except (OSError, ValueError, AttributeError):
        return ()
    return tuple(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else ()


def _task_from_summary(model: Path) -> str:
    """The task in the coordinator's summary.json next to an exported .tflite file: classification without one."""
    try:
        task = json.loads((model.parent / "summary.json").read_text()).get("task", "classification")
    except (OSError, ValueError, AttributeError):
        return "classification"
    return "regression" if task == "regression" else "classification"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_client predict", allow_abbrev=False,
        description="Classify image files or .npy/.npz arrays with a TFLite model (a .tflite file, a model folder "
                    "kept by serve, or none: the deployed one). Needs no TensorFlow.",
        epilog="The broker flags are serve's: a serve command line works here as it is, and with MODEL none only "
               "--run (or --config's [run] name) matters; predict itself never connects to the broker.")
    p.add_argument("model", help="a .tflite file, a model folder kept by `serve`, or `none` for the deployed model")
    p.add_argument("inputs", nargs="+", type=Path, help="image files (PNG, JPEG, ...) and/or .npy/.npz arrays")
    add_broker_args(p, f"{host_name()}-serve")
    add_security_flags(p)
    p.add_argument("--model-dir", type=Path, default=None,
                   help="with MODEL none: the serve model folder (default: ~/.fedmq/models/<run>)")
    p.add_argument("--labels", default=None, help="class names: a file with one per line, or a,b,c")
    p.add_argument("--top", type=int, default=1, help="show the K most likely classes")
    p.add_argument("--task", choices=("classification", "regression"), default=None,
                   help="what the model does (default: from the deployment, or the summary.json beside the file; "
                        "else classification); a regression prints values")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from federation.config.settings import ConfigError, load_settings

    try:
        run = args.run or load_settings(args.config).run.name
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        model = resolve_model(args.model, args.model_dir, run, args.labels)
        classifier = TFLiteClassifier(model.path, num_threads=args.threads)
        batch = load_inputs(args.inputs, classifier.input_shape)
    except (ModelNotFoundError, InputError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # the runtime rejects the file
        print(f"error: {model.path} does not load as a TFLite model: {exc}", file=sys.stderr)
        return 2
    if (args.task or model.task) == "regression":
        return _print_values(model, classifier, batch, args.json)
    names = model.class_names if len(model.class_names) == classifier.num_classes else ()
    probs = classifier.predict(batch.images)
    top = max(1, min(args.top, probs.shape[1]))
    rows = [_row(name, p, names, top) for name, p in zip(batch.names, probs)]
    accuracy = None
    labelled = len(batch.labels) if batch.labels is not None else 0
    if batch.labels is not None:
        accuracy = float((probs.argmax(1) == batch.labels.astype(np.int64)).mean())
    if args.json:
        doc: dict[str, Any] = {"model": {"path": str(model.path), "model_version": model.version,
                                         "variant": model.variant, "runtime": classifier.runtime},
                               "predictions": rows}
        if accuracy is not None:
            doc.update(accuracy=accuracy, examples=labelled)
        print(json.dumps(doc))
        return 0
    width = max(len(r["input"]) for r in rows)
    for r in rows:
        alternatives = "".join(f"  {t['label']} {t['confidence']:.3f}" for t in r.get("top", [])[1:])
        print(f"{r['input']:<{width}}  {r['label']}  {r['confidence']:.3f}{alternatives}")
    if accuracy is not None:
        print(f"accuracy {accuracy:.4f} on {labelled} labelled examples")
    print(f"model {model.version or model.path} ({classifier.runtime})", file=sys.stderr)
    return 0


def _row(name: str, probs: np.ndarray, names: tuple[str, ...], top: int) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")[:top]
    best = int(order[0])
    row: dict[str, Any] = {"input": name, "class_index": best, "label": names[best] if names else str(best),
                           "confidence": round(float(probs[best]), 6)}
    if top > 1:
        row["top"] = [{"class_index": int(i), "label": names[i] if names else str(int(i)),
                       "confidence": round(float(probs[i]), 6)} for i in order]
    return row


def _print_values(model: ResolvedModel, regressor: TFLiteClassifier, batch: Batch, as_json: bool) -> int:
    """A regression model's values for each input, and its MAE and RMSE when the inputs came with targets."""
    outputs = regressor.predict(batch.images)
    rows = [{"input": name, **regression_answer(out)} for name, out in zip(batch.names, outputs)]
    errors: dict[str, Any] = {}
    if batch.labels is not None and batch.labels.size == outputs.size:
        error = outputs.reshape(-1).astype(np.float64) - batch.labels.reshape(-1).astype(np.float64)
        errors = {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt(np.square(error).mean())),
                  "examples": len(batch.names)}
    if as_json:
        print(json.dumps({"model": {"path": str(model.path), "model_version": model.version,
                                    "variant": model.variant, "runtime": regressor.runtime, "task": "regression"},
                          "predictions": rows, **errors}))
        return 0
    width = max(len(r["input"]) for r in rows)
    for r in rows:
        shown = f"{r['value']:.6g}" if "value" in r else " ".join(f"{v:.6g}" for v in r["values"])
        print(f"{r['input']:<{width}}  {shown}")
    if errors:
        print(f"MAE {errors['mae']:.4g}, RMSE {errors['rmse']:.4g} on {errors['examples']} examples with targets")
    print(f"model {model.version or model.path} ({regressor.runtime})", file=sys.stderr)
    return 0
