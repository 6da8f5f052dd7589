"""The run_end rule shared by the edge client and the simulator (edge_client/run_end_watch.py): when a run_end
counts, and a held one counted once a newer coordinator state says the run is over."""

from __future__ import annotations

import pytest

from edge_client.run_end_watch import RunEndWatch
from federation.protocol.messages import CoordinatorState, RunEnd

END = RunEnd(run="r1", round=3, sender="coordinator", reason="completed")


def _state(status: str, phase: str) -> CoordinatorState:
    return CoordinatorState(run="r1", round=3, sender="coordinator", status=status, phase=phase)


@pytest.mark.parametrize(("status", "phase", "retained", "seen", "honoured"), [
    ("online", "training", False, True, False),     # a forgery while the coordinator trains
    ("online", "done", False, True, True),
    ("offline", "training", False, True, True),
    (None, None, True, False, False),               # a retained end of an earlier run, before any model
    (None, None, True, True, True),
    ("online", "exporting", True, True, True),
])
def test_run_end_is_honoured_as_protocol_step_8_says(status: str | None, phase: str | None, retained: bool,
                                                     seen: bool, honoured: bool) -> None:
    watch = RunEndWatch(seen_run_model=seen, coordinator=_state(status, phase) if status and phase else None)
    assert (watch.end(END, retained) is END) is honoured


def test_an_end_held_while_the_coordinator_ran_counts_when_a_state_says_it_is_over() -> None:
    watch = RunEndWatch(seen_run_model=True, coordinator=_state("online", "training"))
    assert watch.end(END, retained=True) is None and watch.held is END
    assert watch.state(_state("online", "aggregating")) is None, "still running: still held"
    assert watch.state(_state("offline", "done")) is END
    assert watch.held is None
    assert watch.state(_state("offline", "done")) is None, "honoured once"


def test_a_cleared_or_replaced_end_is_not_held() -> None:
    watch = RunEndWatch(seen_run_model=True, coordinator=_state("online", "training"))
    watch.end(END, retained=True)
    watch.cleared()
    assert watch.state(_state("offline", "training")) is None
    watch = RunEndWatch(seen_run_model=True, coordinator=_state("online", "training"))
    watch.end(END, retained=True)
    watch.coordinator = _state("online", "done")
    assert watch.end(END, retained=False) is END and watch.held is None


def test_an_earlier_runs_retained_end_is_not_honoured_even_when_the_state_says_done() -> None:
    watch = RunEndWatch(seen_run_model=False, coordinator=_state("online", "training"))
    assert watch.end(END, retained=True) is None
    assert watch.state(_state("offline", "done")) is None


def test_a_live_end_while_the_coordinator_runs_is_a_forgery_and_not_held() -> None:
    """The coordinator publishes its ending state before its run_end on one connection: a live run_end while it
    trains was not sent by it, and must not count later (say when the coordinator dies and resumes)."""
    watch = RunEndWatch(seen_run_model=True, coordinator=_state("online", "training"))
    assert watch.end(END, retained=False) is None and watch.held is None
    assert watch.state(_state("offline", "training")) is None
