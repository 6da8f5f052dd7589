"""The round engine: publishes the global model, collects and validates updates, closes rounds on
quorum, aggregates, evaluates, saves, and exports TFLite at the end of the run."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from coordinator.admission import Admission
from coordinator.aggregation import ClientResult, make_aggregator
from coordinator.checkpoint import CHECKPOINT_FILE, Checkpoint, check_resumable, load_checkpoint, run_fingerprint, \
    save_checkpoint
from coordinator.evaluation import Evaluation, evaluate_keras, evaluate_tflite, test_split
from coordinator import final_publish
from coordinator.deploy import Deployer
from coordinator.export import ACCURACY_BOUND_POINTS, export_tflite, write_labels
from coordinator.metrics import RoundMetrics, append_metrics, rewrite_metrics, round_metrics_message
from coordinator.progress import ROUND_LOG, RunProgress
from coordinator.cohort import SamplingRule
from coordinator.drops import DropLog
from coordinator.quorum import Decision, QuorumRule, RoundTracker
from federation.config.settings import Settings
from federation.protocol.codec import DecodeError, DecodeLimits, check_tensors, wire_repr
from federation.learning.datasets import Dataset, load_dataset
from federation.protocol.messages import (
    ClientStatus, CoordinatorState, GlobalModel, ModelInfo, RunEnd, TrainingPlan, Update, check_finite,
    Message, decode_message, weights_digest,
)
from federation.protocol.chunked_transfer import ChunkedReceiver, base_topic, chunk_topic, outgoing_messages
from federation.transport.inbox import Inbound, Inbox
from federation.learning.models import build_model, compile_model, named_weights, weight_specs
from federation.transport.mqtt_link import BrokerAddress, BrokerRefusedError, MqttLink
from federation.protocol.topics import RunTopics, check_level

log = logging.getLogger(__name__)

COORDINATOR_ID = "coordinator"
_POLL_S = 0.5
_UPDATE_SLACK_BYTES = 64 * 1024     # an update's msgpack framing, names and metrics on top of its tensor bytes
_INBOX_BYTES = 64 * 1024 * 1024     # undecoded payloads held at most; a full inbox slows the broker down
_STATUS_MAX_BYTES = 64 * 1024
_OWN_TOPIC_MEMORY = 16              # recent payloads per own topic, to tell our echo from a forgery


@dataclass
class RunResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    rounds_completed: int
    reason: str                                  # "completed" or "stopped"
    detail: str = ""
    keras_accuracy: float | None = None
    tflite: dict[str, dict] = field(default_factory=dict)
    deployed: dict | None = None                 # the model published for inference-only devices


class Coordinator:
    def __init__(self, settings: Settings, dataset: Dataset | None = None,
                 progress: RunProgress | None = None, client_id: str | None = None) -> None:
        self.settings = settings
        self.topics = RunTopics(settings.broker.topic_prefix, settings.run.name)
        self.run_dir = settings.run_dir
        self.max_payload = int(settings.broker.max_payload_mb * 1024 * 1024)
        self._dataset = dataset
        self.inbox = Inbox(_INBOX_BYTES)
        self._closing = False                  # set at the end of the run: incoming messages are no longer read
        self.online: dict[str, ClientStatus] = {}
        self.unfit: dict[str, str] = {}       # online clients that said why they can't train this run's model
        self.round = 0
        self.last_closed = 0
        self.phase = "starting"
        self.drops = DropLog()
        self.admission: Admission | None = None   # set in _prepare, from the model's size
        self._tracker: RoundTracker | None = None
        self._earlier_run: tuple[str, int] | None = None  # a finished/unwanted run in run_dir: (what, rounds)
        self._round_stats: dict = {}
        self._state_payload = self._state_message().encode()
        # The open round's model as published (maybe chunked); re-published after a reconnect.
        self._global_messages: list[tuple[str, bytes]] = []
        self._chunk_topics_used = 0
        self.receiver = ChunkedReceiver(self.max_payload)
        self._metrics_payload: bytes = b""  # the last round's metrics (retained), re-published likewise
        # What this coordinator published on its own retained topics: sha256 of recent payloads, to notice
        # messages there that it did not publish (the open profile has no logins) and re-publish its own.
        self._own: dict[str, list[bytes]] = {}
        self._own_current: dict[str, tuple[bytes, bool]] = {}
        self._forgery_fixed_at: dict[str, float] = {}
        self.progress = progress or RunProgress(settings.run.name, settings.training.rounds)
        self.aggregator = make_aggregator(settings.aggregation)
        q, p = settings.quorum, settings.sampling
        self.rule = QuorumRule(q.min_clients, q.fraction, q.round_deadline_s, q.on_no_quorum)
        self.sampling = SamplingRule(p.fraction_train, p.min_train_clients or q.min_clients, p.max_train_clients,
                                     p.min_available_clients or q.min_clients, p.seed)
        self.link = MqttLink(
            client_id=client_id or f"fedmq-coordinator-{settings.run.name}",
            address=BrokerAddress.from_settings(settings.broker),
            subscriptions=[(self.topics.updates_wildcard, 1), (chunk_topic(self.topics.updates_wildcard, "+"), 1),
                           (self.topics.statuses_wildcard, 1), (self.topics.global_model, 1),
                           (self.topics.run_end, 1), (self.topics.coordinator_state, 1)],
            on_message=self._on_message,
            will=(self.topics.coordinator_state, self._state_message("offline", "crashed").encode()),
            on_connected=self._on_connected,
        )

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """On paho's network thread: the cheap checks, then the bounded inbox."""
        admission = self.admission
        if admission is not None and topic.startswith(self.topics.base + "/update/"):
            client_id = self.topics.client_of(base_topic(topic)[0]) or topic
            if admission.admit(client_id, len(payload)) is not None:
                return  # counted by admission; logged and reported by the main thread
        elif len(payload) > max(_STATUS_MAX_BYTES, self.max_payload if topic == self.topics.global_model else 0):
            return
        item = Inbound(topic, payload, retained)
        while not self.inbox.put(item, timeout=1.0):  # full: hold the broker back (it queues for us)...
            if self._closing:                         # ...unless the run is over and nobody will read it
                return

    # ---- set-up -------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        s = self.settings
        if self._dataset is None:
            image_size = tuple(s.model.image_size) if s.model.image_size else None
            self._dataset = load_dataset(s.model.dataset, data_dir=s.model.data_dir or None, image_size=image_size)
        self.x_test, self.y_test = test_split(self._dataset, s.evaluation.max_examples)
        import keras

        keras.utils.set_random_seed(s.model.seed)
        self.model_info = ModelInfo(s.model.name, self._dataset.input_shape, self._dataset.num_classes,
                                    tuple(self._dataset.class_names))
        self.model = build_model(s.model.name, self.model_info.input_shape, self.model_info.num_classes)
        compile_model(self.model)
        self.specs = weight_specs(self.model)
        self.plan = TrainingPlan(s.training.local_epochs, s.training.batch_size, s.training.learning_rate,
                                 s.training.optimizer, s.broker.chunk_bytes)
        tensor_bytes = sum(math.prod(spec.shape) * np.dtype(spec.dtype).itemsize for spec in self.specs)
        self.max_update_bytes = min(self.max_payload, tensor_bytes + _UPDATE_SLACK_BYTES + 256 * len(self.specs))
        # One receiver for updates: whole ones and chunked ones, decoded within limits derived from the model,
        # with chunks held at most 2 updates' worth per device and max(64 MiB, 4 updates) in all.
        self.receiver = ChunkedReceiver(self.max_update_bytes, limits=DecodeLimits.for_model(self.specs),
                                        max_held_bytes=max(64 * 1024 * 1024, 4 * self.max_update_bytes))
        # An honest device sends one update per round (or its chunks, at least 1 KiB each) and may re-send it
        # after reconnects; many times that is a flood, dropped before it is queued or decoded.
        self.admission = Admission(max_message_bytes=self.max_update_bytes,
                                   max_messages=4 * (self.max_update_bytes // 1024 + 2),
                                   max_bytes=16 * self.max_update_bytes)
        self.fingerprint = run_fingerprint(s, self.specs)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.history: list[RoundMetrics] = []
        self.start_round = 1
        checkpoint = self._usable_checkpoint()
        if checkpoint is not None:
            self.model.set_weights(checkpoint.weights)
            self.history = checkpoint.metrics
            self.aggregator.resume([m.aggregation for m in self.history])  # e.g. DP: privacy already spent
            self.start_round = checkpoint.round + 1
            self.round = checkpoint.round
            last = checkpoint.metrics[-1]
            self.last_evaluation = Evaluation(last.test_loss, last.test_accuracy, len(self.y_test))
            log.info("resuming run %r after round %d (test accuracy %.4f) from %s", s.run.name, checkpoint.round,
                     last.test_accuracy, self.run_dir / CHECKPOINT_FILE)
        self.deployer = Deployer(s, self.link, self.topics, COORDINATOR_ID, self._dataset.class_names)

    def _usable_checkpoint(self) -> Checkpoint | None:
        """The checkpoint to resume, or None when the earlier run in the folder is finished or unwanted: that one is
        set aside by _claim_run_dir, once the new run really starts."""
        checkpoint = load_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        if checkpoint is None:
            return None
        finished = checkpoint.finished or checkpoint.round >= self.settings.training.rounds
        if self.settings.run.on_existing == "new" or finished:
            self._earlier_run = ("a finished" if finished else "an earlier", checkpoint.round)
            log.info("%s holds %s run of %d rounds; it is set aside when the new run's first round starts",
                     self.run_dir, *self._earlier_run)
            return None
        check_resumable(checkpoint, self.fingerprint, self.run_dir)
        return checkpoint

    def _claim_run_dir(self) -> None:
        """Just before the first round: set aside the earlier run (if any) and start writing into the run folder.
        Not sooner, so that a coordinator that never reaches the broker or its clients leaves the folder alone."""
        earlier, self._earlier_run = self._earlier_run, None
        if earlier is not None and self.run_dir.is_dir():
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = self.run_dir.with_name(f"{self.run_dir.name}.{stamp}")
            suffix = 1
            while aside.exists():
                suffix += 1
                aside = self.run_dir.with_name(f"{self.run_dir.name}.{stamp}-{suffix}")
            self.run_dir.rename(aside)
            log.info("%s holds %s run of %d rounds; moved it to %s and starting a new run", self.run_dir,
                     *earlier, aside)
        (self.run_dir / "models").mkdir(parents=True, exist_ok=True)
        write_labels(self.run_dir / "models", self._dataset.class_names)  # beside round_NNN.keras
        rewrite_metrics(self.metrics_path, self.history)
        (self.run_dir / "config.json").write_text(json.dumps(asdict(self.settings), indent=2))

    # ---- main loop ----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        self._prepare()
        s = self.settings
        log.info("run %r: %d rounds of %s on %s; results in %s", s.run.name, s.training.rounds, s.model.name,
                 self._dataset.name, self.run_dir)
        self.link.start()
        while not self.link.wait_connected(10):
            if self.link.refused:
                self.link.stop()
                raise BrokerRefusedError(f"the broker at {self.link.address} refused the coordinator's login: "
                                         f"{self.link.refused}")
            log.warning("still waiting for the MQTT broker at %s", self.link.address)
        self._publish_own(self.topics.run_end, b"")  # forget a previous run's end
        self._publish_metrics()  # this run's last round (when resuming), or nothing yet
        result = self._run_rounds()
        self._finish(result)
        return result

    def _run_rounds(self) -> RunResult:
        s = self.settings
        if not self._wait_for_clients(first=True):
            return RunResult(self.run_dir, 0, "stopped",
                             f"fewer than {self.sampling.min_available_clients} clients came online within "
                             f"{s.quorum.wait_for_clients_s:g} s")
        self._claim_run_dir()
        for r in range(self.start_round, s.training.rounds + 1):
            if r > self.start_round:
                self._wait_for_clients(first=False)
            stop_detail = self._run_round(r)
            if stop_detail:
                return RunResult(self.run_dir, r - 1, "stopped", stop_detail)
        return RunResult(self.run_dir, s.training.rounds, "completed")

    def trainable(self) -> set[str]:
        """Online training clients that have not said they can't train this run's model."""
        return {cid for cid in self.online if cid not in self.unfit}

    def _wait_for_clients(self, first: bool) -> bool:
        """Wait until min_available_clients can train; before round 1 (or after a restart) also a grace period
        for clients starting together. False if quorum.wait_for_clients_s passed first (round 1 only)."""
        need = self.sampling.min_available_clients
        limit = self.settings.quorum.wait_for_clients_s if first else 0
        started = last_log = time.monotonic()
        if len(self.trainable()) < need or first:
            self._set_phase("waiting_for_clients", f"need {need} online clients")
        while len(self.trainable()) < need:
            now = time.monotonic()
            if limit and now - started > limit:
                return False
            if now - last_log > 10:
                ready = sorted(self.trainable())
                log.info("waiting for clients: %d/%d online and able to train (%s%s)", len(ready), need,
                         ", ".join(ready[:10]) or "none", f" and {len(ready) - 10} more" if len(ready) > 10 else "")
                last_log = now
            self._process_next(_POLL_S)
        if first:
            grace_end = time.monotonic() + self.settings.quorum.start_grace_s
            while (left := grace_end - time.monotonic()) > 0:  # clients starting together arrive within moments
                self._process_next(min(_POLL_S, left))
        return True

    def _global_model_messages(self, r: int, weights: list, digest: str, cohort: frozenset[str]) \
            -> list[tuple[str, bytes]]:
        message = GlobalModel(run=self.settings.run.name, round=r, sender=COORDINATOR_ID, model=self.model_info,
                              train=self.plan, tensors=[(spec.name, w) for spec, w in zip(self.specs, weights)],
                              total_rounds=self.settings.training.rounds, weights_sha256=digest,
                              cohort=sorted(cohort))
        return outgoing_messages(self.topics.global_model, message.encode(), self.settings.broker.chunk_bytes,
                                 self.settings.run.name, r, COORDINATOR_ID)

    def _publish_global(self) -> None:
        for topic, part in self._global_messages:
            self._publish_own(topic, part)

    def _run_round(self, r: int) -> str | None:
        """Run round r; return None when it closed, or why the run must stop."""
        self.round = r
        weights = [w for _, w in named_weights(self.model)]
        digest = weights_digest(weights)
        cohort = self.sampling.sample(self.trainable(), r)
        self._global_messages = self._global_model_messages(r, weights, digest, cohort)
        payload_size = sum(len(part) for _, part in self._global_messages)
        self._chunk_topics_used = max(self._chunk_topics_used, len(self._global_messages) - 1)
        self.aggregator.begin(weights)
        assert self.admission is not None
        self.admission.new_round()
        self._round_stats = {"bytes_in": 0, "examples": 0, "train_s": [], "client_ids": []}
        started = time.monotonic()
        self._tracker = RoundTracker(self.rule, r, started, cohort)
        self._publish_global()
        online = len(self.trainable())
        self._set_phase("training", f"asked {len(cohort)} of {online} online clients; expecting "
                                    f"{self._tracker.target}")
        self.progress.round_started(r, self._tracker.target, self._tracker.deadline)
        log.info("round %d/%d: model published (%.1f MB) to a cohort of %d of %d online clients", r,
                 self.settings.training.rounds, payload_size / 1e6, len(cohort), online)
        overdue_logged = impossible_logged = False
        while True:
            online_set = self.trainable()
            self._top_up_cohort(online_set, weights, digest)
            decision = self._tracker.decide(time.monotonic(), online_set)
            possible = self._tracker.quorum_possible(online_set)
            if not possible and not impossible_logged:
                detail = (f"quorum impossible for now: {len(self._tracker.received)} updates and "
                          f"{len(self._tracker.waiting_for(online_set))} more cohort members online, "
                          f"{self.rule.min_clients} needed; "
                          f"{'stopping' if self.rule.on_no_quorum == 'stop' else 'waiting'} at the deadline")
                log.warning("round %d: %s", r, detail)
                self._set_phase("training", detail)
            impossible_logged = not possible
            if decision is Decision.CLOSE:
                break
            if decision is Decision.STOP:
                return self._no_quorum_detail()
            if decision is Decision.OVERDUE and not overdue_logged:
                detail = self._no_quorum_detail() + "; waiting (quorum.on_no_quorum = wait)"
                log.warning("round %d: %s", r, detail)
                self._set_phase("training", detail)
                overdue_logged = True
            self._process_next(min(_POLL_S, max(0.01, self._tracker.deadline - time.monotonic())))
        round_time = time.monotonic() - started
        cohort_size = len(self._tracker.expected)
        self._tracker = None
        self.last_closed = r
        self._global_messages = []
        self._close_round(r, round_time, payload_size, cohort_size)
        return None

    def _top_up_cohort(self, online: set[str], weights: list, digest: str) -> None:
        """Ask more clients when too few cohort members are left online for a quorum (members went offline,
        or fewer clients than min_clients were online when the round started): re-publish the round's model
        with a larger cohort. Cohort members that already answered see the same model and are not asked again."""
        t = self._tracker
        assert t is not None
        missing = t.missing_for_quorum(online)
        candidates = online - t.expected
        if not missing or not candidates:
            return
        added = SamplingRule(min_train_clients=missing, fraction_train=1e-9, seed=self.sampling.seed) \
            .sample(candidates, t.round)
        t.extend(set(added))
        log.info("round %d: too few cohort members online for a quorum; also asking %s", t.round,
                 ", ".join(sorted(added)))
        self._global_messages = self._global_model_messages(t.round, weights, digest, t.expected)
        self._publish_global()

    def _no_quorum_detail(self) -> str:
        t = self._tracker
        assert t is not None
        online = sorted(self.trainable())
        return (f"round {t.round}: {len(t.received)} of at least {self.rule.min_clients} updates after the "
                f"{self.rule.deadline_s:g} s deadline; online: {', '.join(online[:20]) or 'none'}"
                f"{f' and {len(online) - 20} more' if len(online) > 20 else ''}")

    def _close_round(self, r: int, round_time: float, bytes_out: int, cohort_size: int) -> None:
        self._set_phase("aggregating")
        t0 = time.monotonic()
        self.model.set_weights(self.aggregator.result())
        aggregate_s = time.monotonic() - t0
        self._set_phase("evaluating")
        t0 = time.monotonic()
        ev = evaluate_keras(self.model, self.x_test, self.y_test, self.settings.evaluation.batch_size)
        evaluate_s = time.monotonic() - t0
        self.model.save(self.run_dir / "models" / f"round_{r:03d}.keras")
        stats = self._round_stats
        slowest = min(max(stats["train_s"], default=0.0), round_time)
        self._drain_admission_drops()
        self.drops.flush(force=True)
        rejected, ignored = self.drops.take()
        metrics = RoundMetrics(
            round=r, clients=self.aggregator.count, examples=stats["examples"], test_loss=ev.loss,
            test_accuracy=ev.accuracy, bytes_in=stats["bytes_in"], bytes_out=bytes_out,
            round_time_s=round(round_time, 4), slowest_train_s=round(slowest, 4),
            overhead_s=round(round_time - slowest, 4), aggregate_s=round(aggregate_s, 4),
            evaluate_s=round(evaluate_s, 4), client_ids=sorted(stats["client_ids"]), rejected=rejected,
            aggregation=self.aggregator.report(), cohort=cohort_size, ignored=ignored,
        )
        append_metrics(self.metrics_path, metrics)
        self.history.append(metrics)
        save_checkpoint(self.run_dir, Checkpoint(r, self.model.get_weights(), self.history, self.fingerprint))
        self._publish_metrics()
        self.progress.round_closed(metrics)
        self.last_evaluation = ev
        self.deployer.after_round(self.model, r, self.x_test, self.y_test, ev.accuracy)
        ROUND_LOG.info("round %d/%d: %d clients (of %d asked), %d examples, test accuracy %.4f, loss %.4f, "
                       "%.2f MB in, %.2f MB out, %.1f s (overhead %.2f s)%s%s", r, self.settings.training.rounds,
                       metrics.clients, cohort_size, metrics.examples, ev.accuracy, ev.loss, metrics.bytes_in / 1e6,
                       bytes_out / 1e6, round_time, metrics.overhead_s,
                       f", rejected {rejected}" if rejected else "", f", ignored {ignored}" if ignored else "")

    # ---- incoming messages --------------------------------------------------------------------------

    def _drain_admission_drops(self) -> None:
        if self.admission is None:
            return
        for (sender, reason), count in self.admission.take_dropped().items():
            detail = (f"update message larger than the model's {self.max_update_bytes} bytes" if reason == "too_large"
                      else f"over the device's budget of {self.admission.max_messages} messages and "
                           f"{self.admission.max_bytes} bytes this round")
            self.drops.record(sender, reason, detail, count)

    def _process_next(self, timeout: float) -> None:
        self._drain_admission_drops()
        item = self.inbox.get(timeout)
        self.drops.flush()
        if item is None:
            self.receiver.expire()
            return
        topic = item.topic
        if topic in (self.topics.global_model, self.topics.run_end, self.topics.coordinator_state):
            self._check_own_topic(topic, item.payload)
            return
        client_id = self.topics.client_of(base_topic(topic)[0])
        if client_id is None:
            log.debug("ignoring a message on unexpected topic %.200s", topic)
            return
        try:
            check_level(client_id, "client id")
        except ValueError:
            self.drops.record(client_id, "bad_client_id", "a client id outside the protocol's characters "
                                                          "(1-64 of A-Z a-z 0-9 _ - ., starting with a letter or digit)")
            return
        if topic == self.topics.client_status(client_id):
            self._handle_status(client_id, item.payload)
        else:
            self._handle_update(client_id, topic, item.payload)

    def _handle_status(self, client_id: str, payload: bytes) -> None:
        if not payload:  # a cleared retained status
            self.online.pop(client_id, None)
            self.unfit.pop(client_id, None)
            return
        try:
            status = decode_message(payload, _STATUS_MAX_BYTES)
            if not isinstance(status, ClientStatus):
                raise DecodeError(f"{status.TYPE} message on a status topic", "wrong_type")
            if status.sender != client_id:
                raise DecodeError(f"status names sender {wire_repr(status.sender)}", "sender_mismatch")
        except DecodeError as exc:
            self.drops.record(client_id, exc.reason, f"status: {exc}")
            return
        if status.role != "train":  # an inference-only device (edge_client serve) takes no part in training
            return
        if status.status == "online" and status.run == self.settings.run.name:
            if client_id not in self.online:
                log.info("client %s online (%d examples, %s)", client_id, status.num_examples,
                         str(status.device.get("host", "?"))[:64])
            self.online[client_id] = status
            self._note_fitness(client_id, status.error)
        else:
            if self.online.pop(client_id, None) is not None:
                reason = f": {status.error}" if status.error else ""
                log.warning("client %s offline%s", client_id, reason)
            self.unfit.pop(client_id, None)
        self._publish_state()

    def _note_fitness(self, client_id: str, error: str) -> None:
        """Record (and show) why a device can't train this run's model, or that it can again."""
        if error and self.unfit.get(client_id) != error:
            log.error("client %s can't train this run's model: %s", client_id, error)
            self.progress.device_problem(client_id, error)
        elif not error and client_id in self.unfit:
            log.info("client %s can train again", client_id)
            self.progress.device_problem(client_id, "")
        if error:
            self.unfit[client_id] = error
        else:
            self.unfit.pop(client_id, None)

    def _handle_update(self, client_id: str, topic: str, payload: bytes) -> None:
        try:
            received = self.receiver.receive(topic, payload, expected_sender=client_id,
                                             check=lambda _, message: self._check_envelope(client_id, message))
            if received is None:
                return  # a chunk of an update still being reassembled
            update = self._validate_update(client_id, received.message)
        except DecodeError as exc:
            self.drops.record(client_id, exc.reason, str(exc))
            return
        tracker = self._tracker
        assert tracker is not None
        tracker.add(client_id)
        if client_id not in self.online:  # seen offline (or never seen): an update proves it is there
            log.info("client %s sent an update while seen offline; online again", client_id)
            self.online[client_id] = ClientStatus(run=self.settings.run.name, round=update.round, sender=client_id,
                                                  num_examples=update.num_examples)
            self._publish_state()
        self.aggregator.add(ClientResult(client_id, update.num_examples, [w for _, w in update.tensors]))
        stats = self._round_stats
        stats["bytes_in"] += received.size
        stats["examples"] += update.num_examples
        stats["train_s"].append(max(0.0, update.metrics.get("train_time_s", 0.0)))
        stats["client_ids"].append(client_id)
        self.progress.update_accepted(client_id, len(tracker.received), tracker.target)
        log.info("round %d: update %d/%d from %s (%d examples, local accuracy %.3f)", tracker.round,
                 len(tracker.received), tracker.target, client_id, update.num_examples,
                 update.metrics.get("accuracy", float("nan")))

    def _check_envelope(self, client_id: str, message: Message) -> None:
        """The checks every message on an update topic passes, chunks and manifests included, before anything of
        it is kept: sender, run, the open round, the cohort, a first update."""
        if message.sender != client_id:
            raise DecodeError(f"payload names sender {wire_repr(message.sender)}, topic says {client_id!r}",
                              "sender_mismatch")
        if message.run != self.settings.run.name:
            raise DecodeError(f"{message.TYPE} for run {wire_repr(message.run)}", "wrong_run")
        tracker = self._tracker
        if tracker is None or message.round != tracker.round:
            if message.round <= self.last_closed:
                raise DecodeError(f"{message.TYPE} for round {message.round}, which has closed", "late")
            open_round = tracker.round if tracker else "none"
            raise DecodeError(f"{message.TYPE} for round {message.round}, open round is {open_round}", "wrong_round")
        if not tracker.in_cohort(client_id):
            raise DecodeError(f"{message.TYPE} for round {message.round} from a client not asked to train in it",
                              "not_in_cohort")
        if client_id in tracker.received:
            raise DecodeError(f"second update for round {message.round}", "duplicate")

    def _validate_update(self, client_id: str, update: Message) -> Update:
        if not isinstance(update, Update):
            raise DecodeError(f"{update.TYPE} message on an update topic", "wrong_type")
        self._check_envelope(client_id, update)
        check_tensors(update.tensors, self.specs)
        check_finite(update.tensors)
        return update

    # ---- own topics ---------------------------------------------------------------------------------

    def _remember_own(self, topic: str, payload: bytes) -> None:
        recent = self._own.setdefault(topic, [])
        recent.append(hashlib.sha256(payload).digest())
        del recent[:-_OWN_TOPIC_MEMORY]

    def _publish_own(self, topic: str, payload: bytes, retain: bool = True, wait: bool = False) -> bool:
        """Publish on one of this coordinator's retained topics, remembering the payload so that a message
        there that it did not publish can be noticed and replaced."""
        self._remember_own(topic, payload)
        self._own_current[topic] = (payload, retain)
        if wait:
            return self.link.publish_and_wait(topic, payload, qos=1, retain=retain)
        self.link.publish(topic, payload, qos=1, retain=retain)
        return True

    def _check_own_topic(self, topic: str, payload: bytes) -> None:
        """A message on the model, end or state topic: ours coming back, or one this coordinator did not
        publish (a forgery on a broker without logins, or a stale will): then re-publish our own."""
        current = self._own_current.get(topic)
        if current is None or hashlib.sha256(payload).digest() in self._own.get(topic, []):
            return
        now = time.monotonic()
        if now - self._forgery_fixed_at.get(topic, -1e9) >= 1.0:
            self._forgery_fixed_at[topic] = now
            log.warning("a message on %s that this coordinator did not publish (%d bytes); re-publishing its own",
                        topic, len(payload))
            self._publish_own(topic, *current)

    # ---- state and end of run -----------------------------------------------------------------------

    def _state_message(self, status: str = "online", detail: str = "") -> CoordinatorState:
        return CoordinatorState(run=self.settings.run.name, round=self.round, sender=COORDINATOR_ID,
                                status=status, phase=self.phase, total_rounds=self.settings.training.rounds,
                                online_clients=sorted(self.online), detail=detail)

    def _on_connected(self) -> None:
        """After every (re)connect: restore the retained state and the open round's model (a restarted
        broker without persistence has lost them). Runs on paho's network thread."""
        self._remember_own(self.topics.coordinator_state, self._state_payload)
        self.link.publish(self.topics.coordinator_state, self._state_payload, qos=1, retain=True)
        for topic, part in list(self._global_messages):
            self.link.publish(topic, part, qos=1, retain=True)
        if self._metrics_payload:
            self.link.publish(self.topics.metrics, self._metrics_payload, qos=1, retain=True)

    def _publish_metrics(self) -> None:
        """Retain the last round's metrics, with the run's accuracy and loss so far, on the metrics topic
        (an empty retained payload while the run has no closed round)."""
        if self.history:
            self._metrics_payload = round_metrics_message(self.history[-1], self.settings.run.name,
                                                          self.settings.training.rounds, self.history).encode()
        else:
            self._metrics_payload = b""
        self.link.publish(self.topics.metrics, self._metrics_payload, qos=1, retain=True)

    def _set_phase(self, phase: str, detail: str = "") -> None:
        self.phase = phase
        self._publish_state(detail)

    def _publish_state(self, detail: str = "") -> None:
        """Publish the retained state; the payload is kept for re-publishing after a reconnect."""
        self._state_payload = self._state_message("online", detail).encode()
        self.progress.state_changed(self.round, self.phase, sorted(self.online), detail)
        self._publish_own(self.topics.coordinator_state, self._state_payload)

    def _finish(self, result: RunResult) -> None:
        self._closing = True
        if result.reason == "completed":  # a restart starts a new run; a stopped one can still be resumed
            save_checkpoint(self.run_dir, Checkpoint(result.rounds_completed, self.model.get_weights(), self.history,
                                                     self.fingerprint, finished=True))
        if result.rounds_completed:
            self._set_phase("exporting")
            self.model.save(self.run_dir / "model.keras")
            write_labels(self.run_dir, self._dataset.class_names)  # beside model.keras (and the .tflite files)
            result.keras_accuracy = self.last_evaluation.accuracy
            result.tflite = self._export()
            if result.reason == "completed":
                record = self.deployer.at_end(self.run_dir, result.rounds_completed, result.tflite,
                                              result.keras_accuracy)
                result.deployed = record.to_json() if record else None
            self._write_summary(result)
        if result.reason == "stopped":
            log.error("run %r stopped: %s", self.settings.run.name, result.detail)
        # The state says done (or stopped) before run_end goes out: clients honour a run_end only then.
        self._set_phase("done" if result.reason == "completed" else "stopped", result.detail)
        end = RunEnd(run=self.settings.run.name, round=self.round, sender=COORDINATOR_ID, reason=result.reason,
                     test_accuracy=result.keras_accuracy, detail=result.detail)
        self._remember_own(self.topics.run_end, end.encode())  # ours: a forged run_end would be replaced
        final = [*self.deployer.unconfirmed, (self.topics.run_end, end.encode()), (self.topics.global_model, b""),
                 *[(chunk_topic(self.topics.global_model, i), b"") for i in range(self._chunk_topics_used)],
                 (self.topics.coordinator_state, self._state_message("offline", result.detail).encode())]
        bound = final_publish.timeout_s()
        unconfirmed = final_publish.publish_confirmed(self.link, final, bound)  # re-sent after a reconnect
        self.link.stop()
        if unconfirmed:
            error = final_publish.FinalPublishError(unconfirmed, bound, str(self.link.address), self.run_dir)
            log.error("run %r %s after %d rounds, but %s", self.settings.run.name, result.reason,
                      result.rounds_completed, error)
            raise error
        log.info("run %r %s after %d rounds; results in %s", self.settings.run.name, result.reason,
                 result.rounds_completed, self.run_dir)

    def _export(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        keras_acc = self.last_evaluation.accuracy
        deploy = [self.settings.deploy.variant] if self.settings.deploy.enabled else []
        for variant in dict.fromkeys([*self.settings.export.tflite, *deploy]):
            representative = self.x_test[: self.settings.export.representative_examples]
            path = export_tflite(self.model, self.run_dir, variant, representative,
                                 self.settings.export.tflite_runtime_compat, self._dataset.class_names)
            ev: Evaluation = evaluate_tflite(path, self.x_test, self.y_test)
            delta = round(100 * (ev.accuracy - keras_acc), 4)
            out[variant] = {"path": path.name, "bytes": path.stat().st_size, "accuracy": ev.accuracy,
                            "examples": ev.examples, "delta_points": delta,
                            "bound_points": ACCURACY_BOUND_POINTS[variant],
                            "within_bound": abs(delta) <= ACCURACY_BOUND_POINTS[variant]}
            log.info("TFLite %s: %s, %d bytes, test accuracy %.4f (Keras %.4f, delta %+.2f points)", variant,
                     path, out[variant]["bytes"], ev.accuracy, keras_acc, out[variant]["delta_points"])
        return out

    def _write_summary(self, result: RunResult) -> None:
        summary = {"run": self.settings.run.name, "reason": result.reason, "rounds": result.rounds_completed,
                   "examples_evaluated": int(len(self.y_test)),
                   "keras": {"path": "model.keras", "accuracy": result.keras_accuracy,
                             "loss": self.last_evaluation.loss},
                   "tflite": result.tflite, "class_names": list(self._dataset.class_names),
                   "deployed": result.deployed,
                   "aggregation": {"rule": self.settings.aggregation.rule, **self.aggregator.report()}}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
