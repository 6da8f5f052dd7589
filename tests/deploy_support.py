"""Helpers for the model-deployment tests: tiny TFLite models, deployments, a retained publisher, HTTP calls.

The serve process under test is a real `python -m edge_client serve` subprocess; these drive and watch it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from federation.protocol.byte_chunks import sha256_hex
from federation.protocol.deployed_model import DeploymentInfo
from federation.inference.runtime import TFLiteClassifier
from tests.support import REPO_ROOT

CLASS_NAMES = tuple(f"class-{i}" for i in range(10))


@lru_cache(maxsize=None)
def tiny_tflite(seed: int) -> bytes:
    """A small float32 classifier of 28x28x1 raw pixels into 10 classes, with seeded random weights."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from coordinator.export import convert_to_tflite

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    return convert_to_tflite(model, "float32")


def deployment(content: bytes, run: str, round_: int, class_names: tuple[str, ...] = CLASS_NAMES,
               variant: str = "float32") -> DeploymentInfo:
    c = TFLiteClassifier(content)
    return DeploymentInfo(run=run, round=round_, variant=variant, sha256=sha256_hex(content), size=len(content),
                          input=c.input_format, output=c.output_format, class_names=class_names,
                          test_accuracy=0.5, test_examples=100, created_at=time.time())


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def http(url: str, data: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """(status code, JSON body) of a GET, or of a POST when `data` is given."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def serve_status(port: int) -> dict[str, Any]:
    code, body = http(f"http://127.0.0.1:{port}/status", timeout=2)
    assert code == 200, body
    return body


def start_serve(python: str | Path, broker_port: int, run: str, client_id: str, model_dir: Path, http_port: int,
                log_path: Path, *extra: str) -> subprocess.Popen:
    """A real `python -m edge_client serve` process; PYTHONPATH points at this checkout only."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:
        return subprocess.Popen(
            [str(python), "-m", "edge_client", "serve", "--broker", "127.0.0.1", "--port", str(broker_port),
             "--run", run, "--client-id", client_id, "--model-dir", str(model_dir), "--http", str(http_port), *extra],
            cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


class RetainedPublisher:
    """A paho client publishing retained QoS 1 messages and waiting for the broker's acknowledgement."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-publisher-{os.getpid()}")
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.is_published(), f"publish on {topic} not acknowledged"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class RequestStream:
    """Fires POST /predict requests back to back from a thread, recording every answer (or failure)."""

    def __init__(self, port: int, bodies: list[bytes], pause_s: float = 0.0) -> None:
        self.url = f"http://127.0.0.1:{port}/predict"
        self.bodies = bodies
        self.pause_s = pause_s
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RequestStream":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def versions(self) -> list[str]:
        seen: list[str] = []
        for code, body in self.answers:
            if code == 200 and (not seen or seen[-1] != body["model_version"]):
                seen.append(body["model_version"])
        return seen

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                code, body = http(self.url, self.bodies[i % len(self.bodies)])
                self.answers.append((code, body))
                if code != 200:
                    self.failures.append(f"HTTP {code}: {body}")
            except OSError as exc:  # refused, reset, timed out: a dropped request
                self.failures.append(f"{type(exc).__name__}: {exc}")
            i += 1
            if self.pause_s:
                time.sleep(self.pause_s)
