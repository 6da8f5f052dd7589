"""Live progress of a coordinator run: a rich panel on a terminal, the engine's plain log lines elsewhere.

The engine calls a RunProgress at a few points; `configure_logging` puts log lines above the panel."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field, replace

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from coordinator.metrics import RoundMetrics
from federation.cli.console import configure_logging as _configure_logging
from federation.cli.console import LivePanel
from federation.cli.console import terminal_console as terminal_console  # re-exported

SHOWN_IDS = 8   # ids the panel names per list (online, offline, last updates); the rest are counted

ROUND_LOG = logging.getLogger("coordinator.rounds")
"""The one line per closed round; logged at every --log-level (see `configure_logging`)."""


def configure_logging(level: str, console: Console | None = None) -> None:
    """Log at `level`, above the live panel when there is a console; the per-round line (ROUND_LOG) is
    logged at every level, WARNING and ERROR included."""
    _configure_logging(level, console, always_info=(ROUND_LOG.name,))


@dataclass
class ProgressState:
    """What the panel shows: a copy is taken under a lock for every refresh."""

    run: str
    total_rounds: int
    round: int = 0
    phase: str = "starting"
    detail: str = ""
    received: int = 0
    expected: int = 0
    deadline: float | None = None               # time.monotonic() when the open round's deadline passes
    online: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)  # every client that was online at some point
    last_updates: deque[str] = field(default_factory=lambda: deque(maxlen=SHOWN_IDS))   # the latest few senders
    last: RoundMetrics | None = None
    rounds_closed: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # device -> why it can't train this run's model
    sites: dict[str, int] = field(default_factory=dict)     # site relay online -> its devices online


class RunProgress(LivePanel):
    """Follows a run for the operator. With a console it draws a live panel; without one it only keeps
    the state (the engine logs its own lines), so the engine can call it unconditionally."""

    def __init__(self, run: str, total_rounds: int, console: Console | None = None,
                 refresh_per_second: float = 2.0) -> None:
        self._state = ProgressState(run, total_rounds)
        self._lock = threading.Lock()
        super().__init__(console, refresh_per_second)

    def snapshot(self) -> ProgressState:
        with self._lock:
            return replace(self._state, online=set(self._state.online), seen=set(self._state.seen),
                           last_updates=deque(self._state.last_updates, maxlen=SHOWN_IDS),
                           problems=dict(self._state.problems), sites=dict(self._state.sites))

    # ---- what the engine reports --------------------------------------------------------------------

    def state_changed(self, round_: int, phase: str, online: Collection[str] | None = None,
                      detail: str = "") -> None:
        """The run's round, phase and detail; `online` replaces the online clients (O(len)); None keeps them, as
        kept up to date by `client_online` and `client_offline` (O(1) per event)."""
        with self._lock:
            s = self._state
            s.round, s.phase, s.detail = round_, phase, detail
            if online is not None:
                s.online = set(online)
                s.seen.update(s.online)

    def client_online(self, client_id: str) -> None:
        with self._lock:
            self._state.online.add(client_id)
            self._state.seen.add(client_id)

    def client_offline(self, client_id: str) -> None:
        with self._lock:
            self._state.online.discard(client_id)

    def sites_changed(self, sites: dict[str, int]) -> None:
        """The site relays online and their devices online (their devices are also among the online clients)."""
        with self._lock:
            self._state.sites = dict(sites)

    def round_started(self, round_: int, expected: int, deadline: float) -> None:
        with self._lock:
            s = self._state
            s.round, s.received, s.expected, s.deadline = round_, 0, expected, deadline
            s.last_updates.clear()

    def update_accepted(self, client_id: str, received: int, expected: int) -> None:
        with self._lock:
            s = self._state
            s.received, s.expected = received, expected
            s.last_updates.append(client_id)

    def device_problem(self, client_id: str, error: str) -> None:
        """A device said why it can't train this run's model ("" once it can again)."""
        with self._lock:
            if error:
                self._state.problems[client_id] = error
            else:
                self._state.problems.pop(client_id, None)

    def round_closed(self, metrics: RoundMetrics) -> None:
        with self._lock:
            s = self._state
            s.last, s.deadline, s.rounds_closed = metrics, None, max(s.rounds_closed, metrics.round)

    def finished(self, phase: str, detail: str = "") -> None:
        """The run is over (`done` or `stopped`): the last panel says so."""
        with self._lock:
            s = self._state
            s.phase, s.detail, s.deadline = phase, detail, None

    # ---- drawing ------------------------------------------------------------------------------------

    def render(self, now: float | None = None) -> RenderableType:
        """The panel: round, phase, updates received of expected, time to the deadline, last accuracy (a
        regression's MAE and RMSE), clients online and offline."""
        s = self.snapshot()
        now = time.monotonic() if now is None else now
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column()
        bar = ProgressBar(total=max(1, s.total_rounds), completed=s.rounds_closed, width=30)
        grid.add_row("round", Group(Text(f"{s.round} / {s.total_rounds}  ({s.rounds_closed} closed)"), bar))
        grid.add_row("phase", Text(s.phase + (f": {s.detail}" if s.detail else "")))
        if s.deadline is not None:
            grid.add_row("updates", Text(f"{s.received} / {s.expected} received"
                                         + (f" ({'..., ' if s.received > len(s.last_updates) else ''}"
                                            f"{', '.join(s.last_updates)})" if s.last_updates else "")))
            grid.add_row("deadline", Text(format_remaining(s.deadline - now)))
        if s.last is not None:
            m = s.last
            result = (f"MAE {m.test_mae:.4g}, RMSE {m.test_rmse:.4g}" if m.is_regression
                      else f"accuracy {m.test_accuracy:.4f}")
            grid.add_row("last round", Text(f"round {m.round}: {result}, loss {m.test_loss:.4f}, "
                                            f"{m.clients} clients, {m.round_time_s:.1f} s"))
        else:
            grid.add_row("last round", Text("none yet", style="dim"))
        offline = s.seen - s.online
        clients = Text(f"{len(s.online)} online", style="green")
        if s.online:
            clients.append(f": {first_ids(s.online)}")
        if offline:
            clients.append(f"\n{len(offline)} offline: {first_ids(offline)}", style="red")
        grid.add_row("clients", clients)
        if s.sites:
            shown = sorted(s.sites.items())[:SHOWN_IDS]
            sites = Text(f"{len(s.sites)} relays, {sum(s.sites.values())} devices: "
                         + ", ".join(f"{site} {count}" for site, count in shown)
                         + (f" and {len(s.sites) - len(shown)} more" if len(s.sites) > len(shown) else ""))
            grid.add_row("sites", sites)
        if s.problems:
            problems = Text(style="red")
            for client_id, error in list(s.problems.items())[:5]:
                problems.append(f"{client_id}: {error}\n")
            if len(s.problems) > 5:
                problems.append(f"and {len(s.problems) - 5} more devices")
            grid.add_row("can't train", problems)
        return Panel(grid, title=f"fedmq coordinator, run {s.run}", title_align="left", expand=False)


def first_ids(ids: Collection[str], shown: int = SHOWN_IDS) -> str:
    """"a, b, c and 997 more": the first few ids in sorted order (no full sort of a fleet's ids)."""
    first = heapq.nsmallest(shown, ids)
    return ", ".join(first) + (f" and {len(ids) - len(first)} more" if len(ids) > len(first) else "")


def format_remaining(seconds: float) -> str:
    """'in 4 m 05 s', or 'passed 12 s ago' for a deadline in the past."""
    if seconds < 0:
        return f"passed {_duration(-seconds)} ago"
    return f"in {_duration(seconds)}"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} m"
    if whole >= 60:
        return f"{whole // 60} m {whole % 60:02d} s"
    return f"{whole} s"
