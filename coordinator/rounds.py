"""The round state machine: who is online, who is asked to train, which updates count and when a round closes,
as pure logic over typed events and an explicit clock (no MQTT, no Keras, no threads).

The engine feeds it events (a client online, offline or unfit; an update that passed validation; time passing)
and acts on what comes out: a cohort to publish, a top-up of the cohort, a drop reason, close, overdue or stop."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from coordinator.cohort import SamplingRule
from coordinator.quorum import Decision, QuorumRule, RoundTracker

__all__ = ["Decision", "Drop", "Opened", "Poll", "Rounds", "RoundClosed", "Waiting", "WaitState"]


@dataclass(frozen=True)
class Drop:
    """Why a message for the rounds is refused before anything of it is kept: a DecodeError reason and detail."""

    reason: str   # sender_mismatch, wrong_run, late, wrong_round, not_in_cohort, duplicate
    detail: str


@dataclass(frozen=True)
class Opened:
    """A round just opened: the cohort to publish the model to."""

    round: int
    cohort: frozenset[str]
    online: int            # trainable clients online when it opened
    target: int            # updates that close it before its deadline
    deadline: float


@dataclass(frozen=True)
class Poll:
    """What the open round needs now. `top_up`: members added to the cohort (re-publish the model to the whole
    `cohort`); `impossible`: the quorum just became impossible with the clients online (say so once);
    `first_overdue`: the deadline just passed without a quorum while on_no_quorum is wait (say so once)."""

    decision: Decision
    top_up: frozenset[str] = frozenset()
    cohort: frozenset[str] = frozenset()
    impossible: bool = False
    first_overdue: bool = False


@dataclass(frozen=True)
class RoundClosed:
    round: int
    round_time_s: float
    cohort_size: int


class WaitState(Enum):
    WAITING = "waiting"      # too few trainable clients online (or the start grace period is running)
    READY = "ready"          # a round can open
    GAVE_UP = "gave_up"      # quorum.wait_for_clients_s passed before round 1 could start


@dataclass(frozen=True)
class Waiting:
    state: WaitState
    timeout_s: float         # how long to wait for the next event before asking again


@dataclass
class _Wait:
    first: bool
    started: float
    limit_s: float
    grace_end: float | None = None


@dataclass
class Rounds:
    """The rounds of one run. Feed it events, ask it what to do.

    Clients: `client_online`, `client_offline` (a cleared or offline status), a fitness error in the status
    (`client_online(..., error)`: online but unable to train this run's model). Rounds: `start_waiting` /
    `waiting` before a round, `open`, `check` every message on an update topic (chunks and manifests too),
    `accept` an update that passed validation, `poll` on every event and timer, `close`."""

    quorum: QuorumRule
    sampling: SamplingRule
    run: str
    wait_for_clients_s: float = 0.0
    start_grace_s: float = 0.0
    poll_s: float = 0.5
    max_staleness: int | None = None   # async (FedBuff): accept updates up to this many versions old; None: sync
    buffer_size: int = 0               # async: updates per step (0: quorum.min_clients)
    oldest_version: int = 0            # async: the oldest version still known (a resumed run forgot older ones)
    online: set[str] = field(default_factory=set)
    unfit: dict[str, str] = field(default_factory=dict)   # online clients that said why they can't train
    last_closed: int = 0
    tracker: RoundTracker | None = None
    _wait: _Wait | None = None
    _impossible_said: bool = False
    _overdue_said: bool = False
    _stale_seen: set[tuple[str, int]] = field(default_factory=set)   # async: (client, version) of stale updates

    @property
    def asynchronous(self) -> bool:
        return self.max_staleness is not None

    # ---- clients ---------------------------------------------------------------------------------------------

    def trainable(self) -> set[str]:
        """Online training clients that have not said they can't train this run's model."""
        return {cid for cid in self.online if cid not in self.unfit}

    def client_online(self, client_id: str, error: str = "") -> bool:
        """A client's online status (with its fitness error, "" when it can train); True if it was offline."""
        new = client_id not in self.online
        self.online.add(client_id)
        if error:
            self.unfit[client_id] = error
        else:
            self.unfit.pop(client_id, None)
        return new

    def client_offline(self, client_id: str) -> bool:
        """A client's offline (or cleared) status; True if it was online."""
        self.unfit.pop(client_id, None)
        if client_id in self.online:
            self.online.discard(client_id)
            return True
        return False

    # ---- before a round --------------------------------------------------------------------------------------

    def start_waiting(self, now: float, first: bool) -> None:
        """Before a round: wait for min_available_clients trainable clients; before the run's first round also for
        at most wait_for_clients_s, then a start_grace_s grace period for clients starting together."""
        self._wait = _Wait(first, now, self.wait_for_clients_s if first else 0.0)

    @property
    def need(self) -> int:
        return self.sampling.min_available_clients

    def enough_clients(self) -> bool:
        return len(self.online) - len(self.unfit) >= self.need   # unfit clients are online ones: O(1)

    def waiting(self, now: float) -> Waiting:
        w = self._wait
        assert w is not None, "start_waiting first"
        if w.grace_end is None:
            if not self.enough_clients():
                if w.limit_s and now - w.started > w.limit_s:
                    return Waiting(WaitState.GAVE_UP, 0.0)
                return Waiting(WaitState.WAITING, self.poll_s)
            if not w.first:
                return Waiting(WaitState.READY, 0.0)
            w.grace_end = now + self.start_grace_s
        left = w.grace_end - now
        if left > 0:   # clients starting together arrive within moments
            return Waiting(WaitState.WAITING, min(self.poll_s, left))
        return Waiting(WaitState.READY, 0.0)

    # ---- the open round --------------------------------------------------------------------------------------

    def sample(self, round_: int) -> frozenset[str]:
        """Round `round_`'s cohort, sampled from the trainable clients online now."""
        return self.sampling.sample(self.trainable(), round_)

    def open(self, round_: int, now: float, cohort: frozenset[str] | None = None) -> Opened:
        """Open round `round_` with `cohort` (by default `sample(round_)`): its deadline counts from `now`."""
        trainable = self.trainable()
        cohort = self.sample(round_) if cohort is None else cohort
        self.tracker = RoundTracker(self.quorum, round_, now, cohort,
                                    fixed_target=(self.buffer_size or self.quorum.min_clients) if self.asynchronous
                                    else 0)
        if self.max_staleness is not None:
            self._stale_seen = {(c, r) for c, r in self._stale_seen if round_ - r <= self.max_staleness}
        self._wait = None
        self._impossible_said = self._overdue_said = False
        return Opened(round_, cohort, len(trainable), self.tracker.target, self.tracker.deadline)

    @property
    def open_round(self) -> int | None:
        return self.tracker.round if self.tracker else None

    def check(self, client_id: str, type_: str, sender: str, run: str, round_: int,
              sender_text: str = "", run_text: str = "") -> Drop | None:
        """The checks every message on an update topic passes, chunks and manifests included, before anything of
        it is kept: sender, run, the open round, the cohort, a first update. None: keep it."""
        if sender != client_id:
            return Drop("sender_mismatch", f"payload names sender {sender_text or sender!r}, topic says {client_id!r}")
        if run != self.run:
            return Drop("wrong_run", f"{type_} for run {run_text or run!r}")
        if self.max_staleness is not None:
            return self._check_async(client_id, type_, round_)
        tracker = self.tracker
        if tracker is None or round_ != tracker.round:
            if round_ <= self.last_closed:
                return Drop("late", f"{type_} for round {round_}, which has closed")
            open_round = tracker.round if tracker else "none"
            return Drop("wrong_round", f"{type_} for round {round_}, open round is {open_round}")
        if not tracker.in_cohort(client_id):
            return Drop("not_in_cohort", f"{type_} for round {round_} from a client not asked to train in it")
        if client_id in tracker.received:
            return Drop("duplicate", f"second update for round {round_}")
        return None

    def _check_async(self, client_id: str, type_: str, round_: int) -> Drop | None:
        """Async: any online device's update trained on the current version or one at most max_staleness older,
        once per (device, version)."""
        assert self.max_staleness is not None
        current = self.tracker.round if self.tracker else self.last_closed + 1
        if round_ > current:
            return Drop("wrong_round", f"{type_} for version {round_}, the newest is {current}")
        staleness = current - round_
        if staleness > self.max_staleness:
            return Drop("stale", f"{type_} trained on version {round_}, {staleness} versions old (at most "
                                 f"{self.max_staleness} accepted: [aggregation] max_staleness)")
        if round_ < self.oldest_version:
            return Drop("stale", f"{type_} trained on version {round_}, from before the coordinator restarted at "
                                 f"version {self.oldest_version}: the versions its delta is measured against are gone")
        fresh = staleness == 0
        if fresh and self.tracker is not None and client_id in self.tracker.received \
                or not fresh and (client_id, round_) in self._stale_seen:
            return Drop("duplicate", f"second update trained on version {round_}")
        return None

    def accept(self, client_id: str, round_: int | None = None) -> bool:
        """Count a validated update of the open round (it passed `check`; async: `round_` is the version it was
        trained on); True if its sender was seen offline (an update proves it is there: it is online again)."""
        tracker = self.tracker
        assert tracker is not None, "no open round"
        if self.asynchronous and round_ is not None and round_ != tracker.round:
            self._stale_seen.add((client_id, round_))
            tracker.stale += 1
            added = True
        else:
            if self.asynchronous:
                tracker.extend({client_id})   # async: any online device trains; it need not be in the cohort
            added = tracker.add(client_id)
        assert added, f"{client_id} passed no check for round {tracker.round}"
        if client_id in self.online:
            return False
        self.online.add(client_id)
        return True

    @property
    def received(self) -> int:
        return self.tracker.count if self.tracker else 0

    def poll(self, now: float) -> Poll:
        """After every event and on a timer: top the cohort up when too few of its members are online for a
        quorum, then decide."""
        t = self.tracker
        assert t is not None, "no open round"
        online = self.trainable() if self.unfit else self.online   # read only here: no copy per event
        added = self._top_up(t, online)
        decision = t.decide(now, online)
        possible = t.quorum_possible(online)
        impossible = not possible and not self._impossible_said
        self._impossible_said = not possible
        first_overdue = decision is Decision.OVERDUE and not self._overdue_said
        if first_overdue:
            self._overdue_said = True
        return Poll(decision, added, t.expected, impossible, first_overdue)

    def _top_up(self, t: RoundTracker, online: set[str]) -> frozenset[str]:
        """Ask more clients when too few cohort members are left online for a quorum (members went offline, or
        fewer clients than min_clients were online when the round started). Members that already answered are
        not asked again."""
        missing = t.missing_for_quorum(online)
        if not missing:
            return frozenset()
        candidates = online - t.expected
        if not candidates:
            return frozenset()
        added = SamplingRule(min_train_clients=missing, fraction_train=1e-9, seed=self.sampling.seed) \
            .sample(candidates, t.round)
        t.extend(set(added))
        return added

    def timeout(self, now: float) -> float:
        """How long to wait for the next event before polling the open round again."""
        assert self.tracker is not None
        return min(self.poll_s, max(0.01, self.tracker.deadline - now))

    def waiting_for(self) -> set[str]:
        """Cohort members online that have not answered yet."""
        assert self.tracker is not None
        return self.tracker.waiting_for(self.trainable())

    def close(self, now: float) -> RoundClosed:
        t = self.tracker
        assert t is not None, "no open round"
        closed = RoundClosed(t.round, now - t.started_at, len(t.expected))
        self.tracker = None
        self.last_closed = t.round
        return closed
