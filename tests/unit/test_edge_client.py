"""The edge client's checks before training: the coordinator's model must fit the local data."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.client import ClientSettings, EdgeClient, IncompatibleModelError, label_map
from edge_client.local_data import LocalData
from federation.protocol.messages import ModelInfo
from federation.transport.mqtt_link import BrokerAddress


def _client(x: np.ndarray, y: np.ndarray) -> EdgeClient:
    data = LocalData("test data", x, y, tuple(str(i) for i in range(10)))
    return EdgeClient(ClientSettings("dev-1", BrokerAddress("127.0.0.1", 1)), data)


def test_client_id_must_be_a_topic_level() -> None:
    data = LocalData("d", np.zeros((1, 28, 28, 1), np.uint8), np.zeros(1, np.int64), ("0",))
    with pytest.raises(ValueError, match="client id 'a/b'"):
        EdgeClient(ClientSettings("a/b", BrokerAddress()), data)


FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def test_two_class_folder_in_a_ten_class_run_is_refused_by_name() -> None:
    """Issue 9: a 2-class image folder joined a 10-class run and trained on wrong labels (accuracy 0.12)."""
    info = ModelInfo("small_cnn", (28, 28, 1), 10, FASHION)
    with pytest.raises(IncompatibleModelError, match="'cat', 'dog' not among the coordinator's 10"):
        label_map(("cat", "dog"), info, 2)


def test_a_subset_of_the_classes_named_the_same_maps_labels_by_name() -> None:
    info = ModelInfo("small_cnn", (28, 28, 1), 10, FASHION)
    mapping = label_map(("Bag", "Trouser"), info, 2)
    assert mapping is not None and list(mapping) == [8, 1]
    assert label_map(FASHION, info, 10) is None


def test_without_names_from_the_coordinator_only_the_count_is_checked() -> None:
    info = ModelInfo("small_cnn", (28, 28, 1), 3)
    assert label_map(("a", "b"), info, 2) is None
    with pytest.raises(IncompatibleModelError, match="3 classes"):
        label_map(tuple("abcd"), info, 4)
