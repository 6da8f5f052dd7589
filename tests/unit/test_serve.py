"""Tests for the inference-only device side, in process: the model folder, hot swapping under concurrent requests,
keeping the last good model, the HTTP interface, and the predict command."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from broker import free_port
from edge_client import predict
from edge_client.model_store import CURRENT, ModelStore
from edge_client.serve import ModelServer, NoModelError, _HTTPServer
from federation.protocol.byte_chunks import sha256_hex
from federation.protocol.deployed_model import TensorFormat
from federation.inference.runtime import TFLiteClassifier
from tests.deploy_support import CLASS_NAMES, deployment, http, npy_bytes, tiny_tflite

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)


@pytest.fixture(scope="module")
def models() -> tuple[bytes, bytes]:
    return tiny_tflite(1), tiny_tflite(2)


def expected_labels(content: bytes, images: np.ndarray = IMAGES) -> np.ndarray:
    return TFLiteClassifier(content).predict(images).argmax(1)


def test_store_commits_atomically_keeps_the_previous_file_and_checks_the_hash(tmp_path: Path, models) -> None:
    a, b = models
    store = ModelStore(tmp_path / "m")
    assert store.current() is None
    path_a = store.stage(deployment(a, "demo", 1), a)
    assert store.current() is None, "staged is not current"
    store.commit(deployment(a, "demo", 1), path_a)
    assert store.current().info.model_version == "demo@1" and store.current().path.read_bytes() == a
    path_b = store.stage(deployment(b, "demo", 2), b)
    store.discard(path_a)  # discarding the current model's file is refused
    assert path_a.is_file()
    store.commit(deployment(b, "demo", 2), path_b)
    assert store.current().info.model_version == "demo@2"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([CURRENT, path_a.name, path_b.name])
    assert not list((tmp_path / "m").glob(".*.tmp"))
    path_b.write_bytes(a)  # damaged on disk: no longer matches current.json's sha256
    assert store.current() is None


def test_a_model_that_fails_to_load_never_replaces_the_last_good_one(tmp_path: Path, models) -> None:
    a, b = models
    changes: list[str] = []
    server = ModelServer(ModelStore(tmp_path), on_change=lambda: changes.append("x"))
    with pytest.raises(NoModelError):
        server.predict(IMAGES)
    assert server.install(deployment(a, "demo", 1), a)
    garbage = bytes(range(256)) * 20  # its hash is right (a publisher's bug, say) but it is not a model
    bad_info = replace(deployment(a, "demo", 2), sha256=sha256_hex(garbage), size=len(garbage))
    assert not server.install(bad_info, garbage)
    assert "does not load" in server.deploy_error and "still serving demo@1" in server.deploy_error
    result = server.predict(IMAGES)
    assert result["model_version"] == "demo@1"
    assert [p["class_index"] for p in result["predictions"]] == list(expected_labels(a))
    assert not list(tmp_path.glob(f"model-{bad_info.sha256[:16]}*")), "the failed file is removed"
    assert ModelServer(ModelStore(tmp_path)).load_stored(), "a restart serves the last good model"
    assert server.install(deployment(b, "demo", 2), b)
    assert server.predict(IMAGES)["model_version"] == "demo@2" and server.deploy_error == ""
    assert server.counters["rejected_deployments"] == 1 and server.counters["swaps"] == 1
    assert len(changes) == 3


def test_a_model_not_matching_its_announced_formats_is_rejected(tmp_path: Path, models) -> None:
    a, _ = models
    info = deployment(a, "demo", 1)
    wrong = replace(info, input=TensorFormat((32, 32, 3), "float32"))
    server = ModelServer(ModelStore(tmp_path))
    assert not server.install(wrong, a)
    assert "announced float32[32, 32, 3]" in server.deploy_error
    assert server.active is None


def test_hot_swap_under_concurrent_requests_drops_none(tmp_path: Path, models) -> None:
    a, b = models
    server = ModelServer(ModelStore(tmp_path))
    server.install(deployment(a, "demo", 1), a)
    expected = {"demo@1": list(expected_labels(a)), "demo@2": list(expected_labels(b))}
    assert expected["demo@1"] != expected["demo@2"], "the two models must be distinguishable"
    errors: list[BaseException] = []
    seen: dict[str, int] = {"demo@1": 0, "demo@2": 0}
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                result = server.predict(IMAGES)
                labels = [p["class_index"] for p in result["predictions"]]
                assert labels == expected[result["model_version"]], "answered by another model than it names"
                seen[result["model_version"]] += 1
            except BaseException as exc:  # any failure is a dropped request
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            content, round_ = (b, 2) if i % 2 == 0 else (a, 1)
            assert server.install(deployment(content, "demo", round_), content)
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert seen["demo@1"] > 0 and seen["demo@2"] > 0
    assert server.counters["swaps"] == 20


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.reshape(28, 28)).save(buf, format="PNG")
    return buf.getvalue()


def test_http_interface(tmp_path: Path, models) -> None:
    a, _ = models
    server = ModelServer(ModelStore(tmp_path))
    httpd = _HTTPServer(("127.0.0.1", free_port()), server, lambda: {"client_id": "t"})
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert http(f"{url}/healthz")[0] == 503
        code, body = http(f"{url}/predict", png(IMAGES[0]))
        assert code == 503 and "no model has been deployed" in body["error"]
        server.install(deployment(a, "demo", 7), a)
        labels = expected_labels(a)
        assert http(f"{url}/healthz") == (200, {"ready": True})
        code, body = http(f"{url}/predict?top=3", png(IMAGES[0]))
        assert code == 200 and body["model_version"] == "demo@7" and body["variant"] == "float32"
        p = body["predictions"][0]
        assert p["class_index"] == labels[0] and p["label"] == CLASS_NAMES[labels[0]] and len(p["top"]) == 3
        code, body = http(f"{url}/predict", npy_bytes(IMAGES[:5]))
        assert [q["class_index"] for q in body["predictions"]] == list(labels[:5])
        code, body = http(f"{url}/predict", json.dumps({"instances": IMAGES[:2].tolist()}).encode())
        assert code == 200 and [q["class_index"] for q in body["predictions"]] == list(labels[:2])
        big = Image.fromarray(np.kron(IMAGES[1].reshape(28, 28), np.ones((2, 2), np.uint8))).convert("RGB")
        buf = io.BytesIO()
        big.save(buf, format="JPEG")
        assert http(f"{url}/predict", buf.getvalue())[0] == 200, "any size and mode is converted"
        code, body = http(f"{url}/predict", b"not an image")
        assert code == 400 and "not a readable image" in body["error"]
        code, body = http(f"{url}/predict", npy_bytes(np.zeros((3, 32, 32))))
        assert code == 400 and "does not hold images of shape (28, 28, 1)" in body["error"]
        assert http(f"{url}/nothing")[0] == 404
        status = http(f"{url}/status")[1]
        assert status["client_id"] == "t" and status["deployed"]["model_version"] == "demo@7"
        assert status["runtime"] == "ai-edge-litert"
        assert status["requests"] == 7 and status["failed_requests"] == 3
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_predict_command_prints_labels_or_json(tmp_path: Path, models, capsys: pytest.CaptureFixture) -> None:
    a, _ = models
    server = ModelServer(ModelStore(tmp_path / "models"))
    server.install(deployment(a, "demo", 4), a)
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        files[-1].write_bytes(png(IMAGES[i]))
    np.savez(tmp_path / "batch.npz", x=IMAGES[3:8], y=expected_labels(a)[3:8])
    labels = expected_labels(a)
    assert predict.main(["none", *map(str, files), "--model-dir", str(tmp_path / "models")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [[str(f), CLASS_NAMES[labels[i]]] for i, f in enumerate(files)]
    assert predict.main([str(tmp_path / "models"), str(tmp_path / "batch.npz"), "--json", "--top", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["model_version"] == "demo@4" and doc["model"]["runtime"] == "ai-edge-litert"
    assert [r["class_index"] for r in doc["predictions"]] == list(labels[3:8])
    assert doc["accuracy"] == 1.0 and doc["examples"] == 5 and len(doc["predictions"][0]["top"]) == 2
    model_file = tmp_path / "m.tflite"
    model_file.write_bytes(a)
    assert predict.main([str(model_file), str(files[0]), "--labels", "a,b,c,d,e,f,g,h,i,j"]) == 0
    assert capsys.readouterr().out.split()[1] == "abcdefghij"[labels[0]]
    assert predict.main(["none", str(files[0]), "--model-dir", str(tmp_path / "empty")]) == 2
    assert "no deployed model in" in capsys.readouterr().err
    assert predict.main([str(model_file), str(tmp_path / "missing.png")]) == 2
    assert "missing.png: can't read it" in capsys.readouterr().err
