"""Model delivery end to end: real Mosquitto, a real coordinator and trainer, and a `python -m edge_client serve`
process in a virtual environment built from requirements/serve.txt, where TensorFlow can't be imported."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from broker import MosquittoProcess, free_port
from demo.local_federation import LocalFederation
from federation.protocol.byte_chunks import sha256_hex
from federation.protocol.codec import pack, unpack
from federation.learning.datasets import load_dataset
from federation.inference.runtime import TFLiteClassifier
from federation.protocol.model_delivery import delivery_messages
from federation.protocol.topics import RunTopics
from tests.support import retained_messages
from tests.deploy_support import (
    REPO_ROOT, RequestStream, RetainedPublisher, deployment, http, serve_status, start_serve, stop, tiny_tflite,
    )
from tests.venvs import cached_venv, edge_requirements
from tests.support import wait_for

pytestmark = pytest.mark.timeout(600)

EVAL_EXAMPLES = 300


@pytest.fixture(scope="module")
def edge_python() -> Path:
    """The python of a venv holding requirements/serve.txt only (no TensorFlow), built once and cached."""
    python = cached_venv("edge", edge_requirements())
    probe = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd="/")
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr, \
        "the inference-only environment must not be able to import TensorFlow"
    return python


def png_files(images: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"test-{i:04d}.png")
        Image.fromarray(image.reshape(image.shape[0], image.shape[1])).save(paths[-1])
    return paths


def test_a_short_run_deploys_to_a_serve_process_without_tensorflow(federation: LocalFederation, edge_python: Path,
                                                                    tmp_path: Path) -> None:
    fed = federation
    http_port = free_port()
    serve_log = tmp_path / "serve.log"
    serve = start_serve(edge_python, fed.port, "it", "pi-serve", tmp_path / "models", http_port, serve_log)
    try:
        fed.start_coordinator({
            "training.rounds": 2, "quorum.min_clients": 1, "quorum.round_deadline_s": 120,
            "evaluation.max_examples": EVAL_EXAMPLES, "export.tflite": ["float32"],
            "deploy.variant": "int8", "deploy.every_k_rounds": 1, "deploy.chunk_bytes": 65536,
        })
        fed.start_client("trainer", ["--dataset", "fashion_mnist", "--max-examples", "4000"])
        version = lambda: (serve_status(http_port)["deployed"] or {}).get("model_version")
        wait_for("round 1's model on the serve process", lambda: version() == "it@1", 300, log=serve_log)

        data = load_dataset("fashion_mnist")
        x, y = data.x_test[:EVAL_EXAMPLES], data.y_test[:EVAL_EXAMPLES]
        files = png_files(x, tmp_path / "images")
        bodies = [f.read_bytes() for f in files[:40]]
        with RequestStream(http_port, bodies, pause_s=0.01) as stream:  # requests go on while round 2's arrives
            codes = fed.wait_all(300)
            wait_for("the final model on the serve process", lambda: version() == "it@2", 60, log=serve_log)
        assert codes == {"coordinator": 0, "trainer": 0}, codes
        assert stream.failures == [], stream.failures[:5]
        assert stream.versions() == ["it@1", "it@2"] and len(stream.answers) > 20

        # The coordinator exported and published the int8 model; the device holds exactly those bytes.
        summary = fed.summary()
        exported = (fed.run_dir / "model_int8.tflite").read_bytes()
        assert summary["deployed"]["model_version"] == "it@2" and summary["deployed"]["variant"] == "int8"
        assert summary["deployed"]["sha256"] == sha256_hex(exported) and summary["deployed"]["messages"] == 5
        status = serve_status(http_port)
        assert status["deployed"]["sha256"] == sha256_hex(exported)
        assert status["deployed"]["test_accuracy"] == summary["tflite"]["int8"]["accuracy"]
        assert status["runtime"] == "ai-edge-litert" and status["tensorflow_imported"] is False
        assert status["swaps"] == 1 and status["rejected_deployments"] == 0 and status["deploy_error"] is None
        assert status["deployed"]["class_names"][9] == "Ankle boot"

        # Over HTTP it classifies the coordinator's evaluation images exactly as the coordinator's TFLite check did.
        answers = [http(f"http://127.0.0.1:{http_port}/predict", f.read_bytes()) for f in files]
        assert all(code == 200 for code, _ in answers)
        served = np.array([body["predictions"][0]["class_index"] for _, body in answers])
        assert summary["examples_evaluated"] == EVAL_EXAMPLES
        assert float((served == y).mean()) == summary["tflite"]["int8"]["accuracy"]
        assert np.array_equal(served, TFLiteClassifier(exported).predict(x).argmax(1))

        # `predict` in the same TensorFlow-free environment gives the same labels from the deployed model.
        out = subprocess.run([str(edge_python), "-m", "edge_client", "predict", "none", *map(str, files),
                              "--model-dir", str(tmp_path / "models"), "--json"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["model"]["model_version"] == "it@2" and doc["model"]["runtime"] == "ai-edge-litert"
        assert [p["class_index"] for p in doc["predictions"]] == served.tolist()

        # The broker keeps the deployment (manifest + 4 chunks) and the device's status; the coordinator never
        # counted the serving device as a trainer.
        retained = retained_messages(fed.port, "fedmq/it/#")
        manifest = unpack(retained["fedmq/it/model/deploy"])
        assert manifest["type"] == "chunked" and len(manifest["manifest"]["chunk_sha256"]) == 4
        whole = b"".join(unpack(retained[f"fedmq/it/model/deploy/chunk/{i}"])["data"] for i in range(4))
        deployed = unpack(whole)
        assert deployed["type"] == "deployed_model" and deployed["model_version"] == "it@2"
        assert deployed["model"] == exported and sha256_hex(whole) == manifest["manifest"]["sha256"]
        device = unpack(retained["fedmq/it/client/pi-serve/status"])
        assert device["role"] == "serve" and device["deployed"]["model_version"] == "it@2"
        rows = fed.metrics()
        assert [r["client_ids"] for r in rows] == [["trainer"], ["trainer"]]
        assert all(r["round_time_s"] < 100 for r in rows), "no round waited for the serving device"
    finally:
        assert stop(serve) == 0, serve_log.read_text()[-3000:]


def test_corrupted_or_truncated_models_are_rejected_and_the_last_good_one_keeps_serving(
        mosquitto: MosquittoProcess, edge_python: Path, tmp_path: Path) -> None:
    topics = RunTopics("fedmq", "dep")
    good, newer = tiny_tflite(1), tiny_tflite(2)
    v1, v2 = deployment(good, "dep", 1), deployment(newer, "dep", 2)
    http_port = free_port()
    serve_log = tmp_path / "serve.log"
    models = tmp_path / "models"
    serve = start_serve(edge_python, mosquitto.port, "dep", "pi-1", models, http_port, serve_log,
                        "--chunk-timeout", "3")
    publisher = RetainedPublisher(mosquitto.port)
    status = lambda: serve_status(http_port)
    rejections = lambda n: lambda: status()["rejected_deployments"] >= n
    try:
        for m in delivery_messages(topics, v1, good, chunk_bytes=1 << 20, sender="coordinator"):
            publisher.publish(m.topic, m.payload)
        wait_for("dep@1", lambda: (status()["deployed"] or {}).get("model_version") == "dep@1", 60, log=serve_log)
        images = np.random.default_rng(3).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
        bodies = []
        for image in images:
            buf = io.BytesIO()
            Image.fromarray(image[:, :, 0]).save(buf, format="PNG")
            bodies.append(buf.getvalue())
        with RequestStream(http_port, bodies, pause_s=0.005) as stream:
            inline = delivery_messages(topics, v2, newer, chunk_bytes=1 << 20, sender="coordinator")[0].payload
            # 1. one flipped bit in the model bytes: the sha256 check fails
            raw = unpack(inline)
            raw["model"] = raw["model"][:5000] + bytes([raw["model"][5000] ^ 0x10]) + raw["model"][5001:]
            publisher.publish(topics.deploy, pack(raw))
            wait_for("the corrupted model's rejection", rejections(1), 30, log=serve_log)
            assert "sha256" in status()["deploy_error"] and "bad_hash" in status()["deploy_error"]
            # 2. a truncated message: it does not decode
            publisher.publish(topics.deploy, inline[: len(inline) // 2])
            wait_for("the truncated message's rejection", rejections(2), 30, log=serve_log)
            assert "malformed" in status()["deploy_error"]
            # 3. bytes matching their hash that are no TFLite model: loading fails, nothing is swapped
            junk = bytes(range(256)) * 64
            raw = unpack(inline)
            raw.update(model=junk, sha256=sha256_hex(junk), size=len(junk))
            publisher.publish(topics.deploy, pack(raw))
            wait_for("the unloadable model's rejection", rejections(3), 30, log=serve_log)
            assert "does not load" in status()["deploy_error"] and "still serving dep@1" in status()["deploy_error"]
            # 4. a chunked model with one corrupted chunk: that chunk is refused, the set times out
            chunked = delivery_messages(topics, v2, newer, chunk_bytes=8192, sender="coordinator")
            raw = unpack(chunked[2].payload)
            raw["data"] = bytes(len(raw["data"]))
            for m in chunked[:2] + chunked[3:]:
                publisher.publish(m.topic, m.payload)
            publisher.publish(chunked[2].topic, pack(raw))
            wait_for("the corrupted chunk's rejection", rejections(4), 30, log=serve_log)
            wait_for("the incomplete chunk set to be dropped", lambda: "incomplete after 3 s" in (status()["deploy_error"] or ""), 30, log=serve_log)
            assert status()["deployed"]["model_version"] == "dep@1"
            assert json.loads((models / "current.json").read_text())["model_version"] == "dep@1"
            # 5. the same chunked model, whole, in reverse order with a duplicate: accepted and swapped in
            for m in [*chunked[-2::-1], chunked[1], chunked[-1]]:
                publisher.publish(m.topic, m.payload)
            wait_for("dep@2", lambda: status()["deployed"]["model_version"] == "dep@2", 30, log=serve_log)
            count = len(stream.answers)
            wait_for("requests answered by dep@2", lambda: len(stream.answers) > count + 5, 30)
        assert stream.failures == [], stream.failures[:5]
        assert stream.versions() == ["dep@1", "dep@2"]
        final = status()
        assert final["rejected_deployments"] == 5 and final["swaps"] == 1 and final["deploy_error"] is None
        assert final["tensorflow_imported"] is False
        expected = TFLiteClassifier(newer).predict(images).argmax(1)
        answer = http(f"http://127.0.0.1:{http_port}/predict", bodies[0])[1]
        assert answer["predictions"][0]["class_index"] == expected[0]
    finally:
        publisher.close()
        assert stop(serve) == 0, serve_log.read_text()[-3000:]

    # After a restart, with no broker to be reached, the device serves its last good model from disk.
    serve = start_serve(edge_python, free_port(), "dep", "pi-1", models, http_port, serve_log)
    try:
        wait_for("the stored model after a restart", lambda: (status()["deployed"] or {}).get("model_version") == "dep@2", 30, log=serve_log)
        assert status()["broker_connected"] is False
    finally:
        assert stop(serve) == 0
