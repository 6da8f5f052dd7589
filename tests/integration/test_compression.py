"""Compressed messages end to end, with real processes and a real Mosquitto: int8 updates and a float16 global
model; top-k updates with error feedback, chunked under a broker's message size limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.local_federation import LocalFederation
from edge_client.update_encoding import ResidualStore

pytestmark = pytest.mark.timeout(400)

FLOAT32_UPDATE_BYTES = 900_136 + 656   # the reference CNN's update, raw (PROTOCOL.md "Sizes")
FLOAT32_MODEL_BYTES = 900_136 + 926
ARCHITECTURE_BYTES = 5_590   # the model's architecture in every global model, small_cnn's (PROTOCOL.md "Sizes")


def _run(fed: LocalFederation, tmp_path: Path, overrides: dict[str, object], client_args: list[str]) -> list[dict]:
    fed.start_broker()
    fed.start_coordinator({"training.rounds": 2, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                           "evaluation.max_examples": 1000, **overrides})
    for k in (1, 2):
        fed.start_client(f"dev-{k}", ["--dataset", "fashion_mnist", "--max-examples", "6000", "--partition",
                                      f"{k}/2", "--state-dir", str(tmp_path / f"state-{k}"), *client_args])
    codes = fed.wait_all(300)
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0}, codes
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["client_ids"] == ["dev-1", "dev-2"] and r["rejected"] == {} for r in rows), rows
    return rows


def test_int8_updates_and_a_float16_global_model(tmp_path: Path) -> None:
    with LocalFederation(tmp_path / "fed", run_name="i8") as fed:
        rows = _run(fed, tmp_path, {"compression.uplink": "int8", "compression.downlink": "float16"}, [])
    for row in rows:
        per_update = row["bytes_in"] / row["clients"]
        assert per_update < 0.26 * FLOAT32_UPDATE_BYTES, per_update
        assert 0.25 * 900_136 < per_update, "every weight was sent"
        assert row["bytes_out"] < 0.501 * FLOAT32_MODEL_BYTES + ARCHITECTURE_BYTES, row["bytes_out"]
    assert rows[-1]["test_accuracy"] > 0.6
    for k in (1, 2):
        residual = ResidualStore(tmp_path / f"state-{k}").load()
        assert residual.run == "i8" and residual.round == 2 and len(residual.after) == 8


def test_topk_updates_chunked_through_a_broker_that_caps_message_size(tmp_path: Path) -> None:
    """Mosquitto drops messages over 12 kB; top-k updates of 3 % of the deltas (about 20 kB) and the float16
    global model travel as chunks of 8 kB."""
    limit, chunk = 12_000, 8192
    with LocalFederation(tmp_path / "fed", run_name="tk", broker_config=[f"message_size_limit {limit}"]) as fed:
        rows = _run(fed, tmp_path, {"compression.uplink": "topk", "compression.topk_fraction": 0.03,
                                    "compression.downlink": "float16", "broker.chunk_bytes": chunk}, [])
        log = fed.procs["coordinator"].log_path.read_text()
    for row in rows:
        per_update = row["bytes_in"] / row["clients"]
        assert limit < per_update < 0.03 * 4 * FLOAT32_UPDATE_BYTES, per_update   # over the limit: chunked
    assert rows[-1]["test_accuracy"] > 0.5
    assert "rejected" not in log
    for k in (1, 2):
        residual = ResidualStore(tmp_path / f"state-{k}").load()
        assert residual.round == 2 and sum(abs(r).sum() for r in residual.after.values()) > 0, \
            "the unsent 97 % stays on the device"


def test_async_topk_deltas_of_a_slow_device_are_checked_against_the_version_they_were_trained_on(
        tmp_path: Path) -> None:
    """Asynchronous rounds: the slow device's top-k delta is against an older version (its base_sha256); it is
    accepted, and weighted by its staleness like a whole update."""
    versions = 16   # the slow device (5x) sends its first update around version 5; 10 once ended first under load
    with LocalFederation(tmp_path / "fed", run_name="as") as fed:
        fed.start_broker()
        fed.start_coordinator({"training.rounds": versions, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                               "evaluation.max_examples": 500, "aggregation.mode": "async",
                               "aggregation.buffer_size": 2, "aggregation.max_staleness": versions,
                               "compression.uplink": "topk", "compression.topk_fraction": 0.1})
        data = ["--dataset", "fashion_mnist", "--max-examples", "3000"]
        for name, part, extra in (("fast-1", "1/3", []), ("fast-2", "2/3", []), ("slow", "3/3", ["--slowdown", "5"])):
            fed.start_client(name, [*data, "--partition", part, "--state-dir", str(tmp_path / name), *extra])
        codes = fed.wait_all(420)
        assert codes == {"coordinator": 0, "fast-1": 0, "fast-2": 0, "slow": 0}, codes
        rows, log = fed.metrics(), fed.procs["coordinator"].log_path.read_text()
    assert [r["round"] for r in rows] == list(range(1, versions + 1))
    assert all(r["rejected"] == {} for r in rows), [r["rejected"] for r in rows]
    stale = [r for r in rows if r["aggregation"]["stale_updates"] and "slow" in r["client_ids"]]
    assert stale, "the slow device's delta arrived after the model had moved on, and was accepted"
    assert "slow's update was trained on version" in log
    assert all(r["bytes_in"] / r["clients"] < 0.1 * 4 * FLOAT32_UPDATE_BYTES for r in rows)
    assert rows[-1]["test_accuracy"] > 0.2, "above chance (0.1): the sparse, staleness-weighted deltas train"
