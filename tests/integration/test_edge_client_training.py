"""The edge client's checks before training: the coordinator's model must fit the local data.

The tests of test_edge_client.py that start processes or import TensorFlow (the unit tier does neither)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.client import ClientSettings, EdgeClient, IncompatibleModelError
from edge_client.local_data import LocalData
from federation.protocol.messages import ModelInfo
from federation.transport.mqtt_link import BrokerAddress


def _client(x: np.ndarray, y: np.ndarray) -> EdgeClient:
    data = LocalData("test data", x, y, tuple(str(i) for i in range(10)))
    return EdgeClient(ClientSettings("dev-1", BrokerAddress("127.0.0.1", 1)), data)


def test_input_shape_mismatch_names_both_shapes() -> None:
    client = _client(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64))
    with pytest.raises(IncompatibleModelError, match=r"\(28, 28, 1\).*\(32, 32, 3\)"):
        client.trainer.model_for(ModelInfo("small_cnn", (28, 28, 1), 10))


def test_labels_beyond_the_models_classes_are_refused() -> None:
    client = _client(np.zeros((4, 28, 28, 1), np.uint8), np.array([0, 1, 2, 11]))
    with pytest.raises(IncompatibleModelError, match="10 classes.*11"):
        client.trainer.model_for(ModelInfo("small_cnn", (28, 28, 1), 10))


def test_matching_model_is_built_once_and_reused() -> None:
    client = _client(np.zeros((4, 28, 28, 1), np.uint8), np.zeros(4, np.int64))
    info = ModelInfo("small_cnn", (28, 28, 1), 10)
    model = client.trainer.model_for(info)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert client.trainer.model_for(info) is model


FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def test_client_trains_on_labels_mapped_to_the_coordinators_classes() -> None:
    data = LocalData("bags and trousers", np.zeros((3, 28, 28, 1), np.uint8), np.array([0, 1, 1]),
                     ("Bag", "Trouser"))
    client = EdgeClient(ClientSettings("dev-1", BrokerAddress("127.0.0.1", 1)), data)
    labels = client.trainer.labels_for(ModelInfo("small_cnn", (28, 28, 1), 10, FASHION))
    assert list(labels) == [8, 1, 1]


def _plain_client() -> EdgeClient:
    data = LocalData("test data", np.zeros((2, 28, 28, 1), np.uint8), np.array([0, 1]), tuple(FASHION))
    return EdgeClient(ClientSettings("dev-1", BrokerAddress("127.0.0.1", 1), run="r1"), data)


def test_training_handles_the_inbox_between_batches_and_drops_an_update_a_newer_model_made_late() -> None:
    from federation.protocol.messages import GlobalModel, TrainingPlan, decode_message, weights_digest
    from federation.learning.models import named_weights

    client = _plain_client()
    info = ModelInfo("small_cnn", (28, 28, 1), 10, FASHION)
    named = named_weights(client.trainer.model_for(info))

    def model(round_: int) -> GlobalModel:
        weights = [w for _, w in named]
        return GlobalModel(run="r1", round=round_, sender="coordinator", model=info,
                           train=TrainingPlan(1, 1, 0.001, "adam", 0), tensors=list(named), total_rounds=3,
                           weights_sha256=weights_digest(weights), cohort=["dev-1"])

    sent: list[tuple[str, bytes]] = []
    client.link.publish_and_wait = lambda topic, payload, **_: sent.append((topic, payload)) or True  # type: ignore
    client.link.publish = lambda topic, payload, **_: sent.append((topic, payload))  # type: ignore
    client._on_message(client.topics.global_model, model(2).encode(), False)  # arrives while round 1 trains
    assert client._train_and_publish(model(1)) is False, "round 2's model came: round 1's update would be late"
    assert sent == [] and client._latest is not None and client._latest.round == 2 and len(client.inbox) == 0
    assert client._train_and_publish(model(2)) is True
    (topic, payload), = sent
    update = decode_message(payload)
    assert topic == client.topics.update("dev-1") and update.round == 2 and client.rounds_trained == [2]
