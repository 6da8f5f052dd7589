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


# ---- the inbox: paho's thread only queues; the loop thread decodes and handles ---------------------------------


def _plain_client() -> EdgeClient:
    data = LocalData("test data", np.zeros((2, 28, 28, 1), np.uint8), np.array([0, 1]), tuple(FASHION))
    return EdgeClient(ClientSettings("dev-1", BrokerAddress("127.0.0.1", 1), run="r1"), data)


def _model_message(round_: int, run: str = "r1") -> bytes:
    from federation.protocol.messages import GlobalModel, TrainingPlan, weights_digest

    tensors = [np.zeros(3, np.float32)]
    return GlobalModel(run=run, round=round_, sender="coordinator", model=ModelInfo("small_cnn", (28, 28, 1), 10),
                       train=TrainingPlan(1, 32, 0.001, "adam", 0), tensors=[("w", tensors[0])], total_rounds=3,
                       weights_sha256=weights_digest(tensors), cohort=["dev-1"]).encode()


def _deliver(client: EdgeClient, topic: str, payload: bytes, retained: bool = False) -> bool:
    client._on_message(topic, payload, retained)   # what paho's thread does
    return client._drain()                          # what the loop thread does


def test_pahos_thread_only_queues_and_the_loop_decodes() -> None:
    client = _plain_client()
    client._on_message(client.topics.global_model, _model_message(1), False)
    assert len(client.inbox) == 1 and client._latest is None, "nothing decoded on paho's thread"
    assert client._drain() is True
    assert client._latest is not None and client._latest.round == 1 and len(client.inbox) == 0
    assert client._drain() is False, "nothing left"


def test_a_model_of_another_run_or_a_bad_payload_is_ignored() -> None:
    client = _plain_client()
    assert _deliver(client, client.topics.global_model, _model_message(1, run="other")) is False
    assert _deliver(client, client.topics.global_model, b"\x93garbage") is False
    assert client._latest is None


def test_run_end_is_honoured_only_when_the_coordinator_may_have_sent_it() -> None:
    from federation.protocol.messages import CoordinatorState, RunEnd

    client = _plain_client()
    end = RunEnd(run="r1", round=2, sender="coordinator", reason="completed").encode()
    assert _deliver(client, client.topics.run_end, end, retained=True) is False, "an earlier run's end"
    assert client._end is None
    _deliver(client, client.topics.global_model, _model_message(1))
    training = CoordinatorState(run="r1", round=1, sender="coordinator", status="online", phase="training").encode()
    assert _deliver(client, client.topics.coordinator_state, training) is False
    assert _deliver(client, client.topics.run_end, end) is False, "a forged end while the coordinator trains"
    assert client._end is None
    done = CoordinatorState(run="r1", round=2, sender="coordinator", status="online", phase="done").encode()
    _deliver(client, client.topics.coordinator_state, done)
    assert _deliver(client, client.topics.run_end, end) is True
    assert client._end is not None and client._end.reason == "completed"


def test_a_refused_login_wakes_the_loop() -> None:
    client = _plain_client()
    assert client.link.on_refused is not None
    client.link.on_refused()
    assert client._drain() is True


def test_the_transform_update_hook_decides_what_is_sent() -> None:
    seen: list[tuple[list, list]] = []

    def double_delta(global_weights: list[np.ndarray], trained: list[np.ndarray]) -> list[np.ndarray]:
        seen.append((global_weights, trained))
        return [g + 2 * (t - g) for g, t in zip(global_weights, trained)]

    data = LocalData("test data", np.zeros((2, 28, 28, 1), np.uint8), np.array([0, 1]), tuple(FASHION))
    client = EdgeClient(ClientSettings("dev-1", BrokerAddress("127.0.0.1", 1)), data, transform_update=double_delta)
    global_weights, trained = [np.array([1.0])], [np.array([3.0])]
    assert client._update_weights(global_weights, trained)[0].tolist() == [5.0]
    assert len(seen) == 1
    plain = _plain_client()
    assert plain._update_weights(global_weights, trained)[0].tolist() == [3.0], "no hook: the trained weights"


def test_the_attacking_client_wraps_the_edge_client_with_its_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_client.__main__
    from bench import attacks

    calls: list[tuple[list[str], object]] = []
    monkeypatch.setattr(edge_client.__main__, "main", lambda argv, transform_update=None: calls.append(
        (argv, transform_update)) or 0)
    assert attacks.main(["--attack", "scale:50", "--dataset", "mnist"]) == 0
    (argv, hook), = calls
    assert argv == ["--dataset", "mnist"] and hook is not None
    g, t = [np.array([1.0, 2.0], np.float32)], [np.array([1.5, 1.0], np.float32)]
    np.testing.assert_allclose(hook(g, t)[0], [26.0, -48.0])
    assert attacks.main(["--attack", "flip", "--dataset", "mnist"]) == 2


def test_the_loop_answers_another_status_on_its_own_topic_by_announcing_itself_again() -> None:
    from edge_client.client import INSTANCE
    from federation.protocol.messages import ClientStatus

    client = _plain_client()
    announced: list[int] = []
    client._announce = lambda: announced.append(1)  # type: ignore[method-assign]
    client.link.connected.set()
    own = client.topics.client_status("dev-1")
    ours = ClientStatus(run="r1", round=0, sender="dev-1", device={"instance": INSTANCE}).encode()
    assert _deliver(client, own, ours, retained=True) is False
    assert announced == [], "our own birth coming back"
    assert _deliver(client, own, client._status("offline").encode(), retained=True) is False
    assert announced == [1], "an offline status while we are connected: announce again"
    client._birth_fixed_at = 0.0
    other = ClientStatus(run="r1", round=0, sender="dev-1", device={"instance": "another", "host": "h"}).encode()
    _deliver(client, own, other, retained=True)
    assert announced == [1, 1] and client._id_clashes == {"another"}
