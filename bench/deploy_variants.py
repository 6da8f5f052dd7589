"""TFLite variants for deployment: size, accuracy against Keras, single-image latency under LiteRT, and the memory
of an inference-only process that can't import TensorFlow. Prints a Markdown table with PASS/FAIL per target.

The model is trained centrally on Fashion-MNIST (--epochs), or taken from a federated run (--run-dir)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np

if TYPE_CHECKING:
    import keras
    from federation.learning.datasets import Dataset

from federation.protocol.deployed_model import TFLITE_VARIANTS

NAME = "deploy_variants"
VARIANTS = [*((v, v, False) for v in TFLITE_VARIANTS), ("dynamic (compat)", "dynamic", True)]

# Runs in a separate process that refuses to import TensorFlow or Keras, like an inference-only device:
# loads the model with LiteRT, times single-image invokes, classifies images, and reports its memory.
CHILD = r'''
import importlib.abc, json, sys, time
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is blocked: this process must run without TensorFlow")
        return None
sys.meta_path.insert(0, Block())
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from federation.inference.runtime import TFLiteClassifier
model, images, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.load(images)["x"]
interpreter = Interpreter(model_path=model, num_threads=1)
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
sample = x[:1].astype(inp["dtype"])
times = []
for i in range(runs + 200):
    t0 = time.perf_counter()
    interpreter.set_tensor(inp["index"], sample)
    interpreter.invoke()
    interpreter.get_tensor(out["index"])
    if i >= 200:
        times.append(time.perf_counter() - t0)
labels = TFLiteClassifier(model, num_threads=1).predict(x).argmax(1)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))
us = np.array(times) * 1e6
print(json.dumps({"median_us": float(np.median(us)), "p95_us": float(np.percentile(us, 95)),
                  "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                  "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "tensorflow_imported": any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules),
                  "labels": labels.tolist()}))
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python bench/deploy_variants.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=None,
                   help="take model.keras from this federated run folder instead of training one")
    p.add_argument("--epochs", type=int, default=3, help="central training epochs on all 60,000 images (default 3)")
    p.add_argument("--representative", type=int, default=200,
                   help="test images calibrating int8, as the coordinator does (default 200)")
    p.add_argument("--runs", type=int, default=5000, help="timed single-image invokes per variant (default 5000)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help=f"writes <out>/{NAME}.json and <out>/{NAME}.md (default bench/results)")
    return p.parse_args(argv)


def trained_model(args: argparse.Namespace, data: "Dataset") -> tuple["keras.Model", str]:
    import keras

    from federation.learning.models import build_model, compile_model

    if args.run_dir:
        model = keras.models.load_model(args.run_dir / "model.keras", compile=False)
        compile_model(model)
        return model, f"model.keras of {args.run_dir}"
    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", data.input_shape, data.num_classes)
    compile_model(model)
    started = time.monotonic()
    model.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=64, verbose=0)
    return model, (f"small_cnn trained centrally for {args.epochs} epochs on 60,000 images "
                   f"({time.monotonic() - started:.0f} s)")


def measure_child(model: Path, images: Path, runs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(images), str(runs)], capture_output=True,
                         text=True, env=env, cwd=REPO_ROOT, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"inference process failed for {model}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_serve(model: Path, x: np.ndarray, folder: Path, requests: int = 200) -> dict:
    """Start `python -m edge_client serve` on a model folder holding `model` (no broker needed), send it `requests`
    PNG images over HTTP, and read its resident memory and whether it imported TensorFlow."""
    import hashlib
    import io
    import urllib.request

    from PIL import Image

    from broker import free_port
    from edge_client.model_store import ModelStore
    from federation.protocol.deployed_model import DeploymentInfo
    from federation.inference.runtime import TFLiteClassifier

    content = model.read_bytes()
    classifier = TFLiteClassifier(content)
    info = DeploymentInfo(run="bench", round=1, variant="int8", sha256=hashlib.sha256(content).hexdigest(),
                          size=len(content), input=classifier.input_format, output=classifier.output_format,
                          class_names=())
    store = ModelStore(folder)
    store.commit(info, store.stage(info, content))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge_client", "serve", "--broker", "127.0.0.1", "--port",
                             str(free_port()), "--run", "bench", "--client-id", "bench", "--model-dir", str(folder),
                             "--http", str(port), "--log-level", "WARNING"], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the serve process did not come up") from None
                time.sleep(0.2)
        times = []
        for image in x[:requests]:
            buf = io.BytesIO()
            Image.fromarray(image[:, :, 0]).save(buf, format="PNG")
            t0 = time.perf_counter()
            urllib.request.urlopen(urllib.request.Request(f"{url}/predict", data=buf.getvalue()), timeout=10).read()
            times.append(time.perf_counter() - t0)
        status = json.loads(urllib.request.urlopen(f"{url}/status", timeout=5).read())
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith(("VmRSS", "VmHWM")))
    finally:
        proc.terminate()
        proc.wait(10)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024,
            "http_median_ms": 1000 * float(np.median(times)), "requests": len(times),
            "tensorflow_imported": status["tensorflow_imported"], "runtime": status["runtime"]}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from coordinator.export import ACCURACY_BOUND_POINTS, convert_to_tflite
    from federation.learning.datasets import load_dataset

    data = load_dataset("fashion_mnist")
    model, source = trained_model(args, data)
    x, y = data.x_test, data.y_test
    keras_accuracy = float(model.evaluate(x, y, batch_size=500, verbose=0)[1])
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-") as tmp:
        images = Path(tmp) / "test.npz"
        np.savez(images, x=x, y=y)
        for label, variant, compat in VARIANTS:
            path = Path(tmp) / f"{label.replace(' ', '_')}.tflite"
            path.write_bytes(convert_to_tflite(model, variant, x[: args.representative], compat))
            child = measure_child(path, images, args.runs)
            accuracy = float((np.array(child.pop("labels")) == y).mean())
            rows.append({"variant": label, "bytes": path.stat().st_size, "accuracy": accuracy,
                         "delta_points": 100 * (accuracy - keras_accuracy),
                         "bound_points": ACCURACY_BOUND_POINTS[variant], **child})
        serve = measure_serve(Path(tmp) / "int8.tflite", x, Path(tmp) / "serve-models")
    base = rows[0]["bytes"]
    for row in rows:
        row["size_ratio"] = row["bytes"] / base
    by = {r["variant"]: r for r in rows}
    targets = [
        ("int8 size at most 0.27 of float32", f"{by['int8']['size_ratio']:.3f}", by["int8"]["size_ratio"] <= 0.27),
        ("int8 accuracy within 1 point of Keras", f"{by['int8']['delta_points']:+.2f} points",
         abs(by["int8"]["delta_points"]) <= 1.0),
        ("dynamic-range accuracy within 0.5 points", f"{by['dynamic']['delta_points']:+.2f} points",
         abs(by["dynamic"]["delta_points"]) <= 0.5),
        ("int8 single-image latency (LiteRT, 1 thread) below 100 us", f"{by['int8']['median_us']:.1f} us median",
         by["int8"]["median_us"] < 100),
        ("inference process memory (no TF) below 80 MB",
         f"{serve['rss_mb']:.1f} MB RSS (serve, int8, after {serve['requests']} HTTP requests)",
         serve["rss_mb"] < 80 and not serve["tensorflow_imported"]
         and not any(r["tensorflow_imported"] for r in rows)),
    ]
    table = render(rows, targets, keras_accuracy, source, len(y))
    table += (f"\n\n`python -m edge_client serve` ({serve['runtime']}, TensorFlow imported: "
              f"{serve['tensorflow_imported']}): {serve['rss_mb']:.1f} MB resident, {serve['peak_rss_mb']:.1f} MB "
              "peak; "
              f"HTTP round trip for one PNG {serve['http_median_ms']:.2f} ms median.")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.md").write_text(table + "\n")
    (args.out / f"{NAME}.json").write_text(json.dumps(
        {"source": source, "keras_accuracy": keras_accuracy, "test_examples": len(y), "rows": rows, "serve": serve,
         "targets": [{"target": t, "value": v, "pass": ok} for t, v, ok in targets],
         "machine": {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count()}}, indent=2))
    return 0 if all(ok for _, _, ok in targets) else 1


def render(rows: list[dict], targets: list[tuple[str, str, bool]], keras_accuracy: float, source: str,
           examples: int) -> str:
    lines = [f"Model: {source}; Keras test accuracy {keras_accuracy:.4f} on {examples:,} test images. "
             f"Latency: LiteRT, 1 thread, one [1, 28, 28, 1] image, on {cpu_name()} ({os.cpu_count()} cores).", "",
             "| variant | size (bytes) | vs float32 | TFLite accuracy | vs Keras (points) | latency median / p95 (us) "
             "| inference-only process RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['bytes']:,} | {r['size_ratio']:.3f} | {r['accuracy']:.4f} | "
                     f"{r['delta_points']:+.2f} | {r['median_us']:.1f} / {r['p95_us']:.1f} | {r['rss_mb']:.1f} |")
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'PASS' if ok else 'FAIL'} |" for t, v, ok in targets]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
