"""A server optimizer in a real run (Mosquitto, coordinator and client processes, Fashion-MNIST subsets): FedAdam's
moments are checkpointed every round, and a coordinator killed mid-run resumes with them."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.checkpoint import load_checkpoint
from demo.local_federation import LocalFederation
from tests.support import wait_for

pytestmark = pytest.mark.timeout(400)

DATA = ["--dataset", "fashion_mnist", "--max-examples", "4000"]


def test_fedadam_run_resumes_with_its_moments_after_a_coordinator_kill(federation: LocalFederation) -> None:
    fed = federation
    overrides = {"training.rounds": 3, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                 "evaluation.max_examples": 1000, "server_optimizer.name": "fedadam", "server_optimizer.eta": 0.003}
    fed.start_coordinator(overrides)
    for k in (1, 2):
        fed.start_client(f"dev-{k}", [*DATA, "--partition", f"{k}/2"])
    log = fed.procs["coordinator"].log_path
    wait_for("round 2 to start", lambda: "round 2/3: model published" in log.read_text(errors="replace"))
    fed.kill("coordinator")
    after_one = load_checkpoint(fed.run_dir)
    assert after_one is not None and after_one.round == 1
    assert int(after_one.optimizer_state["rounds"]) == 1 and "v.0" in after_one.optimizer_state
    fed.start_coordinator(overrides, name="coordinator-restarted")
    codes = fed.wait_all(300)
    assert codes == {"coordinator": -9, "dev-1": 0, "dev-2": 0, "coordinator-restarted": 0}, codes
    assert "server optimizer fedadam: resumed its moments after 1 steps" in \
        fed.procs["coordinator-restarted"].log_path.read_text()
    final = load_checkpoint(fed.run_dir)
    assert final is not None and final.finished
    assert int(final.optimizer_state["rounds"]) == 3, "the moments carried on from round 1, not from zero"
    # The second moment only grows in magnitude's history: every stepped tensor has seen three deltas.
    assert all(np.all(final.optimizer_state[f"v.{i}"] >= 0) for i in range(2))
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[-1]["test_accuracy"] > 0.5, rows
