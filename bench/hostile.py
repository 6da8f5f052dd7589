"""Hostile-input benchmark: a real Mosquitto, coordinator and 2 honest edge clients (Fashion-MNIST), plus an attacker
process that sends a corpus of hostile payloads, class by class, to the coordinator's topics; clean vs attacked.

    .venv/bin/python bench/hostile.py --quick                   # smaller corpus and data: a few minutes
    .venv/bin/python bench/hostile.py                           # the full corpus (16 MB bombs, 500 x 1 MB chunks)
    .venv/bin/python bench/hostile.py --classes malformed,flood # some classes only (--list shows them)

Runs: one clean federation, then one attacked federation for the payload classes together (each class under its own
sender id, so the coordinator's log attributes every rejection) and one per forgery class (forged offline statuses,
a forged global model, a forged run_end: they change what the honest clients do, so they run alone). --isolate gives
every class its own run. The attacker starts when round --attack-round's model is published.

Reported against the targets: coordinator peak RSS (VmHWM) at most +100 MB over the clean run, round time within 2x
of clean, coordinator log at most 1 MB for the full corpus, 0 honest updates lost. Markdown on stdout, JSON in
--out/hostile.json. `python bench/hostile.py attack ...` is the attacker process itself."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from federated_run import print_table, write_results

log = logging.getLogger("hostile")
NAME = "hostile"
PREFIX = "fedmq"
HONEST = ("honest-1", "honest-2")
TARGET_RSS_MB = 100.0
TARGET_ROUND_RATIO = 2.0
TARGET_LOG_BYTES = 1_000_000
Item = tuple[str, bytes, bool]   # topic, payload, retained


# ---- the corpus ---------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What the attacker knows when it strikes: the run, the round's real model, the honest ids, the scale."""

    run: str
    model: Any                  # federation.protocol.messages.GlobalModel
    honest: tuple[str, ...]
    quick: bool

    def topic(self, *levels: str) -> str:
        return "/".join((PREFIX, self.run, *levels))

    def update(self, sender: str, **changes: Any) -> Any:
        import numpy as np

        from federation.protocol.messages import Update

        fields: dict[str, Any] = dict(run=self.run, round=self.model.round, sender=sender, num_examples=100,
                                      metrics={"train_time_s": 0.1},
                                      tensors=[(n, np.array(w)) for n, w in self.model.tensors])
        fields.update(changes)
        return Update(**fields)

    def update_dict(self, sender: str) -> dict[str, Any]:
        import msgpack

        return msgpack.unpackb(self.update(sender).encode(), raw=False)


def _pack(obj: Any) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True)


def _array_of_empty_arrays(n: int) -> bytes:
    """msgpack: an array32 of n empty arrays (1 byte each on the wire, one Python list each once decoded)."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def _with_raw_field(fields: dict[str, Any], key: str, raw_value: bytes) -> bytes:
    """A msgpack map of `fields` plus `key` whose value is the already-encoded `raw_value` (no Python copy)."""
    body = b"".join(_pack(k) + _pack(v) for k, v in fields.items())
    n = len(fields) + 1
    header = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return header + body + _pack(key) + raw_value


def c_malformed(ctx: Context) -> Iterator[Item]:
    sender = "hx-malformed"
    valid = ctx.update(sender).encode()
    topic = ctx.topic("update", sender)
    for payload in (b"\xc1 this is not msgpack", b"\x00", valid[: len(valid) // 2], _pack(42), _pack([1, 2, 3]),
                    _pack("update"), _pack({"type": "update"}), b"\x91" * 20_000 + b"\xc0", b"\xdf\xff\xff\xff\xff"):
        yield topic, payload, False


def c_wrong_types(ctx: Context) -> Iterator[Item]:
    sender = "hx-wrong-types"
    topic = ctx.topic("update", sender)
    for key, value in (("round", "1"), ("num_examples", "100"), ("num_examples", 1.5), ("sender", 7),
                       ("tensors", {}), ("tensors", [1, 2]), ("metrics", [1]), ("run", None), ("type", 5),
                       ("type", []), ("sent_at", "now"), ("version", True)):
        fields = ctx.update_dict(sender)
        fields[key] = value
        yield topic, _pack(fields), False
    fields = ctx.update_dict(sender)
    fields["tensors"][0]["shape"] = "abc"
    yield topic, _pack(fields), False
    fields = ctx.update_dict(sender)
    fields["tensors"][0]["data"] = 12345
    yield topic, _pack(fields), False


def c_wrong_shapes(ctx: Context) -> Iterator[Item]:
    import numpy as np

    sender = "hx-wrong-shapes"
    topic = ctx.topic("update", sender)
    weights = [(n, np.array(w)) for n, w in ctx.model.tensors]
    variants = [
        [(n, w.reshape(-1)) if i == 0 else (n, w) for i, (n, w) in enumerate(weights)],          # flattened
        [(n, w.astype(np.float64)) for n, w in weights],                                           # float64
        [(n, w.astype(np.float16)) for n, w in weights],                                           # float16
        [(n, (w * 0).astype(np.int8)) for n, w in weights],                                        # int8
        weights[:-1],                                                                              # one missing
        [*weights, ("extra/kernel", np.zeros((3, 3), np.float32))],                                # one extra
        [(f"renamed/{i}", w) for i, (_, w) in enumerate(weights)],                                 # wrong names
    ]
    for tensors in variants:
        yield topic, ctx.update(sender, tensors=tensors).encode(), False
    for mutate in ("half_data", "negative_dim", "huge_shape", "bad_dtype"):
        fields = ctx.update_dict(sender)
        t = fields["tensors"][0]
        if mutate == "half_data":
            t["data"] = t["data"][: len(t["data"]) // 2]
        elif mutate == "negative_dim":
            t["shape"] = [-1, *t["shape"][1:]]
        elif mutate == "huge_shape":
            t["shape"], t["data"] = [2**31, 2**31], b"\x00" * 16
        else:
            t["dtype"] = "object"
        yield topic, _pack(fields), False


def c_nan_tensors(ctx: Context) -> Iterator[Item]:
    import numpy as np

    sender = "hx-nan"
    topic = ctx.topic("update", sender)
    for value in (np.nan, np.inf, -np.inf, "all_nan"):
        tensors = [(n, np.array(w, dtype=np.float32)) for n, w in ctx.model.tensors]
        if value == "all_nan":
            tensors = [(n, np.full_like(w, np.nan)) for n, w in tensors]
        else:
            tensors[-1][1].flat[0] = value
        yield topic, ctx.update(sender, tensors=tensors).encode(), False


def _bomb(ctx: Context, sender: str) -> Item:
    n = (1 if ctx.quick else 16) * 1024 * 1024
    return ctx.topic("update", sender), _with_raw_field(ctx.update_dict(sender), "extra",
                                                        _array_of_empty_arrays(n)), False


def c_container_bomb(ctx: Context) -> Iterator[Item]:
    yield _bomb(ctx, "hx-bomb")


def c_nil_version(ctx: Context) -> Iterator[Item]:
    sender = "hx-nil-version"
    fields = ctx.update_dict(sender)
    del fields["version"]
    n = 200_000 if ctx.quick else 2_000_000
    yield ctx.topic("update", sender), _with_raw_field(fields, "version", b"\xdd" + n.to_bytes(4, "big") +
                                                       b"\xc0" * n), False


def c_flood(ctx: Context) -> Iterator[Item]:
    from federation.protocol.messages import Update

    sender = "hx-flood"
    topic = ctx.topic("update", sender)
    yield _bomb(ctx, sender)
    for i in range(2_000 if ctx.quick else 20_000):
        yield topic, Update(run=ctx.run, round=10**6 + i, sender=sender, num_examples=1, metrics={},
                            tensors=[]).encode(), False


def c_orphan_chunks(ctx: Context) -> Iterator[Item]:
    from federation.protocol.messages import ModelChunk

    sender = "hx-orphans"
    n = 1_600 if ctx.quick else 16_000
    transfer = hashlib.sha256(b"never sent").hexdigest()
    sha = hashlib.sha256(b"x").hexdigest()
    for i in range(n):
        yield ctx.topic("update", sender, "chunk", str(i)), ModelChunk(
            run=ctx.run, round=ctx.model.round, sender=sender, transfer=transfer, index=i, count=n + 1, sha256=sha,
            data=b"x").encode(), False


def c_orphan_topics(ctx: Context) -> Iterator[Item]:
    from federation.protocol.messages import ModelChunk

    n = 50 if ctx.quick else 500
    data = os.urandom(1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    for k in range(n):
        sender = f"hx-big-{k}"
        yield ctx.topic("update", sender, "chunk", "0"), ModelChunk(
            run=ctx.run, round=ctx.model.round, sender=sender, transfer=hashlib.sha256(f"t{k}".encode()).hexdigest(),
            index=0, count=2, sha256=sha, data=data).encode(), False


# Outside [A-Za-z0-9_.-] (or too long, or not starting with a letter or digit) but still valid MQTT topic levels:
# Mosquitto disconnects a client whose topic has control characters, + or #, so those never reach the coordinator.
BAD_IDS = ("a b", "x" * 65, ".hidden", "-dash", "ünïcode", "..", "", "semi;colon", "quote'\"", "back\\slash")


def c_bad_ids(ctx: Context) -> Iterator[Item]:
    from federation.protocol.messages import ClientStatus

    for bad in BAD_IDS:
        yield ctx.topic("client", bad, "status"), ClientStatus(run=ctx.run, round=0, sender=bad or "empty",
                                                               status="online", num_examples=100).encode(), True
        yield ctx.topic("update", bad), ctx.update(bad or "empty").encode(), False


def c_bad_metrics(ctx: Context) -> Iterator[Item]:
    for sender, metrics in (("hx-metrics-nan", {"loss": float("nan"), "accuracy": float("nan"),
                                                "train_time_s": float("nan")}),
                            ("hx-metrics-big", {"loss": 1e308, "accuracy": -1e308, "train_time_s": 1e308,
                                                "m" * 1000: float("inf")})):
        yield ctx.topic("update", sender), ctx.update(sender, metrics=metrics, num_examples=1).encode(), False


def c_forged_offline(ctx: Context) -> Iterator[Item]:
    from federation.protocol.messages import ClientStatus

    for honest in ctx.honest:
        yield ctx.topic("client", honest, "status"), ClientStatus(run=ctx.run, round=0, sender=honest,
                                                                  status="offline").encode(), True


def c_forged_model(ctx: Context) -> Iterator[Item]:
    from federation.protocol.messages import GlobalModel, ModelInfo

    m = ctx.model
    wrong = ModelInfo(m.model.name, (32, 32, 3), m.model.num_classes)
    yield ctx.topic("model", "global"), GlobalModel(run=ctx.run, round=m.round + 1, sender="coordinator", model=wrong,
                                                    train=m.train, tensors=m.tensors,
                                                    total_rounds=m.total_rounds).encode(), True


def c_forged_run_end(ctx: Context) -> Iterator[Item]:
    from federation.protocol.messages import RunEnd

    yield ctx.topic("end"), RunEnd(run=ctx.run, round=ctx.model.round, sender="coordinator", reason="completed",
                                   test_accuracy=0.99, detail="forged").encode(), True


@dataclass(frozen=True)
class AttackClass:
    name: str
    build: Callable[[Context], Iterator[Item]]
    description: str
    forgery: bool = False       # aimed at the honest clients: runs alone unless --together


CLASSES: dict[str, AttackClass] = {c.name: c for c in (
    AttackClass("malformed", c_malformed, "not msgpack, truncated, scalars, 20,000-deep nesting, a map claiming 4 G entries"),
    AttackClass("wrong_types", c_wrong_types, "round/num_examples/sender/tensors/metrics/type of the wrong type"),
    AttackClass("wrong_shapes", c_wrong_shapes, "flattened, float64/16, int8, missing/extra/renamed tensors, short data, "
                                                "negative or 2^31 x 2^31 shapes, dtype object"),
    AttackClass("nan_tensors", c_nan_tensors, "NaN, +Inf, -Inf, all NaN"),
    AttackClass("container_bomb", c_container_bomb, "valid update + an extra field of 16 M empty msgpack arrays (16 MB)"),
    AttackClass("nil_version", c_nil_version, "`version` = a list of 2 million nils (log amplification)"),
    AttackClass("flood", c_flood, "a container bomb, then 20,000 tiny updates for rounds 10^6 + i"),
    AttackClass("orphan_chunks", c_orphan_chunks, "16,000 1-byte chunks of a transfer that never completes, one topic"),
    AttackClass("orphan_topics", c_orphan_topics, "500 topics with one 1 MB chunk each, never completed"),
    AttackClass("bad_ids", c_bad_ids, "retained online statuses and updates from ids outside [A-Za-z0-9_.-]"),
    AttackClass("bad_metrics", c_bad_metrics, "otherwise valid updates with NaN / 1e308 metrics"),
    AttackClass("forged_offline", c_forged_offline, "retained `offline` statuses in the honest clients' names",
                forgery=True),
    AttackClass("forged_model", c_forged_model, "a retained global model for the next round with a (32, 32, 3) input",
                forgery=True),
    AttackClass("forged_run_end", c_forged_run_end, "a retained run_end 'completed' (the open profile has no logins)",
                forgery=True),
)}


def class_senders(ctx_run: str, name: str, quick: bool) -> set[str]:
    """The client ids (topic levels) a class sends under, to attribute the coordinator's log lines."""
    if name == "bad_ids":
        return set(BAD_IDS)
    if name == "orphan_topics":
        return {f"hx-big-{k}" for k in range(50 if quick else 500)}
    if name == "bad_metrics":
        return {"hx-metrics-nan", "hx-metrics-big"}
    if name.startswith("forged_"):
        return set()
    return {{"malformed": "hx-malformed", "wrong_types": "hx-wrong-types", "wrong_shapes": "hx-wrong-shapes",
             "nan_tensors": "hx-nan", "container_bomb": "hx-bomb", "nil_version": "hx-nil-version",
             "flood": "hx-flood", "orphan_chunks": "hx-orphans"}[name]}


# ---- the attacker process -------------------------------------------------------------------------------------------


def attack_main(argv: list[str]) -> int:
    """`python bench/hostile.py attack`: wait for round N's model, send the classes, write what was sent as JSON."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from federation.protocol.messages import GlobalModel, decode_message

    p = argparse.ArgumentParser(prog="python bench/hostile.py attack", allow_abbrev=False)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--classes", required=True)
    p.add_argument("--honest", default=",".join(HONEST))
    p.add_argument("--attack-round", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--report", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model: list[GlobalModel] = []
    ready = threading.Event()
    connected = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload or ready.is_set():
            return
        try:
            message = decode_message(msg.payload)
        except Exception:  # someone else's junk on the model topic
            return
        if isinstance(message, GlobalModel) and message.round >= args.attack_round:
            model.append(message)
            ready.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hostile-attacker-{os.getpid()}")
    client.on_message = on_message
    client.on_connect = lambda c, *_: (c.subscribe(f"{PREFIX}/{args.run}/model/global", qos=1), connected.set())
    client.on_disconnect = lambda *_: connected.clear()
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    ready.wait()
    ctx = Context(args.run, model[0], tuple(args.honest.split(",")), args.quick)
    log.info("round %d's model seen: attacking with %s", ctx.model.round, args.classes)
    sent: list[dict[str, Any]] = []
    for name in args.classes.split(","):
        started = time.monotonic()
        count = size = errors = 0
        pending: list[mqtt.MQTTMessageInfo] = []
        for topic, payload, retain in CLASSES[name].build(ctx):
            if not connected.wait(30):
                log.error("%s: not connected for 30 s; skipping the rest of this class", name)
                break
            info = client.publish(topic, payload, qos=1, retain=retain)
            count, size = count + 1, size + len(payload)
            pending.append(info)
            if len(pending) >= 200 or len(payload) >= 256 * 1024:  # bound what paho holds in memory
                errors += _drain(pending)
        errors += _drain(pending)
        took = time.monotonic() - started
        sent.append({"class": name, "count": count, "bytes": size, "send_s": round(took, 2), "errors": errors})
        log.info("%s: %d messages, %.1f MB in %.1f s (%d not acknowledged)", name, count, size / 1e6, took, errors)
        args.report.write_text(json.dumps({"round": ctx.model.round, "sent": sent}, indent=2) + "\n")  # so far
    client.disconnect()
    client.loop_stop()
    return 0


def _drain(pending: list[Any]) -> int:
    errors = 0
    for info in pending:
        try:
            info.wait_for_publish(30)
            errors += not info.is_published()
        except (RuntimeError, ValueError):
            errors += 1
    pending.clear()
    return errors


# ---- one federation, measured ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    name: str
    classes: list[str]
    rounds: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    coordinator_exit: int | None = None
    client_exits: dict[str, int | None] = field(default_factory=dict)
    timed_out: bool = False
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    broker_peak_rss_mb: float = 0.0
    log_bytes: int = 0
    log_path: str = ""
    sent: list[dict[str, Any]] = field(default_factory=list)
    attributed: dict[str, dict[str, int]] = field(default_factory=dict)   # class -> outcome -> count
    honest_offline_marks: int = 0
    summarized: int = 0         # messages the coordinator's log only counts in "dropped N more" summaries

    @property
    def round_times(self) -> list[float]:
        return [float(m["round_time_s"]) for m in self.metrics]

    @property
    def accuracy(self) -> float | None:
        return float(self.metrics[-1]["test_accuracy"]) if self.metrics else None

    @property
    def rejected(self) -> Counter[str]:
        """metrics.jsonl's `rejected` and (newer coordinators) `ignored` counts, summed over the rounds."""
        total: Counter[str] = Counter()
        for m in self.metrics:
            total.update(m.get("rejected") or {})
            total.update({f"ignored {k}": v for k, v in (m.get("ignored") or {}).items()})
        return total

    def honest_lost(self) -> int:
        by_round = {m["round"]: set(m.get("client_ids", [])) for m in self.metrics}
        return sum(len(set(HONEST) - by_round.get(r, set())) for r in range(1, self.rounds + 1))

    def foreign_accepted(self) -> list[str]:
        return sorted({c for m in self.metrics for c in m.get("client_ids", []) if c not in HONEST})


def _vm_hwm_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_one(name: str, classes: list[str], args: argparse.Namespace) -> RunResult:
    from demo.local_federation import LocalFederation

    out = args.out.resolve() / NAME / name
    if out.exists():
        import shutil

        shutil.rmtree(out)
    result = RunResult(name, classes, args.rounds)
    fed = LocalFederation(out, run_name=name.replace("+", "-"))
    overrides = {"training.rounds": args.rounds, "quorum.min_clients": 2, "quorum.round_deadline_s": args.deadline,
                 "evaluation.max_examples": args.eval_examples, "deploy.enabled": "false",
                 "export.tflite": ["float32"]}
    report = out / "attacker.json"
    started = time.monotonic()
    try:
        fed.start_broker()
        coordinator = fed.start_coordinator(overrides)
        for k, honest in enumerate(HONEST, start=1):
            fed.start_client(honest, ["--dataset", "fashion_mnist", "--max-examples", str(args.examples),
                                      "--partition", f"{k}/{len(HONEST)}"])
        if classes:
            fed.spawn("attacker", [sys.executable, str(Path(__file__).resolve()), "attack", "--port", str(fed.port),
                                   "--run", fed.run_name, "--classes", ",".join(classes), "--attack-round",
                                   str(args.attack_round), "--report", str(report), *(["--quick"] if args.quick else [])])
        deadline = started + args.timeout
        broker_pid = fed.broker.pid if fed.broker else None
        while coordinator.popen.poll() is None and time.monotonic() < deadline:
            result.peak_rss_mb = max(result.peak_rss_mb, _vm_hwm_mb(coordinator.popen.pid))
            result.broker_peak_rss_mb = max(result.broker_peak_rss_mb, _vm_hwm_mb(broker_pid))
            time.sleep(0.5)
        result.timed_out = coordinator.popen.poll() is None
        result.wall_s = time.monotonic() - started
        grace = time.monotonic() + 30
        for proc_name, proc in fed.procs.items():
            if proc_name != "coordinator":
                while proc.popen.poll() is None and time.monotonic() < grace:
                    time.sleep(0.2)
    finally:
        fed.stop()
    result.coordinator_exit = fed.procs["coordinator"].popen.returncode
    result.client_exits = {h: fed.procs[h].popen.returncode for h in HONEST}
    metrics = fed.run_dir / "metrics.jsonl"
    if metrics.is_file():
        result.metrics = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    log_path = fed.procs["coordinator"].log_path
    result.log_bytes, result.log_path = log_path.stat().st_size, str(log_path)
    if report.is_file():
        result.sent = json.loads(report.read_text())["sent"]
    summarized = [0]
    result.attributed, result.honest_offline_marks = attribute(log_path, classes, fed.run_name, args.quick,
                                                               summarized)
    result.summarized = summarized[0]
    return result


# The coordinator's log lines, before and after summarized drop logging (coordinator/drops.py).
_REJECTED = re.compile(r"(rejected|ignored) (?:update|a message) from (.*?) \((\w+)\)")
_SUMMARY = re.compile(r"dropped (\d+) more messages in the last")
_REJECTED_STATUS = re.compile(r"rejected status on \S*?/client/(.*?)/status")
_ONLINE = re.compile(r"client (.*?) online \(")
_OFFLINE = re.compile(r"client (.*?) offline$")
_ACCEPTED = re.compile(r"round \d+: update \d+/\d+ from (.*?) \(")
_UNEXPECTED = re.compile(r"ignoring a message on unexpected topic (\S+)")


def attribute(log_path: Path, classes: list[str], run: str, quick: bool,
              summarized: list[int]) -> tuple[dict[str, dict[str, int]], int]:
    """Per class, what the coordinator's log says happened to its messages (by sender id); and how often an honest
    client was marked offline. `summarized[0]` gets the messages only counted in "dropped N more" summary lines.
    Reads the log line by line, each line cut to 4 kB (a hostile line can be huge)."""
    owner = {sender: name for name in classes for sender in class_senders(run, name, quick)}
    out: dict[str, Counter[str]] = {name: Counter() for name in classes}
    offline = 0
    with log_path.open("rb") as fh:
        for raw in fh:
            line = raw[:4096].decode("utf-8", errors="replace").rstrip("\n")
            match = _REJECTED.search(line)
            if match and match.group(2) in owner:
                out[owner[match.group(2)]][f"{match.group(1)} {match.group(3)}"] += 1
                continue
            match = _SUMMARY.search(line)
            if match:
                summarized[0] += int(match.group(1))
                continue
            for pattern, outcome in ((_REJECTED_STATUS, "status rejected"), (_ACCEPTED, "UPDATE ACCEPTED"),
                                     (_ONLINE, "COUNTED ONLINE")):
                match = pattern.search(line)
                if match and match.group(1) in owner:
                    out[owner[match.group(1)]][outcome] += 1
                    break
            else:
                match = _OFFLINE.search(line)
                if match and match.group(1) in HONEST:
                    offline += 1
                match = _UNEXPECTED.search(line)
                if match and "bad_ids" in out:
                    out["bad_ids"]["ignored (unexpected topic)"] += 1
    return {name: dict(c) for name, c in out.items()}, offline


# ---- report ---------------------------------------------------------------------------------------------------------


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def report(clean: RunResult, attacked: list[RunResult], args: argparse.Namespace) -> bool:
    print(f"\n### Hostile inputs: 2 honest clients x {args.examples} Fashion-MNIST examples, {args.rounds} rounds, "
          f"{'quick' if args.quick else 'full'} corpus, attack in round {args.attack_round}\n")
    print(f"Load average at the end: {Path('/proc/loadavg').read_text().strip()}; clean run: peak RSS "
          f"{clean.peak_rss_mb:.0f} MB, round times {', '.join(f'{t:.1f}' for t in clean.round_times)} s, log "
          f"{clean.log_bytes / 1e3:.1f} kB, accuracy {clean.accuracy}\n")
    clean_round = max(clean.round_times, default=0.0)
    rows = []
    for run in attacked:
        sent = {s["class"]: s for s in run.sent}
        for name in run.classes:
            s = sent.get(name, {})
            outcome = ", ".join(f"{k} x{v}" for k, v in sorted(run.attributed.get(name, {}).items(),
                                                                key=lambda kv: -kv[1]))
            if name.startswith("forged_"):
                outcome = forgery_outcome(name, run)
            elif s and sum(run.attributed.get(name, {}).values()) < s.get("count", 0):
                outcome += (f"{'; ' if outcome else ''}no line of its own x"
                            f"{s['count'] - sum(run.attributed[name].values())}")
            rows.append([name, s.get("count", "not sent"), f"{s.get('bytes', 0) / 1e6:.1f}", outcome or "-",
                         run.name])
    print_table(["class", "count", "MB sent", "outcome (coordinator log, by sender id)", "run"], rows, align="lrrll")
    print("\n'no line of its own': never reached the coordinator (Mosquitto drops what exceeds a subscriber's "
          "max_queued_messages), ignored silently (orphan chunks wait for their manifest), or only counted in a "
          "'dropped N more messages' summary line:", ", ".join(f"{r.name} {r.summarized}" for r in attacked), "\n")
    run_rows = []
    passed = True
    for run in [clean, *attacked]:
        lost = run.honest_lost()
        worst = max(run.round_times, default=0.0)
        rss_delta = run.peak_rss_mb - clean.peak_rss_mb
        ok = run is clean or (rss_delta <= TARGET_RSS_MB and (not clean_round or worst <= TARGET_ROUND_RATIO *
                              clean_round) and lost == 0 and not run.timed_out and run.log_bytes <= TARGET_LOG_BYTES)
        passed &= ok
        status = "timed out" if run.timed_out else f"exit {run.coordinator_exit}"
        run_rows.append([
            run.name, f"{len(run.metrics)}/{run.rounds} ({status})",
            f"{run.peak_rss_mb:.0f}" + ("" if run is clean else f" ({rss_delta:+.0f})"),
            f"{worst:.1f}" + ("" if run is clean else f" ({_ratio(worst, clean_round)})"),
            f"{run.log_bytes / 1e3:.1f}", lost,
            ", ".join(f"{k} x{v}" for k, v in sorted(run.rejected.items())) or "-",
            ", ".join(run.foreign_accepted()) or "-",
            f"{run.accuracy:.4f}" if run.accuracy is not None else "-",
            "" if run is clean else ("yes" if ok else "NO"),
        ])
    print_table(["run", "rounds", "coordinator peak RSS MB (vs clean)", "slowest round s (vs clean)",
                 "coordinator log kB", "honest updates lost", "rejected (metrics.jsonl)", "foreign updates aggregated",
                 "final accuracy", "meets targets"], run_rows, align="llrrrrllrl")
    print(f"\nTargets: peak RSS <= clean + {TARGET_RSS_MB:.0f} MB, slowest round <= {TARGET_ROUND_RATIO:g}x clean, "
          f"log <= {TARGET_LOG_BYTES / 1e6:g} MB, 0 honest updates lost, no timeout.")
    return passed


def forgery_outcome(name: str, run: RunResult) -> str:
    exits = ", ".join(f"{h} exit {c}" for h, c in run.client_exits.items())
    parts = [f"honest marked offline x{run.honest_offline_marks}"] if run.honest_offline_marks else []
    parts.append(f"{len(run.metrics)}/{run.rounds} rounds")
    parts.append(exits)
    return "; ".join(parts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/hostile.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="all", help="comma-separated classes (default: all; --list shows them)")
    p.add_argument("--list", action="store_true", help="list the classes and exit")
    p.add_argument("--quick", action="store_true",
                   help="a tenth of the corpus sizes and less data (1 MB bombs, 2,000 floods, 50 chunk topics)")
    p.add_argument("--isolate", action="store_true", help="one attacked run per class")
    p.add_argument("--together", action="store_true", help="one attacked run for every class, forgeries included")
    p.add_argument("--rounds", type=int, default=None, help="rounds per run (default 3; --quick 2)")
    p.add_argument("--examples", type=int, default=None, help="training examples per honest client "
                                                              "(default 3000; --quick 1000)")
    p.add_argument("--eval-examples", type=int, default=None, help="evaluation.max_examples (default 2000; "
                                                                   "--quick 500)")
    p.add_argument("--attack-round", type=int, default=1, help="attack when this round's model is published")
    p.add_argument("--deadline", type=float, default=120.0, help="quorum.round_deadline_s (default 120)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run before it is stopped "
                                                               "(default 900; --quick 420)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.examples = args.examples or (1000 if args.quick else 3000)
    args.eval_examples = args.eval_examples or (500 if args.quick else 2000)
    args.timeout = args.timeout or (420.0 if args.quick else 900.0)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "attack":
        return attack_main(argv[1:])
    args = parse_args(argv)
    if args.list:
        for c in CLASSES.values():
            print(f"{c.name:16} {'(forgery) ' if c.forgery else ''}{c.description}")
        return 0
    chosen = list(CLASSES) if args.classes == "all" else [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CLASSES]
    if unknown:
        print(f"unknown classes {unknown}; known: {', '.join(CLASSES)}", file=sys.stderr)
        return 2
    if args.isolate:
        groups = [[c] for c in chosen]
    elif args.together:
        groups = [chosen]
    else:
        payloads = [c for c in chosen if not CLASSES[c].forgery]
        groups = ([payloads] if payloads else []) + [[c] for c in chosen if CLASSES[c].forgery]
    logging.basicConfig(level=logging.INFO, format="[bench] %(message)s", stream=sys.stderr)
    for signum in (signal.SIGTERM, signal.SIGINT):  # stop every process of the current run on the way out
        signal.signal(signum, lambda number, frame: sys.exit(128 + number))
    log.info("load average before: %s", Path("/proc/loadavg").read_text().strip())
    log.info("clean run: %d rounds, 2 honest clients x %d examples", args.rounds, args.examples)
    clean = run_one("clean", [], args)
    attacked = []
    for k, group in enumerate(groups, start=1):
        label = group[0] if len(group) == 1 else "payloads" if all(not CLASSES[c].forgery for c in group) else "all"
        log.info("attacked run %d/%d (%s): %s", k, len(groups), label, ", ".join(group))
        attacked.append(run_one(f"attacked-{label}", group, args))
    passed = report(clean, attacked, args)
    path = write_results(args.out.resolve() / f"{NAME}.json", {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "loadavg": Path("/proc/loadavg").read_text().strip(),
        "runs": [{**{k: v for k, v in vars(r).items() if k != "metrics"}, "round_times": r.round_times,
                  "honest_lost": r.honest_lost(), "rejected": dict(r.rejected), "accuracy": r.accuracy,
                  "foreign_accepted": r.foreign_accepted()} for r in [clean, *attacked]],
    })
    print(f"\nresults: {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
