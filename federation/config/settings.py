"""fedmq settings: typed dataclasses loaded from one TOML file (config/default.toml) and validated.

The coordinator uses all of it; edge clients read [broker] and [run]. Any key can be overridden as --section.key."""

from __future__ import annotations

import argparse
import difflib
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from federation.errors import FedmqError
from federation.protocol.deployed_model import TFLITE_VARIANTS


class ConfigError(FedmqError, ValueError):
    """A setting that is unknown, of the wrong type or out of range; the message names it."""


def _opt(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
         choices: tuple[Any, ...] | None = None) -> Any:
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunSettings:
    name: str = _opt("demo", "run id; appears in every topic and in the output folder")
    output_dir: str = _opt("runs", "folder for models, metrics and TFLite files (one sub-folder per run)")
    on_existing: str = _opt("resume", "when the run folder holds a checkpoint: resume it (refused if the settings"
                                      " or model differ), or set it aside and start a new run",
                            choices=("resume", "new"))


@dataclass(frozen=True)
class BrokerSettings:
    host: str = _opt("localhost", "MQTT broker: host, host:port, [ipv6]:port, or mqtt://, mqtts:// (TLS), ws://, wss:// "
                                  "URL; a port given here wins over port. A clustered broker: its nodes, comma-separated, tried in "
                                  "turn when a connection drops")
    port: int = _opt(1883, "MQTT broker port", lo=1, hi=65535)
    ws_port: int = _opt(9001, "the broker's MQTT-over-WebSockets port, for the live dashboard (0: none)",
                        lo=0, hi=65535)
    topic_prefix: str = _opt("fedmq", "first level(s) of every topic")
    mqtt_version: str = _opt("3.1.1", "MQTT protocol version", choices=("3.1.1", "5"))
    keepalive_s: int = _opt(30, "MQTT keepalive in seconds", lo=5, hi=3600)
    max_payload_mb: float = _opt(64.0, "reject received payloads larger than this", lo=0.01, hi=2048)
    chunk_bytes: int = _opt(0, "split published payloads larger than this into sha256-checked chunks, for brokers"
                               " that cap message sizes (0: never split; else at least 1024)", lo=0)
    inbox_messages: int = _opt(32, "coordinator: received messages held undecoded at most; more wait at the broker "
                                   "(MQTT 5: also the Receive Maximum it announces)", lo=1, hi=65535)
    inbox_mb: float = _opt(64.0, "coordinator: bytes of received messages held undecoded at most (MB)", lo=1.0,
                           hi=4096.0)
    tls_ca: str = _opt("", "CA certificate file: connect with TLS and verify the broker against it (empty: no TLS)")
    tls_cert: str = _opt("", "client certificate file for mutual TLS (needs tls_key)")
    tls_key: str = _opt("", "private key file of tls_cert")
    username: str = _opt("", "MQTT username (the secure broker's coordinator login is 'coordinator')")
    password_file: str = _opt("", "file holding the MQTT password (the password itself is never a setting)")


@dataclass(frozen=True)
class ModelSettings:
    name: str = _opt("small_cnn", "model builder from the registry (federation.learning.models)")
    path: str = _opt("", "your own model: a .keras file (architecture, initial weights, compiled or not); replaces "
                         "name")
    builder: str = _opt("", "your own model: a function package.module:function called with (input_shape, "
                            "outputs) that returns a keras.Model, compiled or not; replaces name")
    dataset: str = _opt("fashion_mnist", "evaluation dataset: fashion_mnist, mnist, cifar10, an image folder path, "
                                         "a .csv table or series (see [data]) or an .npz file")
    data_dir: str = _opt("", "where offline dataset files live (empty: Keras cache, then Debian's location)")
    image_size: list[int] = _opt([], "resize image-folder images to [height, width] (empty: keep)")
    seed: int = _opt(0, "seed for model initialisation", lo=0)


@dataclass(frozen=True)
class DataSettings:
    kind: str = _opt("table", "a CSV [model] dataset: one example per row (table), or windows of rows (series)",
                     choices=("table", "series"))
    label: str = _opt("", "label column of a CSV: classes, or the regression target (empty: the last column)")
    features: list[str] = _opt([], "feature columns in this order (empty: every other column, in file order)")
    scaling: str = _opt("none", "standard: scale each feature with the mean and std of the coordinator's training "
                                "rows (sent to devices)", choices=("none", "standard"))
    test_file: str = _opt("", "a separate test CSV or .npz file (empty: hold out test_fraction of the dataset)")
    test_fraction: float = _opt(0.2, "held-out share: random rows of a table (seeded), the last rows of a series",
                                lo=0.0, hi=0.9)
    seed: int = _opt(0, "seed of the held-out rows", lo=0)
    window: int = _opt(16, "series: rows per example", lo=1, hi=100000)
    stride: int = _opt(1, "series: rows between the starts of two windows", lo=1, hi=100000)
    target: str = _opt("last", "series: the label of the window's last row, or the label column's value "
                               "horizon rows after it (future)", choices=("last", "future"))
    horizon: int = _opt(0, "series, target future: how many rows after the window (>= 1)", lo=0, hi=100000)


@dataclass(frozen=True)
class TrainingSettings:
    rounds: int = _opt(5, "number of federated rounds", lo=1, hi=100000)
    local_epochs: int = _opt(1, "epochs each client trains per round", lo=1, hi=1000)
    batch_size: int = _opt(32, "client batch size", lo=1, hi=65536)
    learning_rate: float = _opt(0.001, "client learning rate", lo=1e-7, hi=10.0)
    optimizer: str = _opt("adam", "client optimizer", choices=("adam", "sgd"))
    proximal_mu: float = _opt(0.0, "FedProx: devices add mu/2 ||w - w_global||^2 to their local loss, keeping "
                                   "skewed devices near the global model (Flower's name; e.g. 0.01 to 1; 0: off)",
                              lo=0.0, hi=1000.0)


@dataclass(frozen=True)
class QuorumSettings:
    min_clients: int = _opt(2, "a round never closes with fewer updates than this", lo=1)
    fraction: float = _opt(1.0, "close as soon as this fraction of the round's cohort answered", lo=0.0, hi=1.0)
    round_deadline_s: float = _opt(600.0, "after this many seconds a round closes if it has min_clients", lo=0.1)
    on_no_quorum: str = _opt("wait", "at the deadline without quorum: keep waiting, or stop the run",
                             choices=("wait", "stop"))
    start_grace_s: float = _opt(2.0, "once min_clients are online before the first round (or after a restart), wait"
                                     " this long for more clients to announce themselves", lo=0.0, hi=3600)
    wait_for_clients_s: float = _opt(0.0, "before round 1, wait at most this long for min_clients to be online"
                                          " (0: forever)", lo=0.0)


@dataclass(frozen=True)
class SamplingSettings:
    fraction_train: float = _opt(1.0, "fraction of the online training clients asked to train each round (the "
                                      "round's cohort); 1.0: all of them", lo=1e-9, hi=1.0)
    min_train_clients: int = _opt(0, "ask at least this many clients each round (0: quorum.min_clients)", lo=0)
    max_train_clients: int = _opt(0, "ask at most this many clients each round (0: no cap), e.g. 50 of a fleet "
                                     "of 1,000", lo=0)
    min_available_clients: int = _opt(0, "start a round only when this many training clients are online "
                                         "(0: quorum.min_clients)", lo=0)
    seed: int = _opt(0, "seed of the cohort sample: the same seed, round and online clients give the same "
                        "cohort", lo=0)


@dataclass(frozen=True)
class AggregationSettings:
    rule: str = _opt("fedavg", "aggregation rule (coordinator.aggregation)",
                     choices=("fedavg", "median", "trimmed_mean", "multi_krum"))
    clip_norm: float = _opt(0.0, "clip each update's delta (update - global model) to this L2 norm before the rule "
                                 "(0: off)", lo=0.0)
    report_norms: bool = _opt(True, "report the median and largest update delta norm of every round (to choose "
                                    "clip_norm); false: no norm pass per update when clip_norm is 0 (for fleets)")
    trim_fraction: float = _opt(0.2, "trimmed_mean: fraction of values dropped at each end, per coordinate",
                                lo=0.0, hi=0.49)
    krum_byzantine: int = _opt(1, "multi_krum: f, the number of malicious updates tolerated (needs "
                                  "quorum.min_clients >= 2f + 3)", lo=0)
    krum_select: int = _opt(0, "multi_krum: m, how many best-scored updates are averaged (0: n - f)", lo=0)
    dp_noise_multiplier: float = _opt(0.0, "central differential privacy: Gaussian noise of std multiplier x "
                                           "clip_norm on the sum of clipped deltas (0: off; needs fedavg and "
                                           "clip_norm)", lo=0.0, hi=1000.0)
    dp_delta: float = _opt(1e-5, "the delta of the (epsilon, delta) privacy reported", lo=1e-12, hi=0.1)
    dp_total_clients: int = _opt(0, "population the round's clients are sampled from, for privacy amplification "
                                    "(0: every round may see every client, sampling rate 1)", lo=0)
    mode: str = _opt("sync", "sync: rounds wait for their cohort; async: buffered asynchronous aggregation (FedBuff): "
                             "devices train whatever version they have, the model steps every buffer_size updates",
                     choices=("sync", "async"))
    buffer_size: int = _opt(0, "async: updates per step of the global model, K (0: quorum.min_clients)", lo=0)
    max_staleness: int = _opt(5, "async: refuse updates trained on a version more than this many steps old (the "
                                 "coordinator keeps this many past versions in memory)", lo=0, hi=1000)
    staleness_weighting: str = _opt("polynomial", "async: how an update's weight falls with its staleness s: "
                                                  "polynomial (1 + s)^-staleness_exponent, or constant (1)",
                                    choices=("polynomial", "constant"))
    staleness_exponent: float = _opt(0.5, "async: the exponent a of the polynomial weighting (0.5: 1/sqrt(1 + s))",
                                     lo=0.0, hi=10.0)
    evaluate_every: int = _opt(1, "evaluate the global model every M rounds or async steps (and always at the end)",
                               lo=1)


@dataclass(frozen=True)
class ServerOptimizerSettings:
    name: str = _opt("none", "server-side optimizer applied to each round's aggregated delta (Flower's strategies): "
                             "none (the aggregate is the new model), fedavgm, fedadam, fedyogi, fedadagrad",
                     choices=("none", "fedavgm", "fedadam", "fedyogi", "fedadagrad"))
    eta: float = _opt(0.0, "server learning rate of fedadam, fedyogi, fedadagrad (0: Flower's default, 0.1, 0.01 "
                           "and 0.1)", lo=0.0, hi=100.0)
    eta_l: float = _opt(0.0, "the clients' learning rate (Flower's name; 0: [training] learning_rate)", lo=0.0,
                        hi=10.0)
    beta_1: float = _opt(0.9, "first-moment decay of fedadam and fedyogi", lo=0.0, hi=0.999999)
    beta_2: float = _opt(0.99, "second-moment decay of fedadam and fedyogi", lo=0.0, hi=0.999999)
    tau: float = _opt(0.0, "adaptivity of fedadam, fedyogi, fedadagrad (0: Flower's default, 1e-9, 1e-3, 1e-9)",
                      lo=0.0, hi=10.0)
    server_learning_rate: float = _opt(1.0, "fedavgm: server learning rate", lo=0.0, hi=100.0)
    server_momentum: float = _opt(0.0, "fedavgm: server momentum (e.g. 0.9)", lo=0.0, hi=0.999999)


@dataclass(frozen=True)
class CompressionSettings:
    uplink: str = _opt("float32", "how devices send updates: float32 (whole weights, raw), or deltas against the "
                                  "round's model as float16, int8 or topk (README \"Smaller updates\")",
                       choices=("float32", "float16", "int8", "topk"))
    downlink: str = _opt("float32", "how the global model goes out: float32 or float16 (devices train in float32 "
                                    "either way)", choices=("float32", "float16"))
    topk_fraction: float = _opt(0.01, "topk: the fraction of each tensor's delta sent (largest magnitudes); the "
                                      "rest stays on the device as its residual", lo=1e-6, hi=1.0)
    topk_values: str = _opt("float16", "topk: how the kept values are sent", choices=("float32", "float16", "int8"))
    int8_block: int = _opt(256, "int8: elements per block, each with its own scale and zero point (a tensor whose "
                                "size it does not divide is one block)", lo=1, hi=1 << 24)


@dataclass(frozen=True)
class EvaluationSettings:
    max_examples: int = _opt(0, "evaluate on the first N test examples (0: the whole test set)", lo=0)
    batch_size: int = _opt(256, "evaluation batch size", lo=1)


@dataclass(frozen=True)
class ExportSettings:
    tflite: list[str] = _opt(["float32"], "TFLite variants to export at the end: float32, dynamic, int8")
    representative_examples: int = _opt(200, "examples used to calibrate int8 quantization", lo=1)
    tflite_runtime_compat: bool = _opt(False, "export models that tflite-runtime 2.14 (numpy<2) can run: no "
                                              "per-channel quantization of dense layers in the dynamic variant")




@dataclass(frozen=True)
class DeploySettings:
    enabled: bool = _opt(True, "publish a TFLite model for inference-only devices (python -m edge_client serve)")
    variant: str = _opt("float32", "which TFLite variant to publish (exported even if not in export.tflite)",
                        choices=TFLITE_VARIANTS)
    every_k_rounds: int = _opt(0, "also publish every K rounds during the run (0: only at the end)", lo=0)
    chunk_bytes: int = _opt(262144, "models larger than this go as several chunk messages of this size",
                            lo=1024, hi=256 * 1024 * 1024)


@dataclass(frozen=True)
class RelaySettings:
    site: str = _opt("", "python -m coordinator relay: the site's name (one topic level, unique in the run)")
    upstream: str = _opt("", "relay: the central broker's address (any [broker] host form); its login and TLS files "
                             "are [broker]'s")
    local: str = _opt("localhost", "relay: the site broker's address, where the site's devices connect")
    send_after_s: float = _opt(60.0, "relay: send the site's partial this long after the round's model came, even "
                                     "if cohort members at the site are still training (later ones follow)",
                               lo=0.1, hi=86400)


@dataclass(frozen=True)
class Settings:
    run: RunSettings = field(default_factory=RunSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    quorum: QuorumSettings = field(default_factory=QuorumSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)
    server_optimizer: ServerOptimizerSettings = field(default_factory=ServerOptimizerSettings)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    relay: RelaySettings = field(default_factory=RelaySettings)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


SECTIONS = {f.name: typing.get_type_hints(Settings)[f.name] for f in fields(Settings)}


def load_settings(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read `path` (TOML) if given, apply `overrides` ({"section.key": value}), validate everything."""
    raw: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:  # a directory, no permission...
            raise ConfigError(f"config file {path} can't be read: {exc}") from None
    return _settings_from_raw(raw, overrides, source)


def settings_from_dict(values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings built in code, validated exactly like a TOML file: `values` maps sections to their keys
    ({"run": {"name": "demo"}, "training": {"rounds": 3}}), `overrides` "section.key" to a value; ConfigError for an
    unknown section or key, a wrong type or an out-of-range value. The defaults fill in everything not given."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"settings must be a dict of sections, got {type(values).__name__}")
    raw = {section: {k: _plain(v) for k, v in keys.items()} if isinstance(keys, dict) else keys
           for section, keys in (values or {}).items()}
    return _settings_from_raw(raw, {k: _plain(v) for k, v in (overrides or {}).items()}, "settings")


def _plain(value: Any) -> Any:
    """A value as TOML would give it: a path (pathlib.Path) as its str, a tuple as a list."""
    if isinstance(value, Path):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def _settings_from_raw(raw: dict[str, Any], overrides: dict[str, Any] | None, source: str) -> Settings:
    merged: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]{_suggest(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        merged[section] = dict(values)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        merged.setdefault(section, {})[key] = value
    sections = {}
    for section, cls in SECTIONS.items():
        sections[section] = _build_section(cls, section, merged.pop(section, {}), source)
    if merged:
        bad = next(iter(merged))
        raise ConfigError(f"unknown section [{bad}]{_suggest(bad, SECTIONS)}")
    settings = Settings(**sections)
    _check_cross_field(settings, source)
    return settings


def _build_section(cls: type, section: str, values: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{source}: [{section}] unknown key {key!r}{_suggest(key, known)}")
        kwargs[key] = _check_value(f"[{section}] {key}", value, hints[key], known[key].metadata, source)
    return cls(**kwargs)


def _check_value(name: str, value: Any, hint: Any, meta: Any, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list) or not all(_is_type(v, item_type) for v in value):
            raise ConfigError(f"{source}: {name} must be a list of {item_type.__name__}, got {value!r}")
        value = [float(v) if item_type is float else v for v in value]
    else:
        if not _is_type(value, hint):
            raise ConfigError(f"{source}: {name} must be {hint.__name__}, got {type(value).__name__} {value!r}")
        if hint is float:
            value = float(value)
            if math.isnan(value):  # NaN compares False with lo/hi and would pass the range check
                raise ConfigError(f"{source}: {name} = {value!r} is not a number")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{source}: {name} = {value!r} is out of range [{lo}, {hi}]")
    if choices is not None and value not in choices:
        raise ConfigError(f"{source}: {name} = {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _is_type(value: Any, hint: type) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_cross_field(s: Settings, source: str) -> None:
    from federation.protocol.topics import RunTopics

    try:
        RunTopics(s.broker.topic_prefix, s.run.name)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    from federation.transport.mqtt_link import BrokerAddress

    try:
        BrokerAddress.from_settings(s.broker)
    except ValueError as exc:
        raise ConfigError(f"{source}: [broker] host: {exc}") from None
    if 0 < s.broker.chunk_bytes < 1024:
        raise ConfigError(f"{source}: [broker] chunk_bytes = {s.broker.chunk_bytes} is too small (0, or at least 1024)")
    for variant in s.export.tflite:
        if variant not in TFLITE_VARIANTS:
            raise ConfigError(f"{source}: [export] tflite: unknown variant {variant!r}"
                              f" (choose from {', '.join(TFLITE_VARIANTS)})")
    given = [f"{key} = {value!r}" for key, value in (("path", s.model.path), ("builder", s.model.builder)) if value]
    if given and s.model.name != ModelSettings.name:
        given.insert(0, f"name = {s.model.name!r}")
    if len(given) > 1:
        raise ConfigError(f"{source}: [model] {' and '.join(given)}: give one model source, a .keras file (path), a "
                          "builder (package.module:function) or a registry name (name)")
    if s.model.builder and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", s.model.builder):
        raise ConfigError(f"{source}: [model] builder = {s.model.builder!r}: write it as package.module:function")
    if s.model.image_size and len(s.model.image_size) != 2:
        raise ConfigError(f"{source}: [model] image_size must be [height, width], got {s.model.image_size}")
    _check_sampling(s, source)
    _check_security(s, source)
    if problem := series_problem(s.data):
        raise ConfigError(f"{source}: [data] {problem}")


def series_problem(d: DataSettings) -> str:
    """Why [data]'s series keys don't fit together ("" when they do)."""
    if d.target == "future" and d.horizon < 1:
        return "target = \"future\" needs horizon >= 1 (rows after the window's last row)"
    if d.target == "last" and d.horizon:
        return f"horizon = {d.horizon} applies to target = \"future\" only; set target or horizon = 0"
    if d.kind == "table" and (d.target != "last"):
        return "target applies to kind = \"series\" only"
    return ""


def _check_sampling(s: Settings, source: str) -> None:
    q, p = s.quorum, s.sampling
    if p.max_train_clients and p.max_train_clients < q.min_clients:
        raise ConfigError(f"{source}: [sampling] max_train_clients = {p.max_train_clients} is below [quorum] "
                          f"min_clients = {q.min_clients}: no round could ever close; raise it or lower "
                          "min_clients")
    if p.max_train_clients and p.min_train_clients > p.max_train_clients:
        raise ConfigError(f"{source}: [sampling] min_train_clients = {p.min_train_clients} exceeds "
                          f"max_train_clients = {p.max_train_clients}")
    if p.min_train_clients and p.min_train_clients < q.min_clients:
        raise ConfigError(f"{source}: [sampling] min_train_clients = {p.min_train_clients} is below [quorum] "
                          f"min_clients = {q.min_clients}: a round needs at least that many updates; raise it "
                          "or set it to 0 (= min_clients)")
    if p.min_available_clients and p.min_available_clients < q.min_clients:
        raise ConfigError(f"{source}: [sampling] min_available_clients = {p.min_available_clients} is below "
                          f"[quorum] min_clients = {q.min_clients}; raise it or set it to 0 (= min_clients)")


def _check_security(s: Settings, source: str) -> None:
    b, a = s.broker, s.aggregation
    if problem := tls_problem(b.tls_cert, b.tls_key, b.tls_ca):
        raise ConfigError(f"{source}: [broker] {problem}")
    if bool(b.username) != bool(b.password_file):
        raise ConfigError(f"{source}: [broker] username and password_file go together")
    if a.rule == "multi_krum" and s.quorum.min_clients < krum_min_updates(a.krum_byzantine):
        raise ConfigError(f"{source}: [aggregation] multi_krum with krum_byzantine = {a.krum_byzantine} needs at "
                          f"least {krum_min_updates(a.krum_byzantine)} updates per round; set [quorum] min_clients "
                          f"to that (it is {s.quorum.min_clients})")
    if problem := dp_problem(a):
        raise ConfigError(f"{source}: [aggregation] {problem}")
    if a.mode == "async" and a.dp_noise_multiplier > 0:
        raise ConfigError(f"{source}: [aggregation] mode = \"async\" can't be combined with dp_noise_multiplier: the "
                          "privacy accounting assumes one update per client per round, and in async mode a device may "
                          "add a stale and a fresh update to the same step. Use mode = \"sync\" for central DP")
    if a.mode == "async" and s.sampling.fraction_train < 1.0:
        raise ConfigError(f"{source}: [aggregation] mode = \"async\" trains every online device; [sampling] "
                          f"fraction_train = {s.sampling.fraction_train:g} applies to sync rounds only: set it to 1.0")


def tls_problem(tls_cert: str, tls_key: str, tls_ca: str) -> str:
    """Why these TLS files can't make a connection ("" when they can): the one rule, checked when settings load
    and again by federation.transport.mqtt_link.configure_security (devices give these as flags)."""
    if bool(tls_cert) != bool(tls_key):
        return "a client certificate needs both tls_cert and tls_key (--tls-cert and --tls-key)"
    if tls_cert and not tls_ca:
        return "tls_cert needs tls_ca (--tls-ca) too: mutual TLS is TLS first"
    return ""


def krum_min_updates(byzantine: int) -> int:
    """The fewest updates Multi-Krum can score with `byzantine` attackers tolerated: 2f + 3 (Blanchard et al.)."""
    return 2 * byzantine + 3


def dp_problem(a: AggregationSettings) -> str:
    """Why these aggregation settings can't give central DP ("" when they can, or ask for none): the one rule,
    checked when the settings load and again by coordinator.aggregation.make_aggregator."""
    if a.dp_noise_multiplier > 0 and (a.rule != "fedavg" or a.clip_norm <= 0):
        return (f"dp_noise_multiplier needs rule = \"fedavg\" and clip_norm > 0 (the noise is calibrated to the "
                f"clipped sum); got rule = {a.rule!r}, clip_norm = {a.clip_norm:g}")
    return ""


def _suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def add_override_flags(parser: argparse.ArgumentParser) -> None:
    """Add one --section.key flag per setting; values are parsed by the setting's type."""
    group = parser.add_argument_group("settings (override the config file)")
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            hint = hints[f.name]
            kwargs: dict[str, Any] = {"dest": f"set:{section}.{f.name}", "default": argparse.SUPPRESS,
                                      "help": f.metadata.get("help", ""), "metavar": f.name.upper()}
            if typing.get_origin(hint) is list:
                (item_type,) = typing.get_args(hint)
                kwargs.update(nargs="*", type=item_type)
            else:
                kwargs["type"] = {bool: _parse_bool}.get(hint, hint)
            group.add_argument(f"--{section}.{f.name}", **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k[len("set:"):]: v for k, v in vars(args).items() if k.startswith("set:")}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """Return a copy with some fields of some sections replaced (used by tests and benchmarks)."""
    return replace(settings, **{name: replace(getattr(settings, name), **vals) for name, vals in sections.items()})
