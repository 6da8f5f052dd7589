"""Tests for coordinator.deploy: when the coordinator deploys, what it publishes (retained, maybe chunked), how it
clears an earlier deployment's extra chunk topics, and that a failed deployment never stops the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.deploy import Deployer
from coordinator.evaluation import Evaluation
from federation.protocol.byte_chunks import sha256_hex
from federation.protocol.model_delivery import DeliveryReceiver
from federation.config.settings import load_settings
from federation.protocol.topics import RunTopics
from tests.deploy_support import CLASS_NAMES, tiny_tflite

TOPICS = RunTopics("fedmq", "demo")


class FakeLink:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []

    def publish_and_wait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                         timeout: float = 30.0) -> bool:
        self.published.append((topic, payload, retain))
        return True

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))


def deployer(**overrides: object) -> tuple[Deployer, FakeLink]:
    link = FakeLink()
    settings = load_settings(None, {"training.rounds": 6, **overrides})
    return Deployer(settings, link, TOPICS, "coordinator", CLASS_NAMES), link  # type: ignore[arg-type]


def test_every_k_rounds_but_not_the_last_which_the_end_of_the_run_deploys() -> None:
    assert [r for r in range(1, 7) if deployer(**{"deploy.every_k_rounds": 2})[0].due(r)] == [2, 4]
    assert [r for r in range(1, 7) if deployer()[0].due(r)] == []
    assert not deployer(**{"deploy.every_k_rounds": 1, "deploy.enabled": False})[0].due(1)


def test_chunk_size_is_the_smaller_of_deploy_and_broker_limits() -> None:
    assert deployer()[0].chunk_bytes == 262144
    assert deployer(**{"broker.chunk_bytes": 100000})[0].chunk_bytes == 100000
    assert deployer(**{"broker.chunk_bytes": 900000, "deploy.chunk_bytes": 4096})[0].chunk_bytes == 4096


def test_publishes_retained_a_deployment_a_device_accepts_and_clears_stale_chunks(tmp_path: Path) -> None:
    content = tiny_tflite(1)
    d, link = deployer(**{"deploy.chunk_bytes": 8192})
    record = d.publish(content, 3, Evaluation(0.5, 0.75, 200), Evaluation(0.5, 0.76, 200))
    assert record.model_version == "demo@3" and record.sha256 == sha256_hex(content) and record.confirmed
    assert record.messages == len(link.published) == 6  # 5 chunks of ~34 KB, then the manifest
    assert all(retain for _, _, retain in link.published)
    receiver = DeliveryReceiver(TOPICS)
    delivered = [got for t, p, _ in link.published if (got := receiver.handle(t, p)) is not None]
    assert len(delivered) == 1 and delivered[0].content == content
    info = delivered[0].info
    assert (info.test_accuracy, info.test_examples, info.keras_accuracy) == (0.75, 200, 0.76)
    assert info.class_names == CLASS_NAMES and info.input.shape == (28, 28, 1) and info.output.shape == (10,)
    # a smaller deployment next: the two chunk topics it does not use any more are cleared
    link.published.clear()
    d.settings = load_settings(None, {"deploy.chunk_bytes": 16384})
    d.publish(content, 4, Evaluation(0.5, 0.8, 200), Evaluation(0.5, 0.8, 200))
    cleared = [t for t, p, _ in link.published if p == b""]
    assert cleared == [TOPICS.deploy_chunk(3), TOPICS.deploy_chunk(4)]


def test_a_failing_deployment_is_logged_and_the_run_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from coordinator.release import Exported, Release

    d, link = deployer(**{"deploy.every_k_rounds": 1})
    release = Release(d.settings, tmp_path, CLASS_NAMES, d)
    release.exported["float32"] = Exported("float32", tmp_path / "model.tflite", b"not a tflite model", None,
                                           SimpleNamespace(accuracy=0.5, examples=10))  # type: ignore[arg-type]
    keras_ev = Evaluation(0.4, 0.5, 10)
    assert release.deploy(6, keras_ev) is None
    release.exported.clear()
    assert release.deploy(6, keras_ev) is None
    assert d.after_round(object(), 2, None, None, keras_ev) is None  # not a Keras model: conversion fails
    assert link.published == []
    assert "deploying the final float32 model failed" in caplog.text
    assert "the float32 model to deploy was not exported" in caplog.text
    assert "round 2: deploying the float32 model failed" in caplog.text


def test_the_release_writes_and_loads_each_exported_model_once_and_deploys_those_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras
    import numpy as np

    import coordinator.deploy
    import coordinator.release
    from coordinator.release import Release
    from federation.inference.runtime import TFLiteClassifier

    loads: list[int] = []

    def counting(content: bytes, *args: object, **kwargs: object) -> TFLiteClassifier:
        loads.append(len(content))
        return TFLiteClassifier(content, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(coordinator.release, "TFLiteClassifier", counting)
    monkeypatch.setattr(coordinator.deploy, "TFLiteClassifier", counting)
    d, link = deployer(**{"deploy.enabled": True, "deploy.variant": "float32", "export.tflite": ["float32"]})
    release = Release(d.settings, tmp_path, CLASS_NAMES, d)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    x, y = np.zeros((8, 28, 28, 1), np.uint8), np.arange(8) % 10
    release.save_keras(model)
    out = release.export(model, x, y, Evaluation(2.3, 0.1, 8))
    written = (tmp_path / "model.tflite").read_bytes()
    assert list(out) == ["float32"] and out["float32"]["bytes"] == len(written) and out["float32"]["examples"] == 8
    assert (tmp_path / "labels.txt").read_text().splitlines() == list(CLASS_NAMES)
    assert loads == [len(written)], "written once, loaded once"
    record = release.deploy(2, Evaluation(2.3, 0.1, 8))
    assert record is not None and record["sha256"] == sha256_hex(written) and record["confirmed"]
    assert loads == [len(written)], "the deployment reuses the loaded model"
    assert any(t == TOPICS.deploy or t.startswith(TOPICS.deploy) for t, _, _ in link.published)
