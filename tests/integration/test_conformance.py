"""Conformance: a client written from PROTOCOL.md alone (raw paho-mqtt and msgpack, tests/integration/
protocol_client.py) takes part in real runs beside a fedmq client, plain and chunked."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from demo.local_federation import LocalFederation

pytestmark = pytest.mark.timeout(400)


def _run(fed: LocalFederation, overrides: dict[str, object]) -> tuple[list[dict], str]:
    fed.start_broker()
    fed.start_coordinator({"training.rounds": 2, "quorum.min_clients": 2, "evaluation.max_examples": 300,
                           "quorum.start_grace_s": 3, **overrides})
    fed.start_client("dev-1", ["--dataset", "fashion_mnist", "--index-range", "0:600"])
    fed.spawn("raw-1", [sys.executable, "-m", "tests.integration.protocol_client", "--port", str(fed.port),
                        "--run", fed.run_name])
    codes = fed.wait_all(300)
    assert codes == {"coordinator": 0, "dev-1": 0, "raw-1": 0}, codes
    return fed.metrics(), fed.procs["raw-1"].log_path.read_text()


def test_a_client_written_from_the_spec_takes_part_in_a_run(tmp_path: Path) -> None:
    with LocalFederation(tmp_path / "fed", run_name="conf") as fed:
        rows, log = _run(fed, {})
    assert [r["client_ids"] for r in rows] == [["dev-1", "raw-1"]] * 2
    assert all(not r["rejected"] and not r.get("ignored") for r in rows), rows
    assert "left after rounds [1, 2], 0 of them chunked" in log


def test_a_client_written_from_the_spec_chunks_as_the_model_message_says(tmp_path: Path) -> None:
    """The broker drops messages over 300 kB (with a PUBACK); neither client is told a chunk size on its command
    line: both learn it from the global model's train.chunk_bytes."""
    with LocalFederation(tmp_path / "fed", run_name="conf", broker_config=["message_size_limit 300000"]) as fed:
        rows, log = _run(fed, {"broker.chunk_bytes": 250_000})
    assert [r["client_ids"] for r in rows] == [["dev-1", "raw-1"]] * 2
    assert all(not r["rejected"] for r in rows), rows
    assert re.search(r"left after rounds \[1, 2\], 2 of them chunked", log)
    assert all(r["bytes_in"] > 2 * 900_000 for r in rows)
