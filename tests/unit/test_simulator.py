"""The device simulator's pure parts: what a device does with a model (cohort membership, re-sends), its seeded
schedules (training times, failures, connections), its settings, its counts, its updates and the per-process decode
cache. The simulator against a real broker and coordinator: tests/integration/test_simulate.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_client.simulator.counts import SimCounts
from edge_client.simulator.decisions import (
    ModelAction, SentRecord, abandons_training, model_action,
)
from edge_client.simulator.device import FleetContext, SimDevice
from edge_client.simulator.event_loop import EventLoop
from edge_client.simulator.schedule import (
    connect_delay, failure, num_examples, reconnect_delay, train_seconds,
)
from edge_client.simulator.settings import SimulationSettings, SimulationSettingsError, parse_examples
from edge_client.simulator.shared_messages import SharedMessages
from edge_client.simulator.update_maker import update_messages
from federation.protocol.chunked_transfer import outgoing_messages
from federation.protocol.encodings import EncodingPlan, SparseDelta
from federation.protocol.messages import (
    ChunkedMessage, CoordinatorState, GlobalModel, ModelInfo, RunEnd, TrainingPlan, Update, decode_message,
    weights_digest,
)
from federation.protocol.topics import RunTopics
from federation.transport.mqtt_link import BrokerAddress


def fleet(**overrides: object) -> SimulationSettings:
    return SimulationSettings(**{"broker": BrokerAddress(), "clients": 1000, **overrides})  # type: ignore[arg-type]


def model(round_: int = 1, cohort: list[str] | None = None, plan: TrainingPlan | None = None) -> GlobalModel:
    rng = np.random.default_rng(0)
    tensors = [("d/kernel", rng.standard_normal((64, 32)).astype(np.float32)),
               ("d/bias", np.zeros(32, np.float32)), ("n/count", np.array(5, np.int64))]
    return GlobalModel(run="r", round=round_, sender="coordinator", model=ModelInfo("dense", (64,), 32),
                       train=plan or TrainingPlan(1, 8, 0.001), tensors=tensors, total_rounds=3,
                       weights_sha256=weights_digest([w for _, w in tensors]), cohort=cohort)


# ---- decisions -----------------------------------------------------------------------------------------------

def test_a_device_trains_only_the_rounds_whose_cohort_lists_it() -> None:
    assert model_action("sim-0001", 1, "a", None, None) is ModelAction.TRAIN   # no cohort: everyone
    assert model_action("sim-0001", 1, "a", ["sim-0001", "sim-0002"], None) is ModelAction.TRAIN
    assert model_action("sim-0003", 1, "a", ["sim-0001", "sim-0002"], None) is ModelAction.NOT_ASKED
    assert model_action("sim-0003", 1, "a", [], None) is ModelAction.NOT_ASKED
    assert model_action("sim-000", 1, "a", ["sim-0001"], None) is ModelAction.NOT_ASKED   # no prefix match


def test_the_same_round_and_weights_again_is_a_resend_other_weights_a_new_training() -> None:
    sent = SentRecord(round=2, weights_sha256="abc", train_s=1.0)
    assert model_action("d", 2, "abc", ["d"], sent) is ModelAction.RESEND
    assert model_action("d", 2, "abc", ["x"], sent) is ModelAction.RESEND   # a re-send is asked by having trained
    assert model_action("d", 2, "other", ["d"], sent) is ModelAction.TRAIN
    assert model_action("d", 3, "abc", ["d"], sent) is ModelAction.TRAIN
    assert model_action("d", 1, "xyz", ["d"], sent) is ModelAction.IGNORE


def test_sync_drops_a_training_overtaken_by_a_newer_round_async_does_not() -> None:
    assert abandons_training(2, 3, "sync")
    assert not abandons_training(2, 2, "sync")   # the same round offered again: finish, then re-send
    assert not abandons_training(2, 5, "async")


# ---- schedules -----------------------------------------------------------------------------------------------

def test_training_times_are_log_normal_around_the_mean_and_reproducible() -> None:
    s = fleet(train_seconds=2.0, train_spread=0.5)
    draws = np.array([train_seconds(s, i, 1) for i in range(1, 4001)])
    assert abs(draws.mean() - 2.0) < 0.1 and draws.std() > 0.5
    assert abs(np.log(draws).std() - 0.5) < 0.05
    assert train_seconds(s, 7, 3) == train_seconds(s, 7, 3) != train_seconds(s, 7, 4)
    assert train_seconds(fleet(train_seconds=1.5), 9, 2) == 1.5


def test_slow_devices_are_the_seeded_fraction_and_train_slowdown_times_longer() -> None:
    s = fleet(train_seconds=1.0, slowdown=4.0, slow_fraction=0.25)
    times = [train_seconds(s, i, 1) for i in range(1, 1001)]
    assert set(times) == {1.0, 4.0}
    assert 200 <= times.count(4.0) <= 300


def test_failures_happen_at_the_rate_mid_training_and_a_second_attempt_draws_again() -> None:
    s = fleet(failure_rate=0.2)
    deaths = [failure(s, i, 1, 0, 10.0) for i in range(1, 2001)]
    dead = [d for d in deaths if d is not None]
    assert 340 <= len(dead) <= 460
    assert all(1.0 <= d.after_s <= 9.0 for d in dead)
    assert failure(s, 5, 1, 0, 10.0) == failure(s, 5, 1, 0, 10.0)
    assert [failure(s, i, 1, 0, 1.0) is None for i in range(1, 200)] != [failure(s, i, 1, 1, 1.0) is None
                                                                        for i in range(1, 200)]
    assert all(failure(fleet(), i, 1, 0, 1.0) is None for i in range(1, 100))


def test_connections_follow_the_rate_and_a_rate_of_zero_is_a_storm() -> None:
    s = fleet(connect_rate=100.0)
    delays = [connect_delay(s, i) for i in range(1, 1001)]
    assert all(0.01 * (i - 1) <= d < 0.01 * i for i, d in enumerate(delays, start=1))   # one per 10 ms slot
    assert {connect_delay(fleet(connect_rate=0), i) for i in range(1, 100)} == {0.0}


def test_reconnects_back_off_exponentially_plus_jitter() -> None:
    s = fleet(reconnect_jitter_s=0.0)
    assert [reconnect_delay(s, 1, a) for a in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    jittered = [reconnect_delay(fleet(reconnect_jitter_s=2.0), i, 0) for i in range(1, 200)]
    assert all(0 <= d <= 2.0 for d in jittered) and len(set(jittered)) > 100


def test_examples_are_a_count_or_a_seeded_range() -> None:
    assert num_examples(fleet(), 3) == 600
    s = fleet(examples_min=10, examples_max=20)
    values = [num_examples(s, i) for i in range(1, 500)]
    assert min(values) == 10 and max(values) == 20 and num_examples(s, 4) == num_examples(s, 4)
    assert parse_examples("600") == (600, 600) and parse_examples("50:500") == (50, 500)
    with pytest.raises(SimulationSettingsError, match="LOW:HIGH"):
        parse_examples("5-9")


# ---- settings ------------------------------------------------------------------------------------------------

def test_device_ids_are_prefix_and_padded_index_and_processes_share_them_evenly() -> None:
    s = fleet(clients=10, processes=3)
    assert s.device_id(1) == "sim-0001" and fleet(clients=12345).device_id(7) == "sim-00007"
    shares = [s.share(k) for k in range(3)]
    assert [list(r) for r in shares] == [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10]]


@pytest.mark.parametrize(("overrides", "flag"), [
    ({"clients": 0}, "--clients"), ({"processes": 20, "clients": 10}, "--processes"),
    ({"failure_rate": 1.5}, "--failure-rate"), ({"slowdown": 0.5}, "--slowdown"),
    ({"examples_min": 9, "examples_max": 3}, "--examples"), ({"id_prefix": "bad/"}, "--id-prefix"),
    ({"broker": BrokerAddress(tls=True)}, "plain MQTT over TCP"),
])
def test_bad_settings_name_the_flag(overrides: dict[str, object], flag: str) -> None:
    with pytest.raises(SimulationSettingsError, match=flag):
        fleet(**overrides)


# ---- counts --------------------------------------------------------------------------------------------------

def test_counts_of_processes_add_up_and_survive_the_trip_to_the_parent() -> None:
    a, b = SimCounts(devices=3, births_published=3, births_confirmed=3, cpu_s=1.5), SimCounts(devices=2, failures=1)
    a.updates_published[1] += 3
    a.updates_acknowledged[1] += 2
    b.updates_acknowledged[1] += 2
    b.updates_acknowledged[2] += 1
    b.resends_published[2] += 1
    total = SimCounts.merged([SimCounts.from_wire(a.to_wire()), SimCounts.from_wire(b.to_wire())])
    assert total.devices == 5 and total.births_confirmed == 3 and total.failures == 1 and total.cpu_s == 1.5
    assert dict(total.updates_acknowledged) == {1: 4, 2: 1} and dict(total.resends_published) == {2: 1}
    wire = total.to_wire()
    assert wire["updates_acknowledged"] == {"1": 4, "2": 1} and wire["updates_published"] == {"1": 3}
    line = total.progress_line(10.0)
    assert "births 3/3 acked" in line and "round 1: 4/3 updates acked" in line and "CPU 15%" in line


# ---- updates -------------------------------------------------------------------------------------------------

def test_an_update_is_the_global_weights_plus_seeded_noise_and_a_resend_is_identical() -> None:
    m = model(plan=TrainingPlan(1, 8, 0.001))
    topics = RunTopics("fedmq", "r")
    first = update_messages(m, topics, "sim-0001", 1, 0, 1e-3, 77, 0.5, None)
    again = update_messages(m, topics, "sim-0001", 1, 0, 1e-3, 77, 0.5, None)
    assert [t for t, _ in first] == ["fedmq/r/update/sim-0001"]
    update = decode_message(first[0][1])
    assert isinstance(update, Update) and update.num_examples == 77 and update.metrics == {"train_time_s": 0.5}
    assert not update.base_sha256
    sent = dict(update.tensors)
    kernel = sent["d/kernel"]
    assert isinstance(kernel, np.ndarray)
    diff = kernel - m.tensors[0][1]
    assert 0 < np.abs(diff).max() < 0.01 and abs(diff.std() - 1e-3) < 2e-4
    assert sent["n/count"] == 5    # integers travel as they are
    assert dict(decode_message(again[0][1]).tensors)["d/kernel"].tobytes() == kernel.tobytes()   # type: ignore
    other = dict(decode_message(update_messages(m, topics, "sim-0002", 2, 0, 1e-3, 77, 0.5, None)[0][1]).tensors)
    assert not np.array_equal(other["d/kernel"], kernel)


def test_a_compressed_plan_gets_encoded_deltas_against_the_model_and_chunks_when_asked() -> None:
    plan = TrainingPlan(1, 8, 0.001, chunk_bytes=1024, encoding=EncodingPlan(uplink="topk", topk_fraction=0.1))
    m = model(plan=plan)
    messages = update_messages(m, RunTopics("fedmq", "r"), "sim-0001", 1, 0, 1e-3, 10, 0.5, None)
    assert len(messages) > 2 and messages[0][0] == "fedmq/r/update/sim-0001/chunk/0"
    manifest = decode_message(messages[-1][1])
    assert isinstance(manifest, ChunkedMessage)
    payload = b"".join(decode_message(p).data for _, p in messages[:-1])   # type: ignore[attr-defined]
    update = decode_message(payload)
    assert isinstance(update, Update) and update.base_sha256 == m.weights_sha256
    kernel = dict(update.tensors)["d/kernel"]
    assert isinstance(kernel.value, SparseDelta) and len(kernel.value.indices) == math.ceil(0.1 * 64 * 32)
    unchunked = update_messages(m, RunTopics("fedmq", "r"), "sim-0001", 1, 0, 1e-3, 10, 0.5, 0)
    assert len(unchunked) > 2   # 0 on the command line: the plan's chunk size still holds
    bigger = update_messages(m, RunTopics("fedmq", "r"), "sim-0001", 1, 0, 1e-3, 10, 0.5, 512)
    assert len(bigger) > len(messages)   # the smaller of the two


# ---- the per-process decode cache ----------------------------------------------------------------------------

def test_the_same_model_is_decoded_once_per_process_whatever_the_devices() -> None:
    shared = SharedMessages(1 << 24)
    payload = model().encode()
    results = [shared.receive("fedmq/r/model/global", bytes(payload)) for _ in range(500)]
    assert shared.decodes == 1 and all(m is results[0][0] for m, _ in results)
    assert isinstance(results[0][0], GlobalModel)
    shared.receive("fedmq/r/model/global", model(round_=2).encode())
    assert shared.decodes == 2


def test_a_chunked_model_completes_for_every_device_whatever_the_order_it_got_the_pieces(tmp_path: Path) -> None:
    shared = SharedMessages(1 << 24)
    topic = "fedmq/r/model/global"
    pieces = outgoing_messages(topic, model().encode(), 4096, "r", 1, "coordinator")
    manifest_first, rest = shared.receive(*pieces[-1])
    assert manifest_first is None and rest   # device A: the manifest before its chunks, waiting for them
    got = [shared.receive(t, p)[0] for t, p in pieces[:-1]]
    assert isinstance(got[-1], GlobalModel) and all(g is None for g in got[:-1])
    assert shared.completed(rest) is got[-1]
    again = [shared.receive(t, p)[0] for t, p in pieces]   # device B: the same pieces, in order, decoded from cache
    assert isinstance(again[-1], GlobalModel) and shared.decodes == len(pieces)


# ---- a device and the run's end --------------------------------------------------------------------------------

def _device_after_a_round() -> tuple[SimDevice, Any]:
    """A device that saw round 1's model and a "training" state, then lost its connection (no broker needed)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    ctx = FleetContext(fleet(clients=1, run="r1"), EventLoop(), SharedMessages(1 << 20), SimCounts(), "tok")
    ctx.remaining = 1
    device = SimDevice(ctx, 1)
    device.client = client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="d1")
    training = CoordinatorState(run="r1", round=1, sender="coordinator", status="online", phase="training")
    device._on_message(client, None, _message(ctx.topics.coordinator_state, training.encode(), retained=False))
    assert device.run_end.coordinator is not None
    return device, client


def _message(topic: str, payload: bytes, retained: bool) -> Any:
    import paho.mqtt.client as mqtt

    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload, msg.retain = payload, retained
    return msg


def test_a_device_back_after_the_run_ended_leaves_though_the_run_end_comes_before_the_new_state() -> None:
    """The broker sends retained messages in the order of the subscription: run_end, then coordinator_state. The
    state the device knew said "training"; the new one says the coordinator is offline, and the device leaves."""
    device, client = _device_after_a_round()
    device.run_end.seen_run_model = True
    end = RunEnd(run="r1", round=3, sender="coordinator", reason="completed")
    device._on_message(client, None, _message(device.ctx.topics.run_end, end.encode(), retained=True))
    assert not device.done, "held: the state it knows says the coordinator trains"
    offline = CoordinatorState(run="r1", round=3, sender="coordinator", status="offline", phase="done")
    device._on_message(client, None, _message(device.ctx.topics.coordinator_state, offline.encode(), retained=True))
    assert device.done and device.ctx.remaining == 0


def test_a_device_that_died_forgets_the_coordinators_state() -> None:
    device, _ = _device_after_a_round()
    device.run_end.seen_run_model = True
    device._die()
    assert device.run_end.coordinator is None and device.run_end.seen_run_model
