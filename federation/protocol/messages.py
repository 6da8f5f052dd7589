"""The messages of fedmq's wire protocol (PROTOCOL.md) as dataclasses, with encode and validating decode.

Every message is a msgpack map carrying version, type, run, round, sender and sent_at."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar

import numpy as np

from federation.protocol.architecture import ModelArchitecture
from federation.protocol.byte_chunks import MAX_CHUNKS, MIN_CHUNK_BYTES, ChunkError, ChunkManifest, is_sha256_hex
from federation.protocol.codec import (
    DecodeError, DecodeLimits, clip_text, pack, unpack, wire_repr,
)
from federation.protocol.data_schema import DataSchema
from federation.protocol.deployed_model import DeploymentError, DeploymentInfo
from federation.protocol.encodings import (
    Encoded, EncodingPlan, WireTensor, decode_model_tensors, decode_wire_tensors, encode_model, wire_maps,
)
from federation.protocol.version import PROTOCOL_VERSION

Tensors = list[tuple[str, np.ndarray]]

# Upper bound on a client's claimed example count; larger claims are rejected as absurd.
MAX_NUM_EXAMPLES = 1_000_000_000
MAX_METRICS = 64                  # metrics of one update
MAX_METRIC_VALUE = 1e15           # larger metric values are rejected (JSON-safe, plot-safe)
MAX_CHUNK_BYTES = 256 * 1024 * 1024
TASKS = ("classification", "regression")   # ModelInfo.task
AGGREGATION_MODES = ("sync", "async")      # TrainingPlan.mode
MAX_PROXIMAL_MU = 1000.0                   # TrainingPlan.proximal_mu


@dataclass(frozen=True)
class TrainingPlan:
    """What a client does with the global model in a round; sent with the model."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "adam"
    chunk_bytes: int = 0     # updates larger than this must be sent chunked (0: the broker takes any size)
    mode: str = "sync"       # "async": send the update even when a newer version came meanwhile (FedBuff)
    proximal_mu: float = 0.0  # FedProx: add mu/2 ||w - w_global||^2 to the local loss (0: plain FedAvg training)
    encoding: EncodingPlan = EncodingPlan()   # uplink and downlink encodings (optional on the wire)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"epochs": self.epochs, "batch_size": self.batch_size,
                                "learning_rate": self.learning_rate, "optimizer": self.optimizer,
                                "chunk_bytes": self.chunk_bytes}
        if self.mode != "sync":   # optional fields go on the wire only when set
            wire["mode"] = self.mode
        if self.proximal_mu:
            wire["proximal_mu"] = self.proximal_mu
        if self.encoding != EncodingPlan():
            wire["encoding"] = self.encoding.to_wire()
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> "TrainingPlan":
        m = _require_map(raw, "train")
        plan = cls(
            epochs=_get(m, "epochs", int, "train"),
            batch_size=_get(m, "batch_size", int, "train"),
            learning_rate=float(_get(m, "learning_rate", (int, float), "train")),
            optimizer=_get(m, "optimizer", str, "train"),
            chunk_bytes=_optional_int(m, "chunk_bytes", "train"),
            mode=m.get("mode", "sync"),
            proximal_mu=float(_get(m, "proximal_mu", (int, float), "train")) if "proximal_mu" in m else 0.0,
            encoding=EncodingPlan.from_wire(m.get("encoding")),
        )
        if not 0 <= plan.proximal_mu <= MAX_PROXIMAL_MU:
            raise DecodeError(f"train: proximal_mu {plan.proximal_mu!r} is out of range (0..{MAX_PROXIMAL_MU:g})")
        if plan.mode not in AGGREGATION_MODES:
            raise DecodeError(f"train: unknown mode {_short(plan.mode)} (one of {', '.join(AGGREGATION_MODES)})")
        if plan.epochs < 1 or plan.batch_size < 1 or not (0 < plan.learning_rate < 10):
            raise DecodeError(f"train: out-of-range settings {wire_repr(plan, 200)}")
        if plan.chunk_bytes and not MIN_CHUNK_BYTES <= plan.chunk_bytes <= MAX_CHUNK_BYTES:
            raise DecodeError(f"train: chunk_bytes {plan.chunk_bytes} is out of range (0, or {MIN_CHUNK_BYTES}.."
                              f"{MAX_CHUNK_BYTES})")
        return plan


@dataclass(frozen=True)
class ModelInfo:
    """Which model the tensors belong to: registry name, input shape, task and outputs.

    `task` is "classification" (num_classes >= 2 outputs, one per class name) or "regression" (num_outputs
    values; num_classes 0, no class names). A message without `task` is a classification."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] = ()   # one per output, in order; () when the coordinator has none
    task: str = "classification"
    num_outputs: int = 0                # regression: values predicted per example; classification: 0 (= num_classes)
    data: DataSchema | None = None      # tables and series: how a device makes inputs from its CSV (data_schema.py)
    architecture: ModelArchitecture | None = None   # the Keras JSON and compile recipe (None: registry name only)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"name": self.name, "input_shape": list(self.input_shape),
                                "num_classes": self.num_classes, "class_names": list(self.class_names)}
        if self.task != "classification":  # optional fields go on the wire only when set
            wire["task"] = self.task
            wire["num_outputs"] = self.num_outputs
        if self.data is not None:
            wire["data"] = self.data.to_wire()
        if self.architecture is not None:
            wire["architecture"] = self.architecture.to_wire()
        return wire

    @property
    def outputs(self) -> int:
        """How many values the model returns per example: the class count, or the regression outputs."""
        return self.num_outputs if self.task == "regression" else self.num_classes

    @classmethod
    def from_wire(cls, raw: Any) -> "ModelInfo":
        m = _require_map(raw, "model")
        shape = _get(m, "input_shape", list, "model")
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise DecodeError(f"model: bad input_shape {_short(shape)}")
        task = m.get("task", "classification")
        if task not in TASKS:
            raise DecodeError(f"model: unknown task {_short(task)} (one of {', '.join(TASKS)})")
        num_classes = _get(m, "num_classes", int, "model")
        num_outputs = _optional_int(m, "num_outputs", "model")
        if task == "classification" and num_classes < 2:
            raise DecodeError(f"model: num_classes {num_classes} < 2")
        if task == "regression" and (num_classes != 0 or num_outputs < 1):
            raise DecodeError(f"model: a regression has num_classes 0 and num_outputs >= 1, got {num_classes} "
                              f"and {num_outputs}")
        names = m.get("class_names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DecodeError("model: class_names must be a list of str")
        if names and len(names) != num_classes:
            raise DecodeError(f"model: {len(names)} class_names for {num_classes} classes")
        architecture = ModelArchitecture.from_wire(m["architecture"]) if m.get("architecture") is not None else None
        return cls(name=_get(m, "name", str, "model"), input_shape=tuple(shape), num_classes=num_classes,
                   class_names=tuple(names), task=task, num_outputs=num_outputs if task == "regression" else 0,
                   architecture=architecture,
                   data=DataSchema.from_wire(m["data"]) if m.get("data") is not None else None)


@dataclass
class Message:
    """Fields every message carries. Subclasses add their own and set TYPE."""

    TYPE: ClassVar[str] = ""
    run: str
    round: int
    sender: str
    version: int = PROTOCOL_VERSION
    sent_at: float = field(default_factory=time.time)

    def _envelope(self) -> dict[str, Any]:
        return {"version": self.version, "type": self.TYPE, "run": self.run, "round": self.round,
                "sender": self.sender, "sent_at": self.sent_at}

    def body(self) -> dict[str, Any]:
        return {}

    def encode(self) -> bytes:
        return pack({**self._envelope(), **self.body()})


@dataclass
class GlobalModel(Message):
    """The coordinator's model for a round, published retained on the model topic."""

    TYPE: ClassVar[str] = "global_model"
    model: ModelInfo = None  # type: ignore[assignment]
    train: TrainingPlan = None  # type: ignore[assignment]
    tensors: Tensors = field(default_factory=list)   # the weights devices load (sent as train.encoding.downlink)
    total_rounds: int = 0
    weights_sha256: str = ""   # weights_digest(tensors): tells a re-sent model from a new one
    cohort: list[str] | None = None   # the clients asked to train this round; None: every online client

    def body(self) -> dict[str, Any]:
        body = {"model": self.model.to_wire(), "train": self.train.to_wire(),
                "total_rounds": self.total_rounds, "weights_sha256": self.weights_sha256,
                "tensors": self._wire_tensors()}
        if self.cohort is not None:
            body["cohort"] = self.cohort
        return body

    def _wire_tensors(self) -> list[dict[str, Any]]:
        names = [name for name, _ in self.tensors]
        wire, _ = encode_model([w for _, w in self.tensors], self.train.encoding.downlink)
        return wire_maps(list(zip(names, wire)))

    def asks(self, client_id: str) -> bool:
        """Whether `client_id` is asked to train this round."""
        return self.cohort is None or client_id in self.cohort


@dataclass
class Update(Message):
    """A client's locally trained weights for a round."""

    TYPE: ClassVar[str] = "update"
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    tensors: list[tuple[str, WireTensor]] = field(default_factory=list)   # arrays, or Encoded (encodings.py)
    base_sha256: str = ""   # set: the float tensors are deltas against the global model of this weights_sha256

    def body(self) -> dict[str, Any]:
        body = {"num_examples": self.num_examples, "metrics": self.metrics, "tensors": wire_maps(self.tensors)}
        if self.base_sha256:
            body["base_sha256"] = self.base_sha256
        return body


@dataclass
class ClientStatus(Message):
    """A client's presence: birth (online, retained) and death (offline, its last will)."""

    TYPE: ClassVar[str] = "client_status"
    status: str = "online"
    software: str = ""
    num_examples: int = 0
    device: dict[str, Any] = field(default_factory=dict)
    role: str = "train"                      # "serve": an inference-only device; coordinators don't wait for it
    deployed: dict[str, Any] | None = None   # serve only: DeploymentInfo.summary() of the model it serves
    deploy_error: str = ""                   # serve only: why the last delivered model was rejected
    error: str = ""                          # train only: why this device can't train the run's model

    def body(self) -> dict[str, Any]:
        body = {"status": self.status, "software": self.software,
                "num_examples": self.num_examples, "device": self.device}
        if self.error:
            body["error"] = self.error
        if self.role != "train":  # optional fields go on the wire only when set
            body["role"] = self.role
        if self.deployed is not None:
            body["deployed"] = self.deployed
        if self.deploy_error:
            body["deploy_error"] = self.deploy_error
        return body


STATE_LIST_MAX = 100   # coordinator_state lists the online ids up to this many clients; beyond, online_count only


@dataclass
class CoordinatorState(Message):
    """The coordinator's retained state: online or offline, current round and phase."""

    TYPE: ClassVar[str] = "coordinator_state"
    status: str = "online"
    phase: str = "starting"
    total_rounds: int = 0
    online_clients: list[str] = field(default_factory=list)   # empty beyond STATE_LIST_MAX clients: see online_count
    detail: str = ""
    online_count: int = -1     # training clients online; -1 when made: len(online_clients)
    sites: dict[str, int] = field(default_factory=dict)   # site relays online -> their devices online (optional)

    def __post_init__(self) -> None:
        if self.online_count < 0:
            self.online_count = len(self.online_clients)

    def body(self) -> dict[str, Any]:
        body = {"status": self.status, "phase": self.phase, "total_rounds": self.total_rounds,
                "online_clients": self.online_clients, "detail": self.detail, "online_count": self.online_count}
        if self.sites:
            body["sites"] = self.sites
        return body


@dataclass
class RunEnd(Message):
    """Announces the end of a run (retained): why it ended and the final accuracy (classification) or mean absolute
    and root mean squared errors (regression: test_accuracy None)."""

    TYPE: ClassVar[str] = "run_end"
    reason: str = "completed"
    test_accuracy: float | None = None
    detail: str = ""
    test_mae: float | None = None     # regression only (optional on the wire)
    test_rmse: float | None = None

    def body(self) -> dict[str, Any]:
        return {"reason": self.reason, "test_accuracy": self.test_accuracy, "detail": self.detail,
                **_regression_fields(self.test_mae, self.test_rmse)}

    def result_text(self) -> str:
        """'accuracy 0.9123', a regression's 'MAE 45.84, RMSE 57.99', or 'accuracy n/a', for log lines."""
        if self.test_mae is not None and self.test_rmse is not None:
            return f"MAE {self.test_mae:.4g}, RMSE {self.test_rmse:.4g}"
        return f"accuracy {self.test_accuracy:.4f}" if self.test_accuracy is not None else "accuracy n/a"


@dataclass
class RoundResults:
    """A closed round's results: the one schema of the round_metrics message below and of the coordinator's
    metrics.jsonl rows and checkpoint (coordinator.metrics.RoundMetrics derives from it)."""

    clients: int = 0                 # accepted updates
    examples: int = 0                # sum of their num_examples
    test_loss: float = 0.0
    test_accuracy: float = 0.0
    bytes_in: int = 0                # update payload bytes accepted this round
    bytes_out: int = 0               # global model payload bytes published for this round
    round_time_s: float = 0.0        # from publishing the model to closing the round
    slowest_train_s: float = 0.0     # longest local training time reported by a client
    overhead_s: float = 0.0          # round_time_s - slowest_train_s
    aggregate_s: float = 0.0
    evaluate_s: float = 0.0
    client_ids: list[str] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)     # reason -> count
    aggregation: dict[str, Any] = field(default_factory=dict)  # the rule's report: clipped clients, DP epsilon...
    cohort: int = 0                                            # clients asked to train (optional on the wire)
    ignored: dict[str, int] = field(default_factory=dict)      # honest leftovers: late, duplicate (optional)
    elapsed_s: float = 0.0         # wall-clock seconds from the run's first round to this one's end (optional)
    # A regression run's errors (optional on the wire, None in a classification run; test_accuracy is then NaN).
    test_mae: float | None = None
    test_rmse: float | None = None

    @property
    def is_regression(self) -> bool:
        return self.test_mae is not None


# RoundResults' scalar fields by type, as the wire checks them (cohort is optional on the wire: checked apart).
_RESULT_INTS = tuple(f.name for f in fields(RoundResults) if f.type == "int" and f.name != "cohort")
_RESULT_FLOATS = tuple(f.name for f in fields(RoundResults) if f.type == "float" and f.name != "elapsed_s")


@dataclass
class RoundMetricsMessage(RoundResults, Message):
    """A closed round's results (RoundResults), retained on the metrics topic.

    `history` holds (round, test_accuracy, test_loss, and in a regression test_mae and test_rmse) of every round
    so far, so that a viewer that subscribes mid-run draws the whole curve from the one retained message."""

    TYPE: ClassVar[str] = "round_metrics"
    total_rounds: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    INT_FIELDS: ClassVar[tuple[str, ...]] = ("total_rounds", *_RESULT_INTS)
    FLOAT_FIELDS: ClassVar[tuple[str, ...]] = _RESULT_FLOATS

    def body(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.INT_FIELDS + self.FLOAT_FIELDS},
                "client_ids": self.client_ids, "rejected": self.rejected, "history": self.history,
                "cohort": self.cohort, "ignored": self.ignored, "elapsed_s": self.elapsed_s,
                "aggregation": self.aggregation, **_regression_fields(self.test_mae, self.test_rmse)}


def _regression_fields(mae: float | None, rmse: float | None) -> dict[str, float]:
    """test_mae and test_rmse, on the wire only in a regression run (classification's bytes stay as they were)."""
    return {} if mae is None else {"test_mae": mae, "test_rmse": rmse if rmse is not None else float("nan")}


@dataclass
class DeployedModel(Message):
    """A TFLite model for inference-only devices, retained on the deploy topic (chunked when large, like any
    message: see federation/protocol/chunked_transfer.py); `info.sha256` is the model bytes' own hash."""

    TYPE: ClassVar[str] = "deployed_model"
    info: DeploymentInfo = None  # type: ignore[assignment]
    model: bytes = b""  # the .tflite file

    def body(self) -> dict[str, Any]:
        return {**self.info.fields_to_wire(), "model": self.model}


@dataclass
class ModelChunk(Message):
    """Chunk `index` of `count` of a message too large for one; `transfer` is the whole payload's sha256."""

    TYPE: ClassVar[str] = "model_chunk"
    transfer: str = ""
    index: int = 0
    count: int = 0
    sha256: str = ""
    data: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"transfer": self.transfer, "index": self.index, "count": self.count, "sha256": self.sha256,
                "data": self.data}


@dataclass
class ChunkedMessage(Message):
    """Stands for a message too large for the broker: its bytes follow as `model_chunk` messages on
    `<this topic>/chunk/<i>`, described by `manifest`; see federation/protocol/chunked_transfer.py."""

    TYPE: ClassVar[str] = "chunked"
    manifest: ChunkManifest = None  # type: ignore[assignment]

    def body(self) -> dict[str, Any]:
        return {"manifest": self.manifest.to_wire()}


CLIENT_STATUSES = ("online", "offline")
COORDINATOR_STATUSES = ("online", "offline")
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (GlobalModel, Update, ClientStatus, CoordinatorState, RunEnd,
                            RoundMetricsMessage, DeployedModel, ModelChunk, ChunkedMessage)
}


def decode_message(payload: bytes | bytearray | memoryview, max_size: int = 0,
                   limits: DecodeLimits | None = None) -> Message:
    """Decode and structurally validate any fedmq message. Raises DecodeError with the reason.

    `limits` bound what msgpack may allocate (default DecodeLimits.for_size(max_size)); see codec.DecodeLimits."""
    raw = unpack(payload, max_size=max_size, limits=limits)
    version = raw.get("version")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise DecodeError(f"protocol version {_short(version)}, this software speaks {PROTOCOL_VERSION}", "version")
    mtype = raw.get("type")
    if not isinstance(mtype, str) or mtype not in MESSAGE_TYPES:  # a list/map type would be unhashable
        raise DecodeError(f"unknown message type {_short(mtype)}")
    env = dict(
        version=version,
        run=_get(raw, "run", str, mtype),
        round=_get(raw, "round", int, mtype),
        sender=_get(raw, "sender", str, mtype),
        sent_at=float(_get(raw, "sent_at", (int, float), mtype)),
    )
    if env["round"] < 0:
        raise DecodeError(f"{mtype}: negative round {env['round']}")
    if not env["sender"] or not env["run"]:
        raise DecodeError(f"{mtype}: empty sender or run")
    return _DECODERS[mtype](raw, env)


def _str_or(value: Any, default: str) -> str:
    return value if isinstance(value, str) else default


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _decode_global_model(raw: dict[str, Any], env: dict[str, Any]) -> GlobalModel:
    return GlobalModel(
        **env, model=ModelInfo.from_wire(raw.get("model")), train=TrainingPlan.from_wire(raw.get("train")),
        total_rounds=_get(raw, "total_rounds", int, "global_model"),
        weights_sha256=_str_or(raw.get("weights_sha256"), ""),
        tensors=decode_model_tensors(raw.get("tensors")), cohort=_decode_cohort(raw.get("cohort")),
    )


def _decode_cohort(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise DecodeError("global_model: cohort must be a list of client ids (str)")
    return raw


def _decode_update(raw: dict[str, Any], env: dict[str, Any]) -> Update:
    num_examples = _get(raw, "num_examples", int, "update")
    if not 0 < num_examples <= MAX_NUM_EXAMPLES:
        raise DecodeError(f"update: num_examples {num_examples} is out of range (1..{MAX_NUM_EXAMPLES})",
                          "bad_num_examples")
    metrics = raw.get("metrics", {})
    if not isinstance(metrics, dict):
        raise DecodeError(f"update: metrics is a {type(metrics).__name__}, expected a map", "bad_metrics")
    if len(metrics) > MAX_METRICS:
        raise DecodeError(f"update: {len(metrics)} metrics, at most {MAX_METRICS}", "bad_metrics")
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or len(key) > 64:
            raise DecodeError(f"update: metric name {_short(key)} is not a str of at most 64 characters",
                              "bad_metrics")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError(f"update: metric {key!r} is not a number (a {type(value).__name__})", "bad_metrics")
        if not math.isfinite(value) or abs(value) > MAX_METRIC_VALUE:
            raise DecodeError(f"update: metric {key!r} = {value!r} is not a finite number within "
                              f"+-{MAX_METRIC_VALUE:g}", "bad_metrics")
        clean[key] = float(value)
    base = raw.get("base_sha256", "")
    if not isinstance(base, str) or (base and not is_sha256_hex(base)):
        raise DecodeError(f"update: base_sha256 {_short(base)} is not 64 lowercase hex digits")
    return Update(**env, num_examples=num_examples, metrics=clean, tensors=decode_wire_tensors(raw.get("tensors")),
                  base_sha256=base)


def _decode_client_status(raw: dict[str, Any], env: dict[str, Any]) -> ClientStatus:
    status = _get(raw, "status", str, "client_status")
    if status not in CLIENT_STATUSES:
        raise DecodeError(f"client_status: unknown status {wire_repr(status)}")
    return ClientStatus(
        **env, status=status, software=str(raw.get("software", "")),
        num_examples=_optional_int(raw, "num_examples", "client_status"),
        device=_dict_or_empty(raw.get("device")),
        role=raw["role"] if isinstance(raw.get("role"), str) else "train",
        deployed=raw["deployed"] if isinstance(raw.get("deployed"), dict) else None,
        deploy_error=_short_str(raw.get("deploy_error")),
        error=_short_str(raw.get("error")),
    )


def _decode_coordinator_state(raw: dict[str, Any], env: dict[str, Any]) -> CoordinatorState:
    online = raw.get("online_clients", [])
    return CoordinatorState(
        **env, status=_get(raw, "status", str, "coordinator_state"),
        phase=_get(raw, "phase", str, "coordinator_state"),
        total_rounds=_optional_int(raw, "total_rounds", "coordinator_state"),
        online_clients=[c for c in online if isinstance(c, str)] if isinstance(online, list) else [],
        detail=str(raw.get("detail", "")),
        online_count=_count(raw, "online_count", "coordinator_state") if "online_count" in raw
        else len(online) if isinstance(online, list) else 0,
        sites={k: v for k, v in sites.items() if isinstance(k, str) and type(v) is int}
        if isinstance(sites := raw.get("sites"), dict) else {},
    )


def _count(m: dict[str, Any], key: str, what: str) -> int:
    """A count: an int >= 0 (not a bool)."""
    value = m[key]
    if type(value) is not int or value < 0:
        raise DecodeError(f"{what}: field {key!r} must be an int >= 0, got {wire_repr(value)}")
    return value


def _decode_run_end(raw: dict[str, Any], env: dict[str, Any]) -> RunEnd:
    acc = raw.get("test_accuracy")
    mae, rmse = _decode_regression_fields(raw, "run_end")
    return RunEnd(**env, reason=_get(raw, "reason", str, "run_end"),
                  test_accuracy=float(acc) if isinstance(acc, (int, float)) else None,
                  detail=str(raw.get("detail", "")), test_mae=mae, test_rmse=rmse)


def _decode_regression_fields(m: dict[str, Any], what: str) -> tuple[float | None, float | None]:
    """The optional test_mae and test_rmse: both absent (or nil) in a classification run, both numbers in a
    regression (NaN allowed, like test_loss: a diverged model's errors are still reported)."""
    present = [key for key in ("test_mae", "test_rmse") if m.get(key) is not None]
    if not present:
        return None, None
    if len(present) == 1:
        raise DecodeError(f"{what}: {present[0]} without {'test_rmse' if present[0] == 'test_mae' else 'test_mae'}"
                          " (a regression reports both)")
    mae, rmse = float(_get_number(m, "test_mae", what)), float(_get_number(m, "test_rmse", what))
    if mae < 0 or rmse < 0:
        raise DecodeError(f"{what}: negative test_mae or test_rmse ({mae!r}, {rmse!r})")
    return mae, rmse


def _decode_round_metrics(raw: dict[str, Any], env: dict[str, Any]) -> RoundMetricsMessage:
    what = "round_metrics"
    values: dict[str, Any] = {}
    for key in RoundMetricsMessage.INT_FIELDS:
        values[key] = _get(raw, key, int, what)
        if values[key] < 0:
            raise DecodeError(f"{what}: field {key!r} is negative")
    for key in RoundMetricsMessage.FLOAT_FIELDS:
        values[key] = float(_get_number(raw, key, what))
    client_ids = _get(raw, "client_ids", list, what)
    if not all(isinstance(c, str) for c in client_ids):
        raise DecodeError(f"{what}: client_ids must be a list of str")
    rejected = _require_map(raw.get("rejected", {}), f"{what} rejected")
    if not all(isinstance(k, str) and type(v) is int for k, v in rejected.items()):
        raise DecodeError(f"{what}: rejected must map str to int")
    history = raw.get("history", [])
    if not isinstance(history, list):
        raise DecodeError(f"{what}: history must be a list")
    points = []
    for item in history:
        m = _require_map(item, f"{what} history item")
        point = {"round": _get(m, "round", int, f"{what} history"),
                 "test_accuracy": float(_get_number(m, "test_accuracy", f"{what} history")),
                 "test_loss": float(_get_number(m, "test_loss", f"{what} history"))}
        if "elapsed_s" in m:
            point["elapsed_s"] = float(_get_number(m, "elapsed_s", f"{what} history"))
        mae, rmse = _decode_regression_fields(m, f"{what} history")
        points.append(point if mae is None else {**point, "test_mae": mae, "test_rmse": rmse})
    test_mae, test_rmse = _decode_regression_fields(raw, what)
    aggregation = _require_map(raw.get("aggregation", {}), f"{what} aggregation")
    ignored = _require_map(raw.get("ignored", {}), f"{what} ignored")
    if not all(isinstance(k, str) and type(v) is int for k, v in ignored.items()):
        raise DecodeError(f"{what}: ignored must map str to int")
    return RoundMetricsMessage(**env, **values, client_ids=list(client_ids), rejected=dict(rejected), history=points,
                               aggregation=dict(aggregation), cohort=_optional_int(raw, "cohort", what),
                               ignored=dict(ignored),
                               elapsed_s=float(_get_number(raw, "elapsed_s", what)) if "elapsed_s" in raw else 0.0,
                               test_mae=test_mae, test_rmse=test_rmse)


def _decode_deployed_model(raw: dict[str, Any], env: dict[str, Any]) -> DeployedModel:
    try:
        info = DeploymentInfo.fields_from_wire(raw, env["run"], env["round"])
    except DeploymentError as exc:
        raise DecodeError(f"deployed_model: {clip_text(str(exc), 200)}") from None
    model = _get(raw, "model", bytes, "deployed_model")  # its sha256 is checked by the receiver (bad_hash)
    return DeployedModel(**env, info=info, model=model)


def _decode_model_chunk(raw: dict[str, Any], env: dict[str, Any]) -> ModelChunk:
    transfer, digest = _get(raw, "transfer", str, "model_chunk"), _get(raw, "sha256", str, "model_chunk")
    index, count = _get(raw, "index", int, "model_chunk"), _get(raw, "count", int, "model_chunk")
    data = _get(raw, "data", bytes, "model_chunk")
    if not is_sha256_hex(transfer) or not is_sha256_hex(digest):
        raise DecodeError("model_chunk: transfer and sha256 must be 64 lowercase hex digits")
    if not 0 <= index < count <= MAX_CHUNKS:
        raise DecodeError(f"model_chunk: index {index} of {count} is out of range")
    return ModelChunk(**env, transfer=transfer, index=index, count=count, sha256=digest, data=data)


def _decode_chunked(raw: dict[str, Any], env: dict[str, Any]) -> ChunkedMessage:
    try:
        manifest = ChunkManifest.from_wire(raw.get("manifest"))
    except ChunkError as exc:
        raise DecodeError(f"chunked: {exc}", exc.reason) from None
    return ChunkedMessage(**env, manifest=manifest)


_DECODERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Message]] = {
    "global_model": _decode_global_model,
    "update": _decode_update,
    "client_status": _decode_client_status,
    "coordinator_state": _decode_coordinator_state,
    "run_end": _decode_run_end,
    "round_metrics": _decode_round_metrics,
    "deployed_model": _decode_deployed_model,
    "model_chunk": _decode_model_chunk,
    "chunked": _decode_chunked,
}


def register_message_type(cls: type[Message], decoder: Callable[[dict[str, Any], dict[str, Any]], Message]) -> None:
    """Add a message type defined in its own module (federation.protocol.relay_messages) to decode_message."""
    MESSAGE_TYPES[cls.TYPE] = cls
    _DECODERS[cls.TYPE] = decoder


def weights_digest(weights: list[np.ndarray]) -> str:
    """sha256 over the weights' little-endian bytes, in order: the identity of a global model."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w, dtype=w.dtype.newbyteorder("<")).data)
    return digest.hexdigest()


def check_finite(tensors: list[tuple[str, WireTensor]] | Tensors) -> None:
    """Raise DecodeError naming the first floating tensor holding NaN or Inf."""
    for name, tensor in tensors:
        arr = tensor.values if isinstance(tensor, Encoded) else tensor
        if arr.dtype.kind == "f" and not _all_finite(arr):
            raise DecodeError(f"tensor {wire_repr(name)} holds NaN or Inf", "not_finite")


def _all_finite(arr: np.ndarray) -> bool:
    """One BLAS dot x.x (no boolean array): NaN or Inf make it non-finite; only then (or when a huge finite float32
    overflowed it) the exact element-wise check decides."""
    flat = arr.reshape(-1)
    if flat.dtype != np.float32 and flat.dtype != np.float64:
        flat = flat.astype(np.float32)   # float16: its largest finite value squared still fits
    return math.isfinite(float(np.dot(flat, flat))) or bool(np.isfinite(arr).all())


def _short(value: Any, limit: int = 60) -> str:
    """repr() of a value from the wire, cut to `limit` characters: a hostile value never floods a log line (nor
    takes long to format: codec.wire_repr looks at a few elements of a few levels only)."""
    return wire_repr(value, limit)


def _short_str(value: Any, limit: int = 500) -> str:
    """An optional free-text field: a str, cut to `limit` characters; anything else reads as empty."""
    return value[:limit] if isinstance(value, str) else ""


def _require_map(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DecodeError(f"{what}: expected a map, got {type(raw).__name__}")
    return raw


def _optional_int(m: dict[str, Any], key: str, what: str) -> int:
    """An optional int field: missing or nil reads as 0; anything but an int is a DecodeError."""
    if m.get(key) is None:
        return 0
    return _get(m, key, int, what)


def _get_number(m: dict[str, Any], key: str, what: str) -> int | float:
    """A required int or float that may be NaN or infinite (a diverged model's loss is still reported)."""
    if key not in m:
        raise DecodeError(f"{what}: missing field {key!r}")
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError(f"{what}: field {key!r} has type {type(value).__name__}")
    return value


def _get(m: dict[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    if key not in m:
        raise DecodeError(f"{what}: missing field {key!r}")
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise DecodeError(f"{what}: field {key!r} has type {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError(f"{what}: field {key!r} is not finite")
    return value


# The site relay's messages live in their own module and register themselves: import it last (it imports this one).
from federation.protocol import relay_messages as _relay_messages  # noqa: E402,F401
