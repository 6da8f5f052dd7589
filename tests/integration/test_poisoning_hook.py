"""The test-only poisoning client (bench/attacks.py) against a real Mosquitto and coordinator: the device client
ships no attack code, and the wrapper poisons its updates through EdgeClient's transform_update hook."""

from __future__ import annotations

import pytest

from demo.local_federation import REPO_ROOT, LocalFederation

pytestmark = pytest.mark.timeout(420)

DATA = ["--dataset", "fashion_mnist", "--index-range", "0:300"]


def test_the_attacking_client_scales_its_update_and_the_honest_ones_do_not(federation: LocalFederation) -> None:
    fed = federation
    fed.start_coordinator({"training.rounds": 1, "quorum.min_clients": 3, "evaluation.max_examples": 300,
                           "export.tflite": [], "deploy.enabled": "false"})
    fed.start_client("honest-1", DATA)
    fed.start_client("honest-2", DATA)
    fed.start_client("poisoner", DATA, (str(REPO_ROOT / "bench" / "attacks.py"), "--attack", "scale:50"))
    codes = fed.wait_all(360)
    assert codes == {"coordinator": 0, "honest-1": 0, "honest-2": 0, "poisoner": 0}, codes
    (row,) = fed.metrics()
    assert row["client_ids"] == ["honest-1", "honest-2", "poisoner"] and not row["rejected"]
    report = row["aggregation"]
    # Same data and seed: the honest deltas are alike; the poisoner sends 50 times its delta.
    assert report["update_norm_max"] > 20 * report["update_norm_median"], report
    assert "ATTACK MODE" in fed.procs["poisoner"].log_path.read_text(errors="replace")
    assert "ATTACK MODE" not in fed.procs["honest-1"].log_path.read_text(errors="replace")
