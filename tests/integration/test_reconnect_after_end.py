"""A real edge client whose network goes away while it trains the last round and comes back after the run ended:
on reconnecting it gets the retained run_end before the retained coordinator state (the broker sends them in the
order subscribed), while the state it knew said "training". It must still see the end, and exit."""

from __future__ import annotations

import sys

import pytest

from demo.local_federation import LocalFederation
from tests.integration.cuttable_link import CuttableLink
from tests.support import wait_for

pytestmark = pytest.mark.timeout(300)

DATA = ["--dataset", "fashion_mnist", "--max-examples", "1000"]


def test_a_client_back_after_the_run_ended_sees_the_end_and_exits(federation: LocalFederation) -> None:
    fed = federation
    link = CuttableLink(fed.port)
    try:
        fed.start_coordinator({"training.rounds": 1, "quorum.min_clients": 1, "quorum.fraction": 0.5,
                               "sampling.min_available_clients": 2, "quorum.round_deadline_s": 120,
                               "evaluation.max_examples": 300, "deploy.enabled": "false"})
        fed.start_client("steady", [*DATA, "--partition", "1/2"])
        fed.spawn("away", [sys.executable, "-m", "edge_client", "--broker", "127.0.0.1", "--port", str(link.port),
                           "--run", fed.run_name, "--client-id", "away", *DATA, "--partition", "2/2"])
        away_log = fed.procs["away"].log_path
        wait_for("'away' training round 1", lambda: "round 1/1: training" in away_log.read_text(), 180,
                 log=away_log)
        link.cut()   # it knows the coordinator's state "training"; it misses the round's close and the run's end
        assert fed.wait("coordinator", 180) == 0
        assert fed.wait("steady", 60) == 0
        link.restore()
        wait_for("'away' back", lambda: away_log.read_text().count("connected to") >= 2, 60, log=away_log)
        assert fed.wait("away", 60) == 0, away_log.read_text()[-3000:]
    finally:
        link.close()
    log = away_log.read_text()
    assert "held a retained run_end" in log and "the run_end held back counts now" in log, log[-3000:]
    rows = fed.metrics()
    assert [r["client_ids"] for r in rows] == [["steady"]]
