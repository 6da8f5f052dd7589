"""The edge client's loop: announce presence, wait for each round's global model, train locally,
publish the update, and stop when the run ends.

Paho's network thread only queues what arrives in a bounded inbox (federation.transport.inbox); the one loop thread decodes
and handles it, between rounds and, while training, after every batch."""

from __future__ import annotations

import logging
import os
import platform
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from federation.protocol.codec import DecodeError
from federation.transport.inbox import Inbound, Inbox
from federation.protocol.chunked_transfer import ChunkedReceiver, chunk_topic, outgoing_messages
from federation.protocol.messages import ClientStatus, CoordinatorState, decode_message, GlobalModel, RunEnd, Update, check_finite
from federation.transport.mqtt_link import BrokerAddress, BrokerRefusedError, MqttLink
from federation.transport.reconnect_jitter import ReconnectJitter
from federation.protocol.topics import RunTopics, check_level
from federation.protocol.version import SOFTWARE_VERSION
from edge_client.errors import IncompatibleModelError
from edge_client.labels import label_map
from edge_client.model_builder import ModelBuilder
from edge_client.progress import ClientProgress
from edge_client.run_end_watch import RunEndWatch
from edge_client.trainer import KerasTrainer, RoundContext, Trainer, checked_result
from edge_client.update_encoding import ResidualStore, UpdateEncoder

if TYPE_CHECKING:
    from edge_client.local_data import LocalSource

log = logging.getLogger(__name__)
__all__ = ["ClientSettings", "EdgeClient", "IncompatibleModelError", "label_map"]   # label_map: edge_client.labels


@dataclass(frozen=True)
class ClientSettings:
    client_id: str
    broker: BrokerAddress
    run: str = "demo"
    topic_prefix: str = "fedmq"
    max_payload_mb: float = 64.0
    chunk_bytes: int = 0   # split larger updates into chunks (0: never)
    seed: int = 0
    state_dir: Path | None = None   # where the error-feedback residual lives (None: in memory only)
    slowdown: float = 1.0  # simulate a slower device: training takes this many times its real time (tests, benches)


@dataclass(frozen=True)
class SentUpdate:
    """The last update published: kept to re-send if its round's model is offered again."""

    round: int
    weights_sha256: str
    messages: list[tuple[str, bytes]]   # (topic, payload): one, or chunks then their manifest


INBOX_BYTES = 64 * 1024 * 1024    # undecoded messages held at least this much; a full inbox slows the broker down
_REFUSED = ""                      # the inbox item that wakes the loop when the broker refused the login
INSTANCE = secrets.token_hex(8)   # this process: tells its own status from another process's with the same id


def device_info() -> dict[str, object]:
    return {"host": socket.gethostname(), "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}", "machine": platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count() or 0, "pid": os.getpid(),
            "instance": INSTANCE}


# (the round's global weights, the trained weights) -> the weights to send: a hook for tests and benchmarks
# (bench/attacks.py poisons updates through it); None sends the trained weights.
UpdateTransform = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


class EdgeClient:
    """One training device in a run. It trains with `trainer` (default: KerasTrainer on `data`, building the
    coordinator's model from the wire with `model_builder`); MQTT, presence, re-sends and chunking are its own."""

    def __init__(self, settings: ClientSettings, data: LocalSource | None = None,
                 transform_update: UpdateTransform | None = None, *, trainer: Trainer | None = None,
                 model_builder: ModelBuilder | None = None) -> None:
        check_level(settings.client_id, "client id")
        if trainer is None:
            if data is None:
                raise ValueError("EdgeClient needs this device's data (LocalData) or a trainer")
            trainer = KerasTrainer(data, model_builder)
        self.settings = settings
        self.data = data
        self.trainer = trainer
        self.topics = RunTopics(settings.topic_prefix, settings.run)
        self.inbox = Inbox(max(INBOX_BYTES, 2 * int(settings.max_payload_mb * 1024 * 1024)))
        self._latest: GlobalModel | None = None
        self._end: RunEnd | None = None
        self.run_end_watch = RunEndWatch()   # the coordinator's state, this run's model seen, a held run_end
        self._error = ""                  # why the last model could not be trained here ("" when it could)
        self._birth_fixed_at = 0.0
        self._leaving = False
        self.rounds_trained: list[int] = []
        self._last_update: SentUpdate | None = None
        self._id_clashes: set[str] = set()  # instances of other processes seen online with our client id
        self.receiver = ChunkedReceiver(int(settings.max_payload_mb * 1024 * 1024))
        self.progress = ClientProgress(settings.client_id, str(settings.broker))  # __main__ sets a live one
        self.link = MqttLink(
            client_id=f"fedmq-client-{settings.client_id}",
            address=settings.broker,
            subscriptions=[(self.topics.global_model, 1), (chunk_topic(self.topics.global_model, "+"), 1),
                           (self.topics.run_end, 1), (self.topics.coordinator_state, 1),
                           (self.topics.client_status(settings.client_id), 1)],
            on_message=self._on_message,
            will=(self.topics.client_status(settings.client_id), self._status("offline").encode()),
            on_connected=self._announce,
            reconnect_jitter=ReconnectJitter(),   # a fleet dropped by a broker restart comes back spread out
        )
        self.link.on_refused = self._on_refused
        self.transform_update = transform_update
        self.encoder = UpdateEncoder(ResidualStore(settings.state_dir))   # used when the uplink is compressed

    def _status(self, status: str) -> ClientStatus:
        return ClientStatus(run=self.settings.run, round=self.rounds_trained[-1] if self.rounds_trained else 0,
                            sender=self.settings.client_id, status=status, software=f"fedmq {SOFTWARE_VERSION}",
                            num_examples=self.trainer.num_examples, device=device_info(),
                            error=getattr(self, "_error", ""))

    def _announce(self) -> None:
        self.link.publish(self.topics.client_status(self.settings.client_id), self._status("online").encode(),
                          qos=1, retain=True)

    # ---- receiving: paho's network thread queues, the loop thread handles ---------------------------------

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """On paho's network thread: queue, waiting while the inbox is full (backpressure, nothing dropped)."""
        self.inbox.put(Inbound(topic, payload, retained))

    def _on_refused(self) -> None:
        """On paho's network thread: the broker refused the login; wake the loop, which reads link.refused."""
        self.inbox.put(Inbound(_REFUSED, b"", False))

    def _drain(self) -> bool:
        """Handle every message queued now, without waiting; True if the model or the run's end changed."""
        changed = False
        while (item := self.inbox.get(0)) is not None:
            changed = self._handle(item) or changed
        return changed

    def _handle(self, item: Inbound) -> bool:
        """Decode and handle one message; True if it changed the latest model or the run's end."""
        topic, payload, retained = item.topic, item.payload, item.retained
        if topic == _REFUSED:
            return True  # the loop reads link.refused
        if topic == self.topics.client_status(self.settings.client_id):
            self._check_own_status(payload)
            return False
        if not payload:
            if topic == self.topics.run_end:
                self.run_end_watch.cleared()
            return False  # a cleared retained message
        try:
            received = self.receiver.receive(topic, payload)
        except DecodeError as exc:
            log.warning("ignored a bad message on %s: %s", topic, exc)
            return False
        finally:
            self.receiver.expire()
        if received is None:
            return False  # a chunk of a model still being reassembled
        topic, message = received.topic, received.message
        if message.run != self.settings.run:
            log.warning("ignored a message for run %r on %s", message.run, topic)
            return False
        if topic == self.topics.global_model and isinstance(message, GlobalModel):
            self.run_end_watch.seen_run_model = True
            # The retained model topic holds one model, published by one coordinator: the last one received
            # is the current one, even with a lower round (the coordinator replaced a forged one).
            self._latest = message
        elif topic == self.topics.run_end and isinstance(message, RunEnd):
            end = self.run_end_watch.end(message, retained)
            if end is None:
                state = self.run_end_watch.coordinator
                if self.run_end_watch.held is not None and state is not None:
                    # A retained end while the last state known says the coordinator runs: one from after this
                    # client lost its connection (the new retained state comes next), or a forgery (the
                    # coordinator replaces it). Held until a newer state, or until it is cleared.
                    log.info("held a retained run_end: the coordinator's last state known is %s in round %d",
                             state.phase, state.round)
                elif state is not None and self.run_end_watch.coordinator_running():
                    # A live run_end while the coordinator trains: it did not send it (a broker without logins
                    # lets anyone publish).
                    log.warning("ignored a run_end while the coordinator is %s in round %d", state.phase, state.round)
                else:
                    log.info("run %r ended earlier (%s); waiting for it to start again", message.run, message.reason)
                return False
            self._end = end
        elif topic == self.topics.coordinator_state and isinstance(message, CoordinatorState):
            end = self.run_end_watch.state(message)
            if end is None:
                return False
            log.info("the coordinator is %s (%s): the run_end held back counts now", message.status, message.phase)
            self._end = end
        else:
            log.warning("ignored a %s message on %s", message.TYPE, topic)
            return False
        return True

    def _check_own_status(self, payload: bytes) -> None:
        """Our status topic: if it holds anything but our own birth while we are connected (another process's
        status, or an "offline" someone else published), publish our birth again (at most once a second)."""
        if not self.link.connected.is_set() or self._leaving:
            return
        try:
            status = decode_message(payload, 64 * 1024) if payload else None
        except DecodeError:
            status = None
        if (isinstance(status, ClientStatus) and status.status == "online"
                and status.device.get("instance") == INSTANCE):
            return
        now = time.monotonic()
        if now - self._birth_fixed_at < 1.0:
            return
        self._birth_fixed_at = now
        if isinstance(status, ClientStatus) and status.status == "online":
            host, pid = str(status.device.get("host", "?"))[:64], str(status.device.get("pid", "?"))[:16]
            instance = str(status.device.get("instance", ""))[:64]
            if instance not in self._id_clashes:  # once per other process: it may go on for a while
                self._id_clashes.add(instance)
                log.error("client id %r is also used by another process (host %s, pid %s): the broker drops one "
                          "of the two connections whenever the other connects. Stop one, or give it another "
                          "--client-id", self.settings.client_id, host, pid)
            log.warning("another process announced itself as %r (host %s, pid %s); re-announcing this one",
                        self.settings.client_id, host, pid)
        else:
            log.warning("this client's status topic says it is offline; announcing it again")
        self._announce()

    # ---- main loop ---------------------------------------------------------------------------------------

    def run(self, max_rounds: int = 0) -> int:
        """Train until the run ends (or `max_rounds` were trained); return the number of rounds trained."""
        log.info("client %s: %d local examples (%s); broker %s, run %r", self.settings.client_id,
                 self.trainer.num_examples, self.trainer.description, self.settings.broker, self.settings.run)
        if isinstance(self.trainer, KerasTrainer):
            import keras  # noqa: F401  (import TensorFlow now, not inside the first round)

        self.link.start()
        handled: GlobalModel | None = None
        again = False   # look again at once: a newer model may have arrived while the last one was handled
        try:
            while True:
                if not again and not self._drain():
                    item = self.inbox.get(timeout=30)
                    if item is not None:
                        self._handle(item)
                        self._drain()
                again = False
                if self.link.refused:
                    raise BrokerRefusedError(
                        f"the broker at {self.settings.broker} refused the login of {self.settings.client_id!r}: "
                        f"{self.link.refused} (wrong password file, or the device was revoked)")
                end, model = self._end, self._latest
                if model is not None and model is not handled and (end is None or model.round > end.round):
                    handled = model
                    if self._handle_model(model) and max_rounds and len(self.rounds_trained) >= max_rounds:
                        break
                    again = True
                elif end is not None:
                    log.info("run %r %s (final test %s); %d rounds trained here", end.run, end.reason,
                             end.result_text(), len(self.rounds_trained))
                    if self._error and not self.rounds_trained:
                        raise IncompatibleModelError(self._error)
                    break
                elif model is None and not self.link.connected.is_set():
                    log.info("waiting for the broker at %s", self.settings.broker)
        finally:
            self._shutdown()
        return len(self.rounds_trained)

    def _handle_model(self, model: GlobalModel) -> bool:
        """Train on a new round's model, or re-send the update of a model seen before; True if trained.

        The same round's model comes again when the coordinator or the broker restarted; the update
        it lost is sent again and the coordinator counts it once."""
        last = self._last_update
        if last is None or model.round > last.round or (
                model.round == last.round and model.weights_sha256 != last.weights_sha256):
            if not model.asks(self.settings.client_id):
                log.info("round %d: not in this round's cohort (%d clients asked); waiting for the next round",
                         model.round, len(model.cohort or ()))
                self.progress.set_phase(f"not asked to train in round {model.round}")
                return False
            try:
                return self._train_and_publish(model)
            except IncompatibleModelError as exc:
                self._refuse(model, str(exc))
                return False
        if model.round == last.round:
            log.info("round %d: the coordinator offers the same model again; re-sending this client's update",
                     model.round)
            for topic, part in last.messages:
                self.link.publish(topic, part, qos=1)
        return False

    def _refuse(self, model: GlobalModel, reason: str) -> None:
        """This device can't train `model`: say why here and in its status, and wait for the next model."""
        log.error("round %d: can't train the coordinator's model: %s; waiting for the next model", model.round,
                  reason)
        self.progress.set_phase(f"can't train round {model.round}: {reason}")
        if reason != self._error:
            self._error = reason
            self._announce()

    def _shutdown(self) -> None:
        self._leaving = True  # our own "offline" coming back is not a forgery to answer
        if self.link.connected.is_set():
            self.link.publish_and_wait(self.topics.client_status(self.settings.client_id),
                                       self._status("offline").encode(), retain=True, timeout=5)
        self.link.stop()

    def _train_and_publish(self, message: GlobalModel) -> bool:
        """Train on `message`'s model and publish the update; False if a newer model came meanwhile (then the
        update would be late, so it is dropped and the newer model is trained next)."""
        try:
            check_finite(message.tensors)
        except DecodeError as exc:
            raise IncompatibleModelError(f"global model of round {message.round}: {exc}") from None
        weights = [w for _, w in message.tensors]
        plan = message.train
        self.trainer.check(weights, plan, message.model)   # builds the model: a refusal comes before training
        if self._error:
            self._error = ""
            self._announce()
        log.info("round %d/%d: training %d epoch(s) on %d examples", message.round, message.total_rounds,
                 plan.epochs, self.trainer.num_examples)
        self.progress.training_started(message.round, message.total_rounds, plan.epochs)
        # Messages that arrive while training are handled between batches, on this thread.
        context = RoundContext(message.round, message.total_rounds, self.settings.seed, self._drain,
                               [self.progress.keras_callback()] if isinstance(self.trainer, KerasTrainer) else [],
                               stop_requested=lambda: self._run_ended(message.round))
        started = time.monotonic()
        try:
            result = checked_result(self.trainer.fit(weights, plan, message.model, context), message.tensors,
                                    self.trainer.description)
        except IncompatibleModelError:
            raise
        except Exception as exc:  # the training code failed: the device says why and waits for the next model
            log.error("round %d: training failed", message.round, exc_info=not isinstance(self.trainer, KerasTrainer))
            raise IncompatibleModelError(f"training failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                                         ) from None
        self._simulate_slowdown(time.monotonic() - started, message.round)
        if self._run_ended(message.round):
            # A slow device (or one that started on the last model as the run closed) stops as soon as the run's
            # end arrives, not after its whole fit: nothing would aggregate the update.
            log.info("round %d: the run ended while this device trained; the update is not sent", message.round)
            self.progress.set_phase(f"the run ended during round {message.round}; update not sent")
            return False
        train_time = time.monotonic() - started
        metrics = {**result.metrics, "train_time_s": round(train_time, 4)}
        trained = self._update_weights(weights, result.weights)
        self._drain()
        latest = self._latest
        newer = latest if latest is not None and latest.round > message.round and latest.model == message.model \
            and plan.mode == "sync" else None   # async: a stale update still counts (weighted by its staleness)
        if newer is not None:
            log.info("round %d: trained, but the model of round %d arrived meanwhile; this update would be late, so "
                     "it is dropped", message.round, newer.round)
            self.progress.set_phase(f"round {message.round} closed while training; dropped the update")
            return False
        names = [name for name, _ in message.tensors]
        update = Update(run=self.settings.run, round=message.round, sender=self.settings.client_id,
                        num_examples=result.num_examples, metrics=metrics, tensors=list(zip(names, trained)))
        encoding = plan.encoding
        if encoding.sends_deltas:  # the encode step (edge_client/update_encoding.py): deltas, error feedback
            update.tensors = self.encoder.encode(self.settings.run, message.round, message.weights_sha256,
                                                 names, weights, trained, encoding)
            update.base_sha256 = message.weights_sha256
        payload = update.encode()
        chunk = min((c for c in (self.settings.chunk_bytes, plan.chunk_bytes) if c), default=0)
        messages = outgoing_messages(self.topics.update(self.settings.client_id), payload, chunk,
                                     self.settings.run, message.round, self.settings.client_id)
        self._last_update = SentUpdate(message.round, message.weights_sha256, messages)
        for topic, part in messages[:-1]:
            self.link.publish(topic, part, qos=1)
        ok = self.link.publish_and_wait(*messages[-1], qos=1, timeout=120)
        self.rounds_trained.append(message.round)
        self.progress.round_done(message.round, result.metrics, train_time, ok)
        shown = ", ".join(f"{name} {value:.4f}" for name, value in list(result.metrics.items())[:4])
        log.info("round %d: trained in %.1f s (%s); update of %.2f MB %s", message.round, train_time,
                 shown or "no metrics", len(payload) / 1e6, "published" if ok else "queued until the broker is back")
        return True

    def _update_weights(self, global_weights: list[np.ndarray], trained: list[np.ndarray]) -> list[np.ndarray]:
        """The weights to send: the trained ones, or what the transform_update hook (tests only) makes of them."""
        return trained if self.transform_update is None else self.transform_update(global_weights, trained)

    def _run_ended(self, round_: int) -> bool:
        """True once the run's end (for this round or later) has arrived: training for `round_` is no longer wanted."""
        return self._end is not None and self._end.round >= round_

    def _simulate_slowdown(self, real_s: float, round_: int) -> None:
        """--slowdown N: wait (N - 1) x the real training time, handling messages meanwhile, as a slower device
        would (uneven fleets in tests and benchmarks; nothing on the wire changes); a run's end cuts it short."""
        end = time.monotonic() + (self.settings.slowdown - 1.0) * real_s
        while (left := end - time.monotonic()) > 0 and not self._run_ended(round_):
            item = self.inbox.get(timeout=min(left, 0.5))
            if item is not None:
                self._handle(item)
