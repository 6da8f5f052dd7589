"""The coordinator's orchestration: prepares the model and data, then runs rounds by feeding the round state
machine (coordinator.rounds) with the node's inbound messages and acting on its decisions, and releases the result.

MQTT lives in coordinator.node, the run folder in coordinator.run_store, the export and deployment in
coordinator.release; an update goes node → inbox → decode → validate → aggregate, on this one thread."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coordinator.admission import Admission
from coordinator.aggregation import ClientResult, make_aggregator
from coordinator.aggregation.deltas import Delta, scaled
from coordinator.checkpoint import CHECKPOINT_FILE, run_fingerprint
from coordinator.cohort import SamplingRule
from coordinator.deploy import Deployer
from coordinator.drops import DropLog
from coordinator.evaluation import Evaluation, evaluate_keras, test_split
from coordinator.final_publish import FinalPublishError
from coordinator.metrics import RoundMetrics, RoundStats, round_metrics_message
from coordinator.ingest_log import IngestLog
from coordinator.intake import ClientCleared, ClientOffline, ClientOnline, Intake, UpdateReceived
from coordinator.node import CoordinatorNode
from coordinator.progress import ROUND_LOG, RunProgress, first_ids
from coordinator.quorum import QuorumRule
from coordinator.release import Release
from coordinator.rounds import Decision, Rounds, WaitState
from coordinator.run_store import RunStore
from coordinator.relay_intake import PARTIAL_SLACK_BYTES, RelayIntake
from coordinator.site_ingest import count_lost_with_relay, handle_relay_event, relay_unsupported
from coordinator.sites import SiteRoster
from coordinator.server_optimizers import make_server_optimizer
from coordinator.staleness import StalenessRule, VersionHistory, weighted_update
from federation.config.settings import Settings
from federation.protocol.codec import DecodeLimits, TensorSpec
from federation.protocol.encodings import Encoded, EncodingPlan, encode_model
from federation.learning.datasets import Dataset
from coordinator.run_data import load_run_dataset
from federation.protocol.messages import (
    STATE_LIST_MAX, CoordinatorState, GlobalModel, ModelInfo, RunEnd, TrainingPlan, weights_digest,
)
from federation.protocol.chunked_transfer import ChunkedReceiver, outgoing_messages
from federation.learning.compile_recipe import compile_with
from federation.learning.model_source import ModelChoice, dataset_outputs, load_model_source
from federation.learning.models import named_weights, set_model_weights, weight_specs
from federation.transport.mqtt_link import BrokerAddress
from federation.protocol.topics import RunTopics

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

COORDINATOR_ID = "coordinator"
_POLL_S = 0.5
_STATE_EVERY_S = 0.25   # births and departures re-publish the retained state at most this often (phases: at once)
_UPDATE_SLACK_BYTES = 64 * 1024     # an update's msgpack framing, names and metrics on top of its tensor bytes


@dataclass
class RunResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    rounds_completed: int
    reason: str                                  # "completed" or "stopped"
    detail: str = ""
    keras_accuracy: float | None = None          # None for a regression: see keras_mae and keras_rmse
    tflite: dict[str, dict] = field(default_factory=dict)
    deployed: dict | None = None                 # the model published for inference-only devices
    keras_mae: float | None = None               # a regression's final errors on the test set
    keras_rmse: float | None = None


@dataclass
class Prepared:
    """What `_prepare` builds from the settings and the data before the broker is reached."""

    dataset: Dataset
    x_test: np.ndarray
    y_test: np.ndarray
    model_info: ModelInfo
    model: "keras.Model"
    specs: list[TensorSpec]
    plan: TrainingPlan
    fingerprint: str
    intake: Intake
    deployer: Deployer
    release: Release
    start_round: int = 1
    last_evaluation: Evaluation | None = None


class Coordinator:
    def __init__(self, settings: Settings, dataset: Dataset | None = None,
                 progress: RunProgress | None = None, client_id: str | None = None) -> None:
        self.settings = settings
        self.topics = RunTopics(settings.broker.topic_prefix, settings.run.name)
        self.run_dir = settings.run_dir
        self.max_payload = int(settings.broker.max_payload_mb * 1024 * 1024)
        self._dataset = dataset
        self.round = 0
        self.phase = "starting"
        self.drops = DropLog()
        self.store = RunStore(settings)
        self.progress = progress or RunProgress(settings.run.name, settings.training.rounds)
        self.aggregator = make_aggregator(settings.aggregation)
        self.server_optimizer = make_server_optimizer(settings.server_optimizer)
        q, p, a = settings.quorum, settings.sampling, settings.aggregation
        self.asynchronous = a.mode == "async"
        # Async (FedBuff): the versions a stale update's delta is measured against, and its weight.
        self.staleness = StalenessRule(a.max_staleness, a.staleness_weighting, a.staleness_exponent)
        self.versions = VersionHistory(a.max_staleness + 1)
        self._staleness_seen: list[int] = []   # the open step's updates' staleness (async)
        self._run_started: float | None = None
        self._after_last_round: dict[str, dict[str, int]] = {"rejected": {}, "ignored": {}}
        self.rounds = Rounds(
            QuorumRule(q.min_clients, q.fraction, q.round_deadline_s, q.on_no_quorum),
            SamplingRule(p.fraction_train, p.min_train_clients or q.min_clients, p.max_train_clients,
                         p.min_available_clients or q.min_clients, p.seed),
            settings.run.name, wait_for_clients_s=q.wait_for_clients_s, start_grace_s=q.start_grace_s,
            poll_s=_POLL_S, max_staleness=a.max_staleness if self.asynchronous else None,
            buffer_size=a.buffer_size)
        self.stats = RoundStats()
        self.ingest_log = IngestLog(log)
        self._state_detail = ""                 # the detail of the last phase, kept by the coalesced publishes
        self._state_dirty = False               # the online clients changed since the last state publish
        self._state_published_at = -1e9
        self.prepared: Prepared | None = None
        self.sites = SiteRoster()                      # site relays and their devices (coordinator.site_ingest)
        self.sites_refused: set[str] = set()           # sites told their relay can't take part in this run
        self.lost_with_relay: dict[str, str] = {}      # cohort members whose relay died before forwarding -> site
        self.relay_intake: RelayIntake | None = None
        self.node = CoordinatorNode(self.topics, BrokerAddress.from_settings(settings.broker),
                                    client_id or f"fedmq-coordinator-{settings.run.name}", self.max_payload,
                                    self._state_message().encode(),
                                    will_payload=self._state_message("offline", "crashed").encode(),
                                    inbox_messages=settings.broker.inbox_messages,
                                    inbox_bytes=int(settings.broker.inbox_mb * 1024 * 1024))

    @property
    def p(self) -> Prepared:
        assert self.prepared is not None, "_prepare first"
        return self.prepared

    # ---- set-up -------------------------------------------------------------------------------------

    def _prepare(self) -> Prepared:
        s = self.settings
        dataset = self._dataset
        if dataset is None:
            dataset = self._dataset = load_run_dataset(s)  # labels read for the model's task
        x_test, y_test = test_split(dataset, s.evaluation.max_examples)
        import keras

        keras.utils.set_random_seed(s.model.seed)
        source = load_model_source(ModelChoice(s.model.name, s.model.path, s.model.builder), dataset.input_shape,
                                   dataset_outputs(dataset), optimizer=s.training.optimizer,
                                   learning_rate=s.server_optimizer.eta_l or s.training.learning_rate,
                                   data_task=dataset.task)
        model, architecture = source.model, source.architecture()
        regression = source.task == "regression"
        model_info = ModelInfo(source.label, dataset.input_shape, 0 if regression else dataset.num_classes,
                               () if regression else tuple(dataset.class_names), task=source.task,
                               num_outputs=source.outputs if regression else 0, data=dataset.schema,
                               architecture=architecture)
        # The coordinator evaluates with the recipe's loss, and accuracy for a classifier.
        compile_with(model, source.recipe, metrics=None if regression else ("accuracy",))
        specs = weight_specs(model)
        c = s.compression
        plan = TrainingPlan(s.training.local_epochs, s.training.batch_size,
                            source.recipe.learning_rate or s.server_optimizer.eta_l or s.training.learning_rate,
                            source.plan_optimizer, s.broker.chunk_bytes, s.aggregation.mode, s.training.proximal_mu,
                            encoding=EncodingPlan(c.uplink, c.downlink, c.topk_fraction, c.topk_values, c.int8_block))
        tensor_bytes = sum(math.prod(spec.shape) * np.dtype(spec.dtype).itemsize for spec in specs)
        if c.uplink == "topk":  # up to 32 index bits per kept value: at most twice the dense bytes
            tensor_bytes *= 2
        max_update_bytes = min(self.max_payload, tensor_bytes + _UPDATE_SLACK_BYTES + 256 * len(specs))
        # One receiver for updates: whole ones and chunked ones, decoded within limits derived from the model,
        # with chunks held at most 2 updates' worth per device and max(64 MiB, 4 updates) in all.
        receiver = ChunkedReceiver(max_update_bytes, limits=DecodeLimits.for_model(specs),
                                   max_held_bytes=max(64 * 1024 * 1024, 4 * max_update_bytes))
        # An honest device sends one update per round (or its chunks, at least 1 KiB each) and may re-send it
        # after reconnects; many times that is a flood, dropped before it is queued or decoded.
        admission = Admission(max_message_bytes=max_update_bytes, max_messages=4 * (max_update_bytes // 1024 + 2),
                              max_bytes=16 * max_update_bytes)
        self.node.admission = admission
        deployer = Deployer(s, self.node.link, self.topics, COORDINATOR_ID, dataset.class_names, model_info.task)
        fingerprint = run_fingerprint(s, specs, "" if source.from_registry else architecture.sha256)
        prepared = Prepared(dataset, x_test, y_test, model_info, model, specs, plan, fingerprint,
                            Intake(self.topics, self.rounds, self.drops, receiver, specs, admission, plan.encoding),
                            deployer, Release(s, self.run_dir, dataset.class_names, deployer))
        checkpoint = self.store.usable_checkpoint(prepared.fingerprint)
        if checkpoint is not None:
            set_model_weights(model, checkpoint.weights)
            self.aggregator.resume([m.aggregation for m in self.store.history])  # e.g. DP: privacy already spent
            if self.server_optimizer is not None:
                self.server_optimizer.load_state(checkpoint.optimizer_state)
                log.info("server optimizer %s: resumed its moments after %d steps", self.server_optimizer.name,
                         self.server_optimizer.rounds)
            prepared.start_round = checkpoint.round + 1
            self.rounds.oldest_version = prepared.start_round   # async: older versions were not kept
            self.round = checkpoint.round
            last = checkpoint.metrics[-1]
            prepared.last_evaluation = Evaluation(last.test_loss, last.test_accuracy, len(y_test), last.test_mae,
                                                  last.test_rmse)
            log.info("resuming run %r after round %d (test %s) from %s", s.run.name, checkpoint.round,
                     prepared.last_evaluation.describe(), self.run_dir / CHECKPOINT_FILE)
        self.relay_intake = RelayIntake(self.topics, self.rounds, self.drops, self.sites, specs,
                                        ChunkedReceiver(max_update_bytes + PARTIAL_SLACK_BYTES,
                                                        limits=DecodeLimits.for_model(specs)),
                                        lambda: relay_unsupported(self))
        self.prepared = prepared
        return prepared

    # ---- main loop ----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        p = self._prepare()
        s = self.settings
        log.info("run %r: %d rounds of %s on %s; results in %s", s.run.name, s.training.rounds, p.model_info.name,
                 p.dataset.name, self.run_dir)
        self.node.connect()
        self.node.clear_run_end()  # forget a previous run's end
        self._publish_metrics()  # this run's last round (when resuming), or nothing yet
        result = self._run_rounds()
        self._finish(result)
        return result

    def _run_rounds(self) -> RunResult:
        s = self.settings
        if not self._wait_for_clients(first=True):
            return RunResult(self.run_dir, 0, "stopped",
                             f"fewer than {self.rounds.need} clients came online within "
                             f"{s.quorum.wait_for_clients_s:g} s")
        self.store.claim(self.p.dataset.class_names)
        for r in range(self.p.start_round, s.training.rounds + 1):
            if r > self.p.start_round and not self.asynchronous:   # async: devices still training go on
                self._wait_for_clients(first=False)
            stop_detail = self._run_round(r)
            if stop_detail:
                return RunResult(self.run_dir, r - 1, "stopped", stop_detail)
        return RunResult(self.run_dir, s.training.rounds, "completed")

    def _wait_for_clients(self, first: bool) -> bool:
        """Wait until min_available_clients can train; before round 1 (or after a restart) also a grace period
        for clients starting together. False if quorum.wait_for_clients_s passed first (round 1 only)."""
        need = self.rounds.need
        started = last_log = time.monotonic()
        self.rounds.start_waiting(started, first)
        if not self.rounds.enough_clients() or first:
            self._set_phase("waiting_for_clients", f"need {need} online clients")
        while True:
            now = time.monotonic()
            waiting = self.rounds.waiting(now)
            if waiting.state is not WaitState.WAITING:
                return waiting.state is WaitState.READY
            if now - last_log > 10 and not self.rounds.enough_clients():
                ready = self.rounds.trainable()
                log.info("waiting for clients: %d/%d online and able to train (%s)", len(ready), need,
                         first_ids(ready, 5) or "none")
                last_log = now
            self._process_next(waiting.timeout_s)

    def _global_model_messages(self, r: int, weights: list, digest: str, cohort: frozenset[str]) \
            -> list[tuple[str, bytes]]:
        p = self.p
        message = GlobalModel(run=self.settings.run.name, round=r, sender=COORDINATOR_ID, model=p.model_info,
                              train=p.plan, tensors=[(spec.name, w) for spec, w in zip(p.specs, weights)],
                              total_rounds=self.settings.training.rounds, weights_sha256=digest,
                              cohort=None if self.asynchronous else sorted(cohort))
        return outgoing_messages(self.topics.global_model, message.encode(), self.settings.broker.chunk_bytes,
                                 self.settings.run.name, r, COORDINATOR_ID)

    def _run_round(self, r: int) -> str | None:
        """Run round r; return None when it closed, or why the run must stop."""
        self.round = r
        # The weights devices load (float16-rounded for a float16 downlink): what their deltas are against.
        _, weights = encode_model([w for _, w in named_weights(self.p.model)], self.p.plan.encoding.downlink)
        digest = weights_digest(weights)
        known = self.p.intake.version_sha256   # the versions an update may still be trained on: this one (sync)
        known[r] = digest                      # or the async versions kept
        for version in [v for v in known if v <= r - (self.versions.keep if self.asynchronous else 1)]:
            del known[version]
        if self._run_started is None:
            self._run_started = time.monotonic()
        if self.asynchronous:
            self.versions.add(r, weights)
            self._staleness_seen = []
        cohort = self.rounds.sample(r)
        messages = self._global_model_messages(r, weights, digest, cohort)
        payload_size = sum(len(part) for _, part in messages)
        self.aggregator.begin(weights)
        assert self.node.admission is not None
        self.node.admission.new_round()
        self.stats = RoundStats()
        opened = self.rounds.open(r, time.monotonic(), cohort)  # the round's time and deadline count from now
        self.node.publish_global(messages)
        self._set_phase("training", f"asked {len(opened.cohort)} of {opened.online} online clients; expecting "
                                    f"{opened.target}")
        self.progress.round_started(r, opened.target, opened.deadline)
        log.info("round %d/%d: model published (%.1f MB) to a cohort of %d of %d online clients", r,
                 self.settings.training.rounds, payload_size / 1e6, len(opened.cohort), opened.online)
        rule = self.rounds.quorum
        while True:
            poll = self.rounds.poll(time.monotonic())
            if poll.top_up:
                log.info("round %d: too few cohort members online for a quorum; also asking %s", r,
                         ", ".join(sorted(poll.top_up)))
                # Cohort members that already answered see the same model and are not asked again.
                self.node.publish_global(self._global_model_messages(r, weights, digest, poll.cohort))
            if poll.impossible:
                detail = (f"quorum impossible for now: {self.rounds.received} updates and "
                          f"{len(self.rounds.waiting_for())} more cohort members online, {rule.min_clients} needed; "
                          f"{'stopping' if rule.on_no_quorum == 'stop' else 'waiting'} at the deadline")
                log.warning("round %d: %s", r, detail)
                self._set_phase("training", detail)
            if poll.decision is Decision.CLOSE:
                break
            if poll.decision is Decision.STOP:
                return self._no_quorum_detail(r)
            if poll.first_overdue:
                detail = self._no_quorum_detail(r) + "; waiting (quorum.on_no_quorum = wait)"
                log.warning("round %d: %s", r, detail)
                self._set_phase("training", detail)
            self._process_next(self.rounds.timeout(time.monotonic()))
        count_lost_with_relay(self)
        closed = self.rounds.close(time.monotonic())
        self.node.forget_global()
        self._close_round(r, closed.round_time_s, payload_size, closed.cohort_size)
        return None

    def _async_report(self) -> dict[str, object]:
        """Async: the step's updates by staleness (mean, max, how many were stale); {} in sync mode."""
        seen = self._staleness_seen
        if not self.asynchronous:
            return {}
        return {"mode": "async", "staleness_mean": round(sum(seen) / len(seen), 4) if seen else 0.0,
                "staleness_max": max(seen, default=0), "stale_updates": sum(1 for s in seen if s)}

    def _next_weights(self) -> list[np.ndarray]:
        """The aggregate of the round's updates, or, with a server optimizer, its step along the aggregated delta
        (trainable tensors only: moving statistics take the aggregate)."""
        aggregate = self.aggregator.result()
        if self.server_optimizer is None:
            return aggregate
        model = self.p.model
        return self.server_optimizer.step(model.get_weights(), aggregate, [w.trainable for w in model.weights])

    def _no_quorum_detail(self, r: int) -> str:
        rule = self.rounds.quorum
        online = sorted(self.rounds.trainable())
        return (f"round {r}: {self.rounds.received} of at least {rule.min_clients} updates after the "
                f"{rule.deadline_s:g} s deadline; online: {', '.join(online[:20]) or 'none'}"
                f"{f' and {len(online) - 20} more' if len(online) > 20 else ''}")

    def _close_round(self, r: int, round_time: float, bytes_out: int, cohort_size: int) -> None:
        p = self.p
        self._set_phase("aggregating")
        t0 = time.monotonic()
        set_model_weights(p.model, self._next_weights())
        aggregate_s = time.monotonic() - t0
        self._set_phase("evaluating")
        t0 = time.monotonic()
        every = self.settings.aggregation.evaluate_every
        if p.last_evaluation is None or r % every == 0 or r == self.settings.training.rounds:
            ev = evaluate_keras(p.model, p.x_test, p.y_test, self.settings.evaluation.batch_size,
                                p.model_info.task)
        else:   # [aggregation] evaluate_every: this round keeps the last evaluation's figures
            ev = p.last_evaluation
        evaluate_s = time.monotonic() - t0
        self.store.save_round_model(p.model, r)
        stats = self.stats
        slowest = stats.slowest_train_s(round_time)
        p.intake.drain_admission_drops()
        self.drops.flush(force=True)
        rejected, ignored = self.drops.take()
        metrics = RoundMetrics(
            round=r, clients=len(stats.client_ids), examples=stats.examples, test_loss=ev.loss,
            test_accuracy=ev.accuracy, bytes_in=stats.bytes_in, bytes_out=bytes_out,
            round_time_s=round(round_time, 4), slowest_train_s=round(slowest, 4),
            overhead_s=round(round_time - slowest, 4), aggregate_s=round(aggregate_s, 4),
            evaluate_s=round(evaluate_s, 4), client_ids=sorted(stats.client_ids), rejected=rejected,
            aggregation={**self.aggregator.report(), **self._async_report()}, cohort=cohort_size, ignored=ignored,
            elapsed_s=round(time.monotonic() - (self._run_started or time.monotonic()), 4),
            test_mae=ev.mae, test_rmse=ev.rmse,
        )
        self.store.round_closed(metrics, p.model.get_weights(), p.fingerprint,
                                self.server_optimizer.state() if self.server_optimizer is not None else None)
        self._publish_metrics()
        self.progress.round_closed(metrics)
        p.last_evaluation = ev
        p.deployer.after_round(p.model, r, p.x_test, p.y_test, ev)
        ROUND_LOG.info("round %d/%d: %d clients (of %d asked), %d examples, test %s, "
                       "%.2f MB in, %.2f MB out, %.1f s (overhead %.2f s)%s%s", r, self.settings.training.rounds,
                       metrics.clients, cohort_size, metrics.examples, ev.describe(), metrics.bytes_in / 1e6,
                       bytes_out / 1e6, round_time, metrics.overhead_s,
                       f", rejected {rejected}" if rejected else "", f", ignored {ignored}" if ignored else "")

    # ---- incoming messages: node → inbox → decode → validate → aggregate, on this thread ----------------

    def _process_next(self, timeout: float) -> None:
        intake = self.p.intake
        intake.drain_admission_drops()
        self._flush_state()
        self._summarize()
        item = self.node.next(min(timeout, _STATE_EVERY_S) if self._state_dirty else timeout)
        self.drops.flush()
        if item is None:
            intake.expire()
            return
        if self.node.is_own_topic(item.topic):
            self.node.check_own_topic(item.topic, item.payload)
            return
        if self.relay_intake is not None and self.topics.site_of(item.topic) is not None:
            if relay_event := self.relay_intake.decode(item.topic, item.payload):
                handle_relay_event(self, relay_event)
            return
        event = intake.decode(item)
        if isinstance(event, UpdateReceived):
            self._aggregate(event)
        elif isinstance(event, ClientOnline) and (site := self.sites.site_of(event.client_id)):
            self.drops.record(event.client_id, "id_clash", f"a direct device's birth with the id of a device of site "
                                                           f"{site}: device ids must be unique across the fleet")
        elif isinstance(event, ClientOnline):
            client_id, status = event.client_id, event.status
            if client_id not in self.rounds.online:
                self.ingest_log.births += 1
                log.log(self.ingest_log.level(len(self.rounds.online)), "client %s online (%d examples, %s)",
                        client_id, status.num_examples, str(status.device.get("host", "?"))[:64])
            self._note_fitness(client_id, status.error)
            self.rounds.client_online(client_id, status.error)
            self.progress.client_online(client_id)
            self._state_dirty = True
        elif isinstance(event, ClientOffline):
            if self.rounds.client_offline(event.client_id):
                self.ingest_log.departures += 1
                log.log(logging.WARNING if len(self.rounds.online) < self.ingest_log.detail_up_to else logging.DEBUG,
                        "client %s offline%s", event.client_id, f": {event.error}" if event.error else "")
            self.progress.client_offline(event.client_id)
            self._state_dirty = True
        elif isinstance(event, ClientCleared):
            if self.rounds.client_offline(event.client_id):
                self.ingest_log.departures += 1
            self.progress.client_offline(event.client_id)

    def _note_fitness(self, client_id: str, error: str) -> None:
        """Show why a device can't train this run's model, or that it can again (before the rounds record it)."""
        previous = self.rounds.unfit.get(client_id)
        if error and previous != error:
            log.error("client %s can't train this run's model: %s", client_id, error)
            self.progress.device_problem(client_id, error)
        elif not error and previous is not None:
            log.info("client %s can train again", client_id)
            self.progress.device_problem(client_id, "")

    def _aggregate(self, event: UpdateReceived) -> None:
        client_id, update = event.client_id, event.update
        if self.rounds.accept(client_id, update.round):  # seen offline (or never seen): an update proves it's there
            log.info("client %s sent an update while seen offline; online again", client_id)
            self.progress.client_online(client_id)
            self._state_dirty = True
        tensors = [t.value if isinstance(t, Encoded) else t for _, t in update.tensors]
        if update.base_sha256:  # a compressed uplink: deltas against the version trained on (checked by the intake)
            deltas = self._scaled_for_staleness(client_id, update.round, tensors) if self.asynchronous else tensors
            self.aggregator.add(ClientResult(client_id, update.num_examples, deltas=deltas))
        else:
            weights = [t for t in tensors if isinstance(t, np.ndarray)]
            if self.asynchronous:
                weights = self._weighted_for_staleness(client_id, update.round, weights)
            self.aggregator.add(ClientResult(client_id, update.num_examples, weights))
        self.stats.add(client_id, event.size, update.num_examples, update.metrics.get("train_time_s", 0.0))
        tracker = self.rounds.tracker
        assert tracker is not None
        self.progress.update_accepted(client_id, len(tracker.received), tracker.target)
        self.ingest_log.updates += 1
        level = self.ingest_log.level(tracker.target)
        if log.isEnabledFor(level):
            log.log(level, "round %d: update %d/%d from %s (%d examples%s)", tracker.round, len(tracker.received),
                    tracker.target, client_id, update.num_examples, local_metrics_text(update.metrics))

    def _weighted_for_staleness(self, client_id: str, base: int, weights: list[np.ndarray]) -> list[np.ndarray]:
        """Async: an update trained on version `base` enters the step as current + weight(staleness) x its delta
        from that version (FedBuff); a fresh one as it is."""
        staleness = self.round - base
        self._staleness_seen.append(staleness)
        if staleness == 0:
            return weights
        base_weights, current = self.versions.get(base), self.versions.get(self.round)
        assert base_weights is not None and current is not None, "the rounds accept only versions still kept"
        weight = self.staleness.weight(staleness)
        log.log(self._detail_level(), "round %d: %s's update was trained on version %d (staleness %d): weighted "
                "%.3f", self.round, client_id, base, staleness, weight)
        return weighted_update(current, base_weights, weights, weight)

    def _scaled_for_staleness(self, client_id: str, base: int, deltas: list[Delta]) -> list[Delta]:
        """Async with a compressed uplink: a delta trained on version `base` enters the step as weight(staleness)
        x that delta against the current version (the same as _weighted_for_staleness; top-k deltas stay sparse)."""
        staleness = self.round - base
        self._staleness_seen.append(staleness)
        if staleness == 0:
            return deltas
        weight = self.staleness.weight(staleness)
        log.log(self._detail_level(), "round %d: %s's update was trained on version %d (staleness %d): weighted "
                "%.3f", self.round, client_id, base, staleness, weight)
        return [scaled(d, weight) if d.dtype.kind == "f" else d for d in deltas]

    # ---- state and end of run -----------------------------------------------------------------------

    def _state_message(self, status: str = "online", detail: str = "") -> CoordinatorState:
        return CoordinatorState(run=self.settings.run.name, round=self.round, sender=COORDINATOR_ID,
                                status=status, phase=self.phase, total_rounds=self.settings.training.rounds,
                                online_clients=sorted(self.rounds.online) if len(self.rounds.online) <= STATE_LIST_MAX
                                else [], online_count=len(self.rounds.online), detail=detail,
                                sites=self.sites.summary())

    def _publish_metrics(self) -> None:
        """Retain the last round's metrics, with the run's accuracy and loss so far, on the metrics topic
        (an empty retained payload while the run has no closed round)."""
        history = self.store.history
        self.node.publish_metrics(round_metrics_message(history[-1], self.settings.run.name,
                                                        self.settings.training.rounds, history).encode()
                                  if history else b"")

    def _set_phase(self, phase: str, detail: str = "") -> None:
        self.phase = phase
        self._state_detail = detail
        self._publish_state()

    def _publish_state(self) -> None:
        """Publish the retained state now (a phase change, the end); the panel follows."""
        self.progress.state_changed(self.round, self.phase, detail=self._state_detail)
        self.progress.sites_changed(self.sites.summary())
        self.node.publish_state(self._state_message("online", self._state_detail).encode())
        self._state_dirty = False
        self._state_published_at = time.monotonic()

    def _flush_state(self) -> None:
        """Births and departures: the retained state (the whole online list) at most every _STATE_EVERY_S, not
        once per event (a birth storm would publish O(N^2) bytes)."""
        if self._state_dirty and time.monotonic() - self._state_published_at >= _STATE_EVERY_S:
            self._publish_state()

    def _detail_level(self) -> int:
        tracker = self.rounds.tracker
        return self.ingest_log.level(tracker.target if tracker else len(self.rounds.online))

    def _summarize(self) -> None:
        tracker = self.rounds.tracker
        self.ingest_log.maybe_summary(len(self.rounds.online), tracker.round if tracker else None,
                                      tracker.count if tracker else 0, tracker.target if tracker else 0,
                                      sum(self.drops.rejected.values()))

    def _drain_after_last_round(self) -> None:
        """Count what the inbox still holds once the last round closed: an update is `late` (nothing aggregates it
        any more: in async mode the intake still accepts an older version's update), a bad message is counted by
        the intake as always; births and departures no longer matter."""
        intake = self.p.intake
        intake.drain_admission_drops()
        while (item := self.node.next(0)) is not None:
            if self.node.is_own_topic(item.topic):
                continue
            event = intake.decode(item)
            if isinstance(event, UpdateReceived):
                self.drops.record(event.client_id, "late",
                                  f"update for round {event.update.round}, after the last round closed")

    def _finish(self, result: RunResult) -> None:
        # What came in after the last round closed (a re-send, a straggler) is counted, not left unread: the inbox
        # holds at most a few messages; later ones, after this point, find nobody reading.
        self._drain_after_last_round()
        after_rejected, after_ignored = self.drops.take()
        if after_rejected or after_ignored:
            log.info("after the last round: ignored %s, rejected %s", after_ignored or "nothing",
                     after_rejected or "nothing")
        self._after_last_round = {"rejected": after_rejected, "ignored": after_ignored}
        self.node.closing = True
        p = self.p
        if result.reason == "completed":  # a restart starts a new run; a stopped one can still be resumed
            self.store.finished(result.rounds_completed, p.model.get_weights(), p.fingerprint,
                                self.server_optimizer.state() if self.server_optimizer is not None else None)
        if result.rounds_completed:
            self._set_phase("exporting")
            ev = p.last_evaluation
            assert ev is not None
            p.release.save_keras(p.model)
            result.keras_accuracy, result.keras_mae, result.keras_rmse = ev.final_accuracy, ev.mae, ev.rmse
            result.tflite = p.release.export(p.model, p.x_test, p.y_test, ev)
            if result.reason == "completed":
                result.deployed = p.release.deploy(result.rounds_completed, ev)
            self._write_summary(result)
        if result.reason == "stopped":
            log.error("run %r stopped: %s", self.settings.run.name, result.detail)
        # The state says done (or stopped) before run_end goes out: clients honour a run_end only then.
        self._set_phase("done" if result.reason == "completed" else "stopped", result.detail)
        end = RunEnd(run=self.settings.run.name, round=self.round, sender=COORDINATOR_ID, reason=result.reason,
                     test_accuracy=result.keras_accuracy, detail=result.detail, test_mae=result.keras_mae,
                     test_rmse=result.keras_rmse)
        unconfirmed, bound = self.node.publish_final(p.deployer.unconfirmed, end.encode(),
                                                     self._state_message("offline", result.detail).encode())
        if unconfirmed:
            error = FinalPublishError(unconfirmed, bound, str(self.node.address), self.run_dir)
            log.error("run %r %s after %d rounds, but %s", self.settings.run.name, result.reason,
                      result.rounds_completed, error)
            raise error
        log.info("run %r %s after %d rounds; results in %s", self.settings.run.name, result.reason,
                 result.rounds_completed, self.run_dir)

    def _write_summary(self, result: RunResult) -> None:
        p = self.p
        assert p.last_evaluation is not None
        self.store.write_summary({
            "run": self.settings.run.name, "reason": result.reason, "rounds": result.rounds_completed,
            "examples_evaluated": int(len(p.y_test)),
            "keras": {"path": "model.keras", "accuracy": result.keras_accuracy, "loss": p.last_evaluation.loss,
                      **_regression_summary(p.last_evaluation)},
            "tflite": result.tflite, "class_names": list(p.dataset.class_names),
            "deployed": result.deployed,
            "aggregation": {"rule": self.settings.aggregation.rule, **self.aggregator.report()},
            "after_last_round": self._after_last_round,
            **({"task": "regression"} if p.last_evaluation.is_regression else {})})


def _regression_summary(ev: Evaluation) -> dict[str, object]:
    """summary.json's extra keys for a regression's final model ({} for a classification: its summary is unchanged)."""
    return {"mae": ev.mae, "rmse": ev.rmse} if ev.is_regression else {}


def local_metrics_text(metrics: dict[str, float], limit: int = 4) -> str:
    """", local loss 0.3120, accuracy 0.8810": a client's own metrics for the log line of its update, whatever
    the recipe's metrics are (accuracy, mae...); train_time_s is left out."""
    shown = [f"{name if name.isidentifier() else repr(name)} {value:.4f}" for name, value in metrics.items()
             if name != "train_time_s"][:limit]
    return f", local {', '.join(shown)}" if shown else ""
