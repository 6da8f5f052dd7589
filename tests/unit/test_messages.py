"""Tests for federation.protocol.messages: every message type round-trips; invalid payloads raise DecodeError only."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.protocol.byte_chunks import sha256_hex, split
from federation.protocol.codec import WIRE_DTYPES, DecodeError, pack, unpack
from federation.protocol.deployed_model import DeploymentInfo, TensorFormat
from federation.protocol.messages import (
    MAX_NUM_EXAMPLES,
    MESSAGE_TYPES,
    ChunkedMessage,
    ClientStatus,
    CoordinatorState,
    DeployedModel,
    GlobalModel,
    Message,
    ModelChunk,
    ModelInfo,
    RoundMetricsMessage,
    RunEnd,
    TrainingPlan,
    Update,
    check_finite,
    decode_message,
)
from federation.protocol.relay_messages import PartialUpdate, RelayStatus, SiteClient, SiteDevice
from federation.protocol.version import PROTOCOL_VERSION

TENSORS = [
    ("conv/kernel", np.linspace(-1, 1, 3 * 3 * 1 * 4, dtype=np.float32).reshape(3, 3, 1, 4)),
    ("conv/bias", np.array([0.0, -0.0, 1e-38, 3.5], dtype=np.float32)),
    ("step", np.array(7, dtype=np.int64)),
    ("empty", np.zeros((0, 3), dtype=np.float16)),
]
ENV = dict(run="run-1", round=3, sender="client_07", sent_at=1712345678.25)
MODEL_BYTES = bytes(range(100))
DEPLOY_INFO = DeploymentInfo(
    run="run-1", round=3, variant="int8", sha256=sha256_hex(MODEL_BYTES), size=len(MODEL_BYTES),
    input=TensorFormat((28, 28, 1), "uint8", 1.0, 0), output=TensorFormat((3,), "uint8", 1 / 256, 0),
    class_names=("a", "b", "c"), test_accuracy=0.875, test_examples=200, keras_accuracy=0.88,
    tflite_runtime_compat=True, created_at=1712345678.5)


def sample_messages() -> list[Message]:
    return [
        GlobalModel(**ENV, model=ModelInfo("small_cnn", (28, 28, 1), 10),
                    train=TrainingPlan(epochs=2, batch_size=32, learning_rate=0.001, optimizer="sgd"),
                    tensors=TENSORS, total_rounds=5),
        Update(**ENV, num_examples=1234, metrics={"accuracy": 0.875, "loss": 0.31, "train_time_s": 12.0},
               tensors=TENSORS),
        Update(**ENV, num_examples=MAX_NUM_EXAMPLES, metrics={}, tensors=[]),
        ClientStatus(**ENV, status="online", software="0.1.0", num_examples=600,
                     device={"host": "pi4", "cpus": 4, "tags": ["arm", "edge"], "mem_gb": 3.7}),
        ClientStatus(**ENV, status="offline"),
        CoordinatorState(**ENV, status="online", phase="training", total_rounds=5,
                         online_clients=["a", "b", "c"], detail="expecting 3 of 3 online clients"),
        CoordinatorState(**ENV, status="offline", phase="done"),
        RunEnd(**ENV, reason="completed", test_accuracy=0.9123, detail="5 rounds"),
        RunEnd(**ENV, reason="no_quorum", test_accuracy=None),
        RoundMetricsMessage(**ENV, total_rounds=5, clients=2, examples=1200, test_loss=0.52, test_accuracy=0.8125,
                            bytes_in=1801612, bytes_out=900866, round_time_s=12.5, slowest_train_s=11.0,
                            overhead_s=1.5, aggregate_s=0.01, evaluate_s=0.7, client_ids=["a", "b"],
                            rejected={"wrong_round": 1},
                            aggregation={"clip_norm": 2.5, "clipped": ["b"], "dp_epsilon": 1.5},
                            history=[{"round": 1, "test_accuracy": 0.5, "test_loss": 1.25},
                                     {"round": 2, "test_accuracy": 0.8125, "test_loss": 0.52}]),
        ClientStatus(**ENV, status="online", software="fedmq 0.1.0", role="serve",
                     deployed={"model_version": "run-1@3", "sha256": "ab" * 32}, deploy_error="sha256 mismatch"),
        DeployedModel(**ENV, info=DEPLOY_INFO, model=MODEL_BYTES),
        ChunkedMessage(**ENV, manifest=split(MODEL_BYTES, 64)[0]),
        ModelChunk(**ENV, transfer=sha256_hex(MODEL_BYTES), index=1, count=2, sha256=sha256_hex(MODEL_BYTES[64:]),
                   data=MODEL_BYTES[64:]),
        RelayStatus(**ENV, status="online", software="fedmq 0.1.0 relay",
                    devices=[SiteDevice("a1", 600), SiteDevice("a2", 0, "input shape differs")]),
        PartialUpdate(**ENV, clients=[SiteClient("a1", 600), SiteClient("a2", 30)], num_examples=630,
                      metrics={"train_time_s": 2.5}, tensors=TENSORS, part=1, ignored={"duplicate": 1}),
    ]


def assert_messages_equal(a: Message, b: Message) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "tensors":
            assert [n for n, _ in x] == [n for n, _ in y]
            for (_, xa), (_, ya) in zip(x, y):
                assert xa.dtype == ya.dtype and xa.shape == ya.shape
                assert np.array_equal(xa, ya)
        else:
            assert x == y, f.name
            assert type(x) is type(y), f.name


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    payload = message.encode()
    assert isinstance(payload, bytes)
    decoded = decode_message(payload)
    assert_messages_equal(message, decoded)
    # the envelope is on the wire as documented
    raw = unpack(payload)
    assert raw["type"] == message.TYPE and raw["version"] == PROTOCOL_VERSION
    assert {"version", "type", "run", "round", "sender", "sent_at"} <= raw.keys()


def test_every_message_type_is_covered() -> None:
    assert {type(m).TYPE for m in sample_messages()} == set(MESSAGE_TYPES)


def test_decode_accepts_bytearray_and_memoryview_and_max_size() -> None:
    payload = sample_messages()[1].encode()
    for form in (bytearray(payload), memoryview(payload)):
        assert isinstance(decode_message(form), Update)
    assert isinstance(decode_message(payload, max_size=len(payload)), Update)
    with pytest.raises(DecodeError) as info:
        decode_message(payload, max_size=len(payload) - 1)
    assert info.value.reason == "too_large"


def test_default_sent_at_is_now_and_version_is_current() -> None:
    m = ClientStatus(run="r", round=0, sender="c")
    assert m.version == PROTOCOL_VERSION
    assert abs(decode_message(m.encode()).sent_at - m.sent_at) == 0
    assert m.sent_at > 1.6e9


# ---- validation -------------------------------------------------------------------------------------


def valid_raw(mtype: str = "update") -> dict[str, Any]:
    message = {m.TYPE: m for m in sample_messages()}[mtype]
    return unpack(message.encode())


def decode_raw(raw: dict[str, Any]) -> Message:
    return decode_message(pack(raw))


def expect_error(raw: dict[str, Any], pattern: str = "", reason: str | None = None) -> DecodeError:
    with pytest.raises(DecodeError, match=pattern) as info:
        decode_raw(raw)
    if reason is not None:
        assert info.value.reason == reason
    return info.value


@pytest.mark.parametrize("version", [0, 2, PROTOCOL_VERSION + 1, -1, "1", None, True, 1.0, [1]])
def test_wrong_protocol_version(version: Any) -> None:
    raw = valid_raw()
    raw["version"] = version
    expect_error(raw, "protocol version", reason="version")


def test_missing_version() -> None:
    raw = valid_raw()
    del raw["version"]
    expect_error(raw, "protocol version", reason="version")


@pytest.mark.parametrize("mtype", ["nope", "", "Update", None, 3, ["update"], {"a": 1}, b"update"])
def test_unknown_type(mtype: Any) -> None:
    raw = valid_raw()
    raw["type"] = mtype
    expect_error(raw, "unknown message type")


@pytest.mark.parametrize("key", ["run", "round", "sender", "sent_at", "type"])
@pytest.mark.parametrize("mtype", sorted(MESSAGE_TYPES))
def test_missing_envelope_field(key: str, mtype: str) -> None:
    raw = valid_raw(mtype)
    del raw[key]
    expect_error(raw, key if key != "type" else "unknown message type")


@pytest.mark.parametrize("key, value, pattern", [
    ("round", -1, "negative round"),
    ("round", True, "'round' has type bool"),
    ("round", False, "'round' has type bool"),
    ("round", 1.0, "'round' has type float"),
    ("round", "3", "'round' has type str"),
    ("run", 5, "'run' has type int"),
    ("run", "", "empty sender or run"),
    ("sender", "", "empty sender or run"),
    ("sender", b"client", "'sender' has type bytes"),
    ("sent_at", float("nan"), "'sent_at' is not finite"),
    ("sent_at", float("inf"), "'sent_at' is not finite"),
    ("sent_at", True, "'sent_at' has type bool"),
    ("sent_at", "now", "'sent_at' has type str"),
])
def test_bad_envelope_values(key: str, value: Any, pattern: str) -> None:
    raw = valid_raw()
    raw[key] = value
    expect_error(raw, pattern)


def test_integer_sent_at_is_accepted_as_float() -> None:
    raw = valid_raw()
    raw["sent_at"] = 1700000000
    decoded = decode_raw(raw)
    assert decoded.sent_at == 1.7e9 and isinstance(decoded.sent_at, float)


@pytest.mark.parametrize("num_examples", [0, -1, -(2**63), MAX_NUM_EXAMPLES + 1, 2**64 - 1])
def test_update_with_out_of_range_num_examples(num_examples: int) -> None:
    raw = valid_raw("update")
    raw["num_examples"] = num_examples
    expect_error(raw, "num_examples", reason="bad_num_examples")


@pytest.mark.parametrize("num_examples", [1, MAX_NUM_EXAMPLES])
def test_update_num_examples_bounds_are_inclusive(num_examples: int) -> None:
    raw = valid_raw("update")
    raw["num_examples"] = num_examples
    assert decode_raw(raw).num_examples == num_examples


@pytest.mark.parametrize("value", [True, 1.5, "12", None, [3]])
def test_update_num_examples_of_wrong_type(value: Any) -> None:
    raw = valid_raw("update")
    raw["num_examples"] = value
    expect_error(raw, "num_examples")


@pytest.mark.parametrize("metrics, pattern", [
    ({"accuracy": "high"}, "'accuracy' is not a number"),
    ({"accuracy": None}, "'accuracy'"),
    ({"accuracy": True}, "'accuracy'"),
    ({"accuracy": [0.5]}, "'accuracy'"),
    ({"loss": {"v": 1}}, "'loss'"),
    ([1, 2], "expected a map"),
    ("accuracy", "expected a map"),
])
def test_update_with_non_numeric_metric(metrics: Any, pattern: str) -> None:
    raw = valid_raw("update")
    raw["metrics"] = metrics
    expect_error(raw, pattern)


def test_update_metrics_ints_become_floats_and_missing_metrics_is_empty() -> None:
    raw = valid_raw("update")
    raw["metrics"] = {"epochs": 3}
    assert decode_raw(raw).metrics == {"epochs": 3.0}
    del raw["metrics"]
    assert decode_raw(raw).metrics == {}


@pytest.mark.parametrize("tensors", [None, {"a": 1}, [1], [{"name": "w"}]])
def test_update_with_bad_tensors(tensors: Any) -> None:
    raw = valid_raw("update")
    raw["tensors"] = tensors
    expect_error(raw, "tensor")


@pytest.mark.parametrize("changes, pattern", [
    ({"epochs": 0}, "out-of-range"),
    ({"epochs": -2}, "out-of-range"),
    ({"batch_size": 0}, "out-of-range"),
    ({"learning_rate": 0}, "out-of-range"),
    ({"learning_rate": -0.1}, "out-of-range"),
    ({"learning_rate": 10}, "out-of-range"),
    ({"learning_rate": float("nan")}, "not finite"),
    ({"learning_rate": "0.1"}, "learning_rate"),
    ({"epochs": 1.0}, "'epochs' has type float"),
    ({"epochs": True}, "'epochs' has type bool"),
    ({"optimizer": 3}, "'optimizer'"),
])
def test_training_plan_out_of_range(changes: dict[str, Any], pattern: str) -> None:
    raw = valid_raw("global_model")
    raw["train"].update(changes)
    expect_error(raw, pattern)


def test_training_plan_missing_or_not_a_map() -> None:
    raw = valid_raw("global_model")
    del raw["train"]["epochs"]
    expect_error(raw, "missing field 'epochs'")
    raw = valid_raw("global_model")
    raw["train"] = [1, 32, 0.1]
    expect_error(raw, "train: expected a map")


@pytest.mark.parametrize("input_shape", [[], [28, 0, 1], [28, -28], [28.0, 28], [True, 28], "28x28", None,
                                         [[28]]])
def test_model_info_bad_input_shape(input_shape: Any) -> None:
    raw = valid_raw("global_model")
    raw["model"]["input_shape"] = input_shape
    expect_error(raw, "input_shape")


def test_model_info_bad_num_classes_and_name() -> None:
    raw = valid_raw("global_model")
    raw["model"]["num_classes"] = 1
    expect_error(raw, "num_classes")
    raw = valid_raw("global_model")
    raw["model"]["name"] = None
    expect_error(raw, "'name'")
    raw = valid_raw("global_model")
    raw["model"] = "small_cnn"
    expect_error(raw, "model: expected a map")


def test_global_model_total_rounds_must_be_int() -> None:
    raw = valid_raw("global_model")
    raw["total_rounds"] = "5"
    expect_error(raw, "total_rounds")


def test_client_status_validation() -> None:
    raw = valid_raw("client_status")
    raw["status"] = "sleeping"
    expect_error(raw, "unknown status 'sleeping'")
    for bad in ("600", [600], 6.0, float("inf"), True):
        raw = valid_raw("client_status")
        raw["num_examples"] = bad
        expect_error(raw, "num_examples")
    raw = valid_raw("client_status")
    raw["device"] = "pi4"
    raw["num_examples"] = None
    decoded = decode_raw(raw)
    assert decoded.device == {} and decoded.num_examples == 0


def test_coordinator_state_validation() -> None:
    raw = valid_raw("coordinator_state")
    del raw["phase"]
    expect_error(raw, "phase")
    for bad in ("5", [5], 5.5, float("nan")):
        raw = valid_raw("coordinator_state")
        raw["total_rounds"] = bad
        expect_error(raw, "total_rounds")
    raw = valid_raw("coordinator_state")
    raw["online_clients"] = ["a", 3, None, "b"]
    assert decode_raw(raw).online_clients == ["a", "b"]


def test_run_end_validation() -> None:
    raw = valid_raw("run_end")
    raw["reason"] = None
    expect_error(raw, "reason")
    raw = valid_raw("run_end")
    raw["test_accuracy"] = "0.9"
    assert decode_raw(raw).test_accuracy is None
    raw["test_accuracy"] = 1
    assert decode_raw(raw).test_accuracy == 1.0


@pytest.mark.parametrize("key, value, pattern", [
    ("clients", -1, "'clients' is negative"),
    ("bytes_in", 1.5, "'bytes_in' has type float"),
    ("test_accuracy", "0.9", "'test_accuracy' has type str"),
    ("test_loss", True, "'test_loss' has type bool"),
    ("client_ids", ["a", 3], "client_ids must be a list of str"),
    ("client_ids", "a", "'client_ids' has type str"),
    ("rejected", {"duplicate": 1.0}, "rejected must map str to int"),
    ("rejected", [], "expected a map"),
    ("aggregation", [1], "expected a map"),
    ("history", {"round": 1}, "history must be a list"),
    ("history", [{"round": 1, "test_accuracy": 0.5}], "missing field 'test_loss'"),
    ("history", [{"round": "1", "test_accuracy": 0.5, "test_loss": 1.0}], "'round' has type str"),
])
def test_round_metrics_validation(key: str, value: Any, pattern: str) -> None:
    raw = valid_raw("round_metrics")
    raw[key] = value
    expect_error(raw, pattern)


def test_round_metrics_ints_become_floats_nan_loss_passes_and_history_is_optional() -> None:
    raw = valid_raw("round_metrics")
    raw["test_accuracy"], raw["test_loss"] = 1, float("nan")
    del raw["history"], raw["rejected"]
    decoded = decode_raw(raw)
    assert isinstance(decoded, RoundMetricsMessage)
    assert type(decoded.test_accuracy) is float and decoded.test_accuracy == 1.0
    assert math.isnan(decoded.test_loss), "a diverged model's loss is reported, not rejected"
    assert decoded.history == [] and decoded.rejected == {}


def test_round_metrics_message_carries_every_round_metrics_field() -> None:
    from coordinator.metrics import RoundMetrics

    sample = next(m for m in sample_messages() if isinstance(m, RoundMetricsMessage))
    wire = set(unpack(sample.encode()))
    regression_only = {"test_mae", "test_rmse"}  # optional: on the wire in a regression run only
    assert {f.name for f in dataclasses.fields(RoundMetrics)} - regression_only <= wire, \
        "PROTOCOL.md: fields = RoundMetrics fields"
    assert not regression_only & wire, "a classification's round_metrics is as it was"
    regression = dataclasses.replace(sample, test_accuracy=float("nan"), test_mae=1.5, test_rmse=2.0)
    assert {f.name for f in dataclasses.fields(RoundMetrics)} <= set(unpack(regression.encode()))


# ---- check_finite -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_check_finite_rejects_nan_and_inf(bad: float, dtype: str) -> None:
    arr = np.ones((2, 3), dtype=dtype)
    arr[1, 2] = bad
    with pytest.raises(DecodeError, match="'dense/bias'") as info:
        check_finite([("ok", np.zeros(3, np.float32)), ("dense/bias", arr)])
    assert info.value.reason == "not_finite"


def test_check_finite_accepts_finite_and_integer_tensors() -> None:
    check_finite([])
    check_finite([(n, a) for n, a in TENSORS])
    check_finite([("big", np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32)),
                  ("ints", np.array([2**62], np.int64)), ("flags", np.array([True]))])


def test_check_finite_on_decoded_tensors() -> None:
    update = Update(**ENV, num_examples=1, tensors=[("w", np.array([1.0, np.nan], np.float32))])
    decoded = decode_message(update.encode())  # structurally valid: NaN is the content check's job
    with pytest.raises(DecodeError) as info:
        check_finite(decoded.tensors)
    assert info.value.reason == "not_finite"


# ---- fuzzing ----------------------------------------------------------------------------------------

MSGPACK_SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8) | st.binary(max_size=8)
)
ANY_VALUE = st.recursive(
    MSGPACK_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=6,
)
SMALL_VALUE = st.recursive(MSGPACK_SCALARS, lambda children: st.lists(children, max_size=2), max_leaves=2)

TENSOR_ITEM = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["w", "conv/kernel"]) | ANY_VALUE,
        "dtype": st.sampled_from(WIRE_DTYPES + ("complex64", "object", "<f4", "")) | ANY_VALUE,
        "shape": st.lists(st.integers(min_value=-2, max_value=4) | st.sampled_from([2**32, 2**63, 2**64 - 1]),
                          max_size=9) | ANY_VALUE,
        "data": st.binary(max_size=40) | ANY_VALUE,
    },
)
# Values close to the edges of what the decoders accept.
EDGE_VALUES = st.sampled_from([
    0, 1, -1, 2, MAX_NUM_EXAMPLES, MAX_NUM_EXAMPLES + 1, 2**63 - 1, -(2**63), 2**64 - 1, True, False, None,
    0.0, -0.0, 1e-9, 9.99, 10.0, float("nan"), float("inf"), "", "online", "offline", "update", [], {}, b"",
    [28, 28, 1], [0], [-1], PROTOCOL_VERSION, PROTOCOL_VERSION + 1, float(PROTOCOL_VERSION),
])
VALID_RAWS = {mtype: valid_raw(mtype) for mtype in sorted(MESSAGE_TYPES)}


def _slots(obj: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) inside a decoded message, nested maps and lists included."""
    out: list[tuple[Any, Any]] = []
    stack = [obj]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            out.append((node, k))
            stack.append(node[k])
    return out


@st.composite
def fuzz_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message of a random type whose fields (at any depth) are replaced, deleted or added at random."""
    raw = copy.deepcopy(VALID_RAWS[draw(st.sampled_from(sorted(VALID_RAWS)))])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        slots = _slots(raw)[::-1]  # deepest first: sampled_from favours its first elements
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["any", "edge", "tensor", "delete", "add"]))
        # Drawn values are deep-copied: later steps mutate in place, and sampled_from shares its objects.
        if action == "delete":
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[draw(st.text(max_size=6))] = copy.deepcopy(draw(ANY_VALUE))
        elif action == "tensor":
            container[key] = copy.deepcopy(draw(st.lists(TENSOR_ITEM, max_size=2)))
        else:
            container[key] = copy.deepcopy(draw(EDGE_VALUES if action == "edge" else ANY_VALUE))
    return raw


# Maps with exactly the envelope and body keys of a type, every value random but version and type (a random
# version is rejected first, which would hide everything else; test_wrong_protocol_version covers it).
RANDOM_VALUED_MESSAGES = st.one_of([
    st.fixed_dictionaries({k: (st.just(v) if k in ("type", "version") else SMALL_VALUE) for k, v in raw.items()})
    for raw in VALID_RAWS.values()
])


@st.composite
def fuzz_any_message(draw: st.DrawFn) -> dict[str, Any]:
    # Explicit 1-in-4 weight: st.one_of would flatten the five random-valued branches and favour them.
    if draw(st.integers(min_value=0, max_value=7)) in (3, 4):  # mid values: Hypothesis favours the ends
        return draw(RANDOM_VALUED_MESSAGES)
    return draw(fuzz_messages())


FUZZ_MESSAGES = fuzz_any_message()


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=FUZZ_MESSAGES)
def test_fuzz_structures_raise_only_decode_error(raw: dict[str, Any]) -> None:
    payload = msgpack.packb(raw, use_bin_type=True)
    try:
        message = decode_message(payload)
    except DecodeError as exc:
        assert exc.reason and str(exc)
        return
    # Whatever got through is well formed.
    assert type(message) is MESSAGE_TYPES[raw["type"]]
    assert message.version == PROTOCOL_VERSION and type(message.round) is int and message.round >= 0
    assert isinstance(message.run, str) and message.run and isinstance(message.sender, str) and message.sender
    assert math.isfinite(message.sent_at)
    for name, arr in getattr(message, "tensors", []):
        assert isinstance(name, str) and isinstance(arr, np.ndarray)
    if isinstance(message, Update):
        assert 0 < message.num_examples <= MAX_NUM_EXAMPLES
        assert all(type(v) is float for v in message.metrics.values())
    # ...and encodes again.
    assert isinstance(message.encode(), bytes)


VALID_UPDATE = Update(**ENV, num_examples=500, metrics={"accuracy": 0.5, "loss": 1.25},
                      tensors=[("conv/kernel", TENSORS[0][1]), ("conv/bias", TENSORS[1][1])]).encode()


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID_UPDATE)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "set":
            data[i] = draw(st.integers(min_value=0, max_value=255))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[i:i + draw(st.integers(min_value=1, max_value=8))]
    return bytes(data)


@settings(max_examples=2000, deadline=None)
@given(payload=mutated_payloads())
def test_fuzz_mutated_update_bytes_raise_only_decode_error(payload: bytes) -> None:
    try:
        message = decode_message(payload)
    except DecodeError as exc:
        assert str(exc)
        return
    assert isinstance(message, Message)


def test_every_truncation_of_an_update_is_rejected() -> None:
    for cut in range(len(VALID_UPDATE)):
        with pytest.raises(DecodeError):
            decode_message(VALID_UPDATE[:cut])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e308, -1e16, "0.5"])
def test_non_finite_huge_or_text_metrics_are_bad_metrics(value: Any) -> None:
    """Issue 10: NaN and 1e308 metrics made metrics.jsonl invalid strict JSON; a string metric was `malformed`,
    a reason PROTOCOL.md did not list."""
    raw = valid_raw("update")
    raw["metrics"] = {"accuracy": value}
    with pytest.raises(DecodeError) as info:
        decode_raw(raw)
    assert info.value.reason == "bad_metrics"


def test_cohort_and_class_names_travel_with_the_global_model() -> None:
    raw = valid_raw("global_model")
    raw["cohort"] = ["pi-1", "pi-2"]
    raw["model"]["class_names"] = [str(i) for i in range(raw["model"]["num_classes"])]
    message = decode_raw(raw)
    assert message.cohort == ["pi-1", "pi-2"] and message.asks("pi-1") and not message.asks("pi-3")
    assert message.model.class_names == tuple(raw["model"]["class_names"])
    del raw["cohort"]
    assert decode_raw(raw).asks("anyone"), "no cohort: every online client is asked"
    raw["model"]["class_names"] = ["only-one"]
    expect_error(raw, "class_names")


def test_the_round_metrics_schema_is_written_once() -> None:
    """metrics.jsonl's rows and the round_metrics message share one schema (federation.protocol.messages.RoundResults)."""
    from dataclasses import fields

    from coordinator.metrics import RoundMetrics, round_metrics_message
    from federation.protocol.messages import RoundResults

    shared = {f.name for f in fields(RoundResults)}
    assert {f.name for f in fields(RoundMetrics)} == shared | {"round"}
    assert shared <= {f.name for f in fields(RoundMetricsMessage)}
    row = RoundMetrics(round=4, clients=3, examples=90, test_loss=0.25, test_accuracy=0.875, bytes_in=10, bytes_out=20,
                       round_time_s=2.0, slowest_train_s=1.5, overhead_s=0.5, aggregate_s=0.1, evaluate_s=0.2,
                       client_ids=["a", "b", "c"], rejected={"flood": 2}, aggregation={"clipped": ["b"]}, cohort=4,
                       ignored={"late": 1})
    decoded = decode_message(round_metrics_message(row, "r1", 5, [row]).encode(), 1 << 20)
    assert isinstance(decoded, RoundMetricsMessage) and decoded.round == 4 and decoded.total_rounds == 5
    assert {name: getattr(decoded, name) for name in shared} == {name: getattr(row, name) for name in shared}


def test_a_fleets_coordinator_state_carries_a_count_not_thousands_of_ids() -> None:
    """Issue 15: every device subscribes to coordinator/state, so its size must not grow with the fleet."""
    small = CoordinatorState(run="r", round=1, sender="coordinator", online_clients=["a", "b"])
    assert small.online_count == 2 and unpack(small.encode())["online_count"] == 2
    fleet = CoordinatorState(run="r", round=1, sender="coordinator", online_clients=[], online_count=5000)
    decoded = decode_message(fleet.encode())
    assert isinstance(decoded, CoordinatorState)
    assert (decoded.online_count, decoded.online_clients) == (5000, [])
    assert len(fleet.encode()) < 200
    older = unpack(small.encode())
    del older["online_count"]   # a coordinator before the field: the list's length
    decoded = decode_message(pack(older))
    assert isinstance(decoded, CoordinatorState) and decoded.online_count == 2
    for bad in ("5", 5.5, True, -1):
        raw = {**unpack(small.encode()), "online_count": bad}
        with pytest.raises(DecodeError, match="online_count"):
            decode_message(pack(raw))
