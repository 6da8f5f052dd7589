"""The edge client's checks before training (the coordinator's model must fit the local data), its inbox, and
the run's end stopping a device that is still training."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_client.client import ClientSettings, EdgeClient, IncompatibleModelError, label_map
from edge_client.local_data import LocalData
from edge_client.trainer import FitResult, RoundContext, Trainer
from federation.protocol.messages import ModelInfo, TrainingPlan
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


def _state(round_: int, status: str, phase: str) -> bytes:
    from federation.protocol.messages import CoordinatorState

    return CoordinatorState(run="r1", round=round_, sender="coordinator", status=status, phase=phase).encode()


def _end(round_: int) -> bytes:
    from federation.protocol.messages import RunEnd

    return RunEnd(run="r1", round=round_, sender="coordinator", reason="completed").encode()


def _client_in_round_1() -> EdgeClient:
    """A client that has round 1's model and the coordinator's state "training"."""
    client = _plain_client()
    _deliver(client, client.topics.global_model, _model_message(1))
    _deliver(client, client.topics.coordinator_state, _state(1, "online", "training"))
    return client


def test_a_retained_run_end_before_the_coordinators_new_state_is_honoured_once_the_state_comes() -> None:
    """Back after a lost connection, the broker sends the retained run_end before the retained state: the state the
    client knew said "training", so the end is held, and honoured when the new state says the run is over."""
    client = _client_in_round_1()
    assert _deliver(client, client.topics.run_end, _end(3), retained=True) is False
    assert client._end is None
    assert _deliver(client, client.topics.coordinator_state, _state(3, "offline", "done"), retained=True) is True
    assert client._end is not None and client._end.round == 3


def test_a_held_run_end_that_the_coordinator_cleared_is_not_honoured_later() -> None:
    client = _client_in_round_1()
    assert _deliver(client, client.topics.run_end, _end(1), retained=True) is False   # a forgery
    _deliver(client, client.topics.run_end, b"", retained=True)   # the coordinator replaced it
    assert _deliver(client, client.topics.coordinator_state, _state(1, "offline", "training")) is False
    assert client._end is None


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


# ---- the run's end stops a device that is still training ---------------------------------------------------------


class BatchTrainer(Trainer):
    """`batches` batches of `batch_s` seconds; at batch `end_at` the coordinator's run_end arrives (queued as
    paho's thread would). `ran` counts the batches run."""

    def __init__(self, batches: int, batch_s: float, end_at: int | None) -> None:
        self.batches, self.batch_s, self.end_at = batches, batch_s, end_at
        self.client: EdgeClient | None = None
        self.ran = 0

    def fit(self, weights: list[np.ndarray], plan: TrainingPlan, model: ModelInfo,
            context: RoundContext) -> FitResult:
        for batch in range(self.batches):
            time.sleep(self.batch_s)
            self.ran = batch + 1
            if self.ran == self.end_at and self.client is not None:
                _queue_run_end(self.client)
            context.between_batches()
            if context.stop_requested():
                break
        return FitResult([w + 1 for w in weights], 10, {})


def _queue_run_end(client: EdgeClient) -> None:
    from federation.protocol.messages import RunEnd

    end = RunEnd(run="r1", round=3, sender="coordinator", reason="completed").encode()
    client._on_message(client.topics.run_end, end, False)


def _training_client(batches: int, batch_s: float, end_at: int | None,
                     slowdown: float = 1.0) -> tuple[EdgeClient, BatchTrainer, list[str]]:
    trainer = BatchTrainer(batches, batch_s, end_at)
    client = EdgeClient(ClientSettings("dev-1", BrokerAddress("127.0.0.1", 1), run="r1", slowdown=slowdown),
                        trainer=trainer)
    trainer.client = client
    sent: list[str] = []
    client.link.publish_and_wait = lambda topic, payload, **kw: sent.append(topic) is None  # type: ignore[method-assign]
    _deliver(client, client.topics.global_model, _model_message(3))
    assert client._latest is not None
    return client, trainer, sent


def test_a_run_end_that_arrives_mid_training_stops_the_fit_and_nothing_is_sent() -> None:
    """A slow device that took the last model as the run closed trained on for minutes, and a benchmark's run
    failed waiting for it to exit (bench/uneven_devices.py, async, --slowdown 10)."""
    client, trainer, sent = _training_client(batches=200, batch_s=0.005, end_at=5)
    assert client._train_and_publish(client._latest) is False
    assert trainer.ran == 5, "the fit stopped at the batch after the run's end arrived"
    assert sent == [] and client.rounds_trained == []
    assert client._end is not None


def test_a_run_end_during_a_simulated_slowdown_cuts_the_wait_short() -> None:
    client, trainer, sent = _training_client(batches=4, batch_s=0.02, end_at=None, slowdown=100)
    threading.Timer(0.3, _queue_run_end, [client]).start()
    started = time.monotonic()
    assert client._train_and_publish(client._latest) is False
    took = time.monotonic() - started
    assert trainer.ran == 4 and took < 5.0, f"waited {took:.1f} s of a {99 * 0.08:.0f} s slowdown"
    assert sent == []


def test_without_a_run_end_the_update_is_published() -> None:
    client, trainer, sent = _training_client(batches=3, batch_s=0.001, end_at=None)
    assert client._train_and_publish(client._latest) is True
    assert trainer.ran == 3 and sent == [client.topics.update("dev-1")]
    assert client.rounds_trained == [3]


def test_an_earlier_rounds_end_does_not_stop_a_later_rounds_training() -> None:
    from federation.protocol.messages import RunEnd

    client, trainer, sent = _training_client(batches=3, batch_s=0.001, end_at=None)
    client._end = RunEnd(run="r1", round=2, sender="coordinator", reason="stopped")   # a stopped run, resumed
    assert client._train_and_publish(client._latest) is True
    assert trainer.ran == 3 and len(sent) == 1
