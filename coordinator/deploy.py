"""Publish a TFLite model for inference-only devices on the retained deploy topic: at the end, and every K rounds.

The message carries the version, sha256, tensor formats, task, class names and the accuracy (a regression: the MAE and
RMSE) measured on the .tflite itself."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from federation.protocol.deployed_model import DeploymentInfo
from federation.inference.runtime import TFLiteClassifier
from federation.protocol.model_delivery import delivery_messages
from federation.transport.mqtt_link import MqttLink
from federation.config.settings import Settings
from federation.protocol.topics import RunTopics

if TYPE_CHECKING:
    import keras

    from coordinator.evaluation import Evaluation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployRecord:
    """What was published, for summary.json."""

    model_version: str
    round: int
    variant: str
    sha256: str
    bytes: int
    messages: int
    test_accuracy: float | None       # None for a regression: see test_mae and test_rmse
    confirmed: bool
    test_mae: float | None = None
    test_rmse: float | None = None

    def to_json(self) -> dict:
        record = asdict(self)
        if self.test_mae is None:  # a classification's record is as it always was
            del record["test_mae"], record["test_rmse"]
        return record


class Deployer:
    """Publishes deployments through the coordinator's MQTT link; remembers how many chunk topics it filled."""

    def __init__(self, settings: Settings, link: MqttLink, topics: RunTopics, sender: str,
                 class_names: tuple[str, ...], task: str = "classification") -> None:
        self.settings = settings
        self.task = task
        self.link = link
        self.topics = topics
        self.sender = sender
        self.class_names = tuple(class_names)
        self._chunk_topics = 0
        self.records: list[DeployRecord] = []
        # The last deployment's messages the broker did not acknowledge: the coordinator retries them at the end.
        self.unconfirmed: list[tuple[str, bytes]] = []

    @property
    def variant(self) -> str:
        return self.settings.deploy.variant

    @property
    def chunk_bytes(self) -> int:
        """deploy.chunk_bytes, or the broker's message limit broker.chunk_bytes when that is set and smaller."""
        return min(b for b in (self.settings.deploy.chunk_bytes, self.settings.broker.chunk_bytes) if b)

    def due(self, round_: int) -> bool:
        """Whether round `round_` (not the last: that one is deployed at the end) gets a deployment."""
        k = self.settings.deploy.every_k_rounds
        return bool(self.settings.deploy.enabled and k and round_ % k == 0
                    and round_ < self.settings.training.rounds)

    def export_and_publish(self, model: "keras.Model", round_: int, x: np.ndarray, y: np.ndarray,
                           keras: "Evaluation | None") -> DeployRecord:
        """Convert `model` to the deploy variant, measure it on (x, y) with LiteRT, and publish it."""
        from coordinator.evaluation import evaluate_loaded
        from coordinator.export import convert_to_tflite

        s = self.settings
        content = convert_to_tflite(model, self.variant, x[: s.export.representative_examples],
                                    s.export.tflite_runtime_compat, self.class_names, self.task)
        classifier = TFLiteClassifier(content)  # loaded once: to measure it and to read its tensor formats
        ev = evaluate_loaded(classifier, x, y, self.task)
        return self.publish(content, round_, ev, keras, classifier=classifier)

    def publish(self, content: bytes, round_: int, tflite: "Evaluation", keras: "Evaluation | None",
                classifier: TFLiteClassifier | None = None) -> DeployRecord:
        """Publish `content` (the deploy variant's .tflite bytes) as the run's deployed model, retained, with `tflite`,
        its own results on the test set, and `keras`, the Keras model's; `classifier`: `content` already loaded (its
        tensor formats are read from it), else it is loaded here."""
        if classifier is None:
            classifier = TFLiteClassifier(content)  # reads the tensor formats; also proves the model loads
        regression = self.task == "regression"
        test_accuracy = None if regression else tflite.accuracy
        info = DeploymentInfo(
            run=self.settings.run.name, round=round_, variant=self.variant, sha256=hashlib.sha256(content).hexdigest(),
            size=len(content), input=classifier.input_format, output=classifier.output_format,
            class_names=self.class_names if not regression and len(self.class_names) == classifier.num_classes else (),
            test_accuracy=test_accuracy, test_examples=tflite.examples,
            keras_accuracy=keras.final_accuracy if keras is not None else None,
            tflite_runtime_compat=self.settings.export.tflite_runtime_compat, created_at=time.time(), task=self.task,
            test_mae=tflite.mae, test_rmse=tflite.rmse)
        messages = delivery_messages(self.topics, info, content, self.chunk_bytes, self.sender)
        self.unconfirmed = [(message.topic, message.payload) for message in messages
                            if not self.link.publish_and_wait(message.topic, message.payload, qos=1, retain=True)]
        confirmed = not self.unconfirmed
        chunks = len(messages) - 1
        for index in range(chunks, self._chunk_topics):  # an earlier, larger model's chunks: clear them
            self.link.publish(self.topics.deploy_chunk(index), b"", qos=1, retain=True)
        self._chunk_topics = chunks
        record = DeployRecord(info.model_version, round_, self.variant, info.sha256, len(content), len(messages),
                              test_accuracy, confirmed, tflite.mae, tflite.rmse)
        self.records.append(record)
        log.info("deployed %s model %s on %s: %d bytes in %d message(s), test %s%s", self.variant,
                 info.model_version, self.topics.deploy, len(content), len(messages),
                 tflite.headline(), "" if confirmed else " (not confirmed by the broker yet)")
        return record

    def after_round(self, model: "keras.Model", round_: int, x: np.ndarray, y: np.ndarray,
                    keras: "Evaluation | None") -> DeployRecord | None:
        """Publish round `round_`'s model if deploy.every_k_rounds asks for it; a failure is logged, not raised."""
        if not self.due(round_):
            return None
        try:
            return self.export_and_publish(model, round_, x, y, keras)
        except Exception:  # a deployment must never stop the training run
            log.exception("round %d: deploying the %s model failed", round_, self.variant)
            return None
