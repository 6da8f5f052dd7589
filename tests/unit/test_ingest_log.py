"""The coordinator's log at a fleet's rate (coordinator.ingest_log) and the panel's client lists at a fleet's size:
per-event lines at INFO only for small federations, one summary a few times a second, a few ids named."""

from __future__ import annotations

import logging

import pytest

from coordinator.ingest_log import IngestLog
from coordinator.progress import RunProgress, first_ids
from tests.unit.test_progress import text_of


def test_per_event_lines_are_info_for_a_small_federation_and_debug_for_a_fleet() -> None:
    ingest = IngestLog(logging.getLogger("test"), detail_up_to=20)
    assert ingest.level(3) == logging.INFO and ingest.level(20) == logging.INFO
    assert ingest.level(21) == logging.DEBUG


def test_one_summary_at_most_every_interval_with_counts_and_rate(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    ingest = IngestLog(logging.getLogger("test.ingest"), detail_up_to=20, every_s=0.5, clock=lambda: now[0])
    caplog.set_level(logging.INFO, "test.ingest")
    ingest.births += 1000
    for t in (100.1, 100.2, 100.3):
        now[0] = t
        ingest.updates += 10
        ingest.maybe_summary(1000, 3, ingest.updates, 1000, 2)
    assert not caplog.records, "nothing before the interval passed"
    now[0] = 100.5
    ingest.maybe_summary(1000, 3, 30, 1000, 2)
    assert [r.getMessage() for r in caplog.records] == \
        ["round 3: 30/1000 updates, 60/s, 2 refused; clients: 1000 online (+1000 came, 0 left)"]
    now[0] = 101.5
    ingest.maybe_summary(1000, 3, 30, 1000, 2)
    assert len(caplog.records) == 1, "nothing happened since: no line"
    ingest.updates += 1
    now[0] = 102.5
    small = IngestLog(logging.getLogger("test.ingest"), detail_up_to=20, clock=lambda: now[0])
    small.updates += 5
    now[0] = 110.0
    small.maybe_summary(5, 1, 5, 5, 0)
    assert len(caplog.records) == 1, "a small federation has its per-event lines instead"


def test_the_panel_names_a_few_of_a_fleets_ids_and_counts_the_rest() -> None:
    progress = RunProgress("fleet", 3)
    for i in range(1500):
        progress.client_online(f"dev-{i:04d}")
    for i in range(0, 1500, 3):
        progress.client_offline(f"dev-{i:04d}")
    progress.round_started(1, expected=1000, deadline=1e9)
    for i in range(1, 200):
        progress.update_accepted(f"dev-{i:04d}", i, 1000)
    text = text_of(progress.render(now=0.0))
    assert "1000 online: dev-0001, dev-0002, dev-0004" in text and "and 992 more" in text
    assert "500 offline: dev-0000, dev-0003" in text and "and 492 more" in text
    assert "199 / 1000 received (..., dev-0192" in text and "dev-0199)" in text
    assert first_ids(["b", "a"]) == "a, b" and first_ids(set()) == ""
