"""fedmq from Python: a whole federation started with the two Python APIs, the coordinator's run_coordinator
in this process and one process per device calling edge_client.api.start_client on its own file.

`python -m demo.python_api --dataset ref.csv --device-file a.csv --device-file b.csv --set data.label=diagnosis`
(bench/own_data.py's table example runs this way); `run_federation()` is the same from code."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

from broker.mosquitto_process import MosquittoProcess

# What each device process runs: the edge client's Python API with fedmq's Keras trainer on the device's file.
DEVICE_PROGRAM = """
import sys
from edge_client.api import start_client
from edge_client.local_data import DataChoice, load_local_data

broker, client_id, run, dataset = sys.argv[1:5]
data = load_local_data(DataChoice(dataset=dataset))
rounds = start_client(broker, client_id, data=data, run=run, check_client_id=False)
print(f"{client_id}: trained {rounds} round(s)")
"""


def device_command(broker: str, client_id: str, run: str, dataset: str) -> list[str]:
    return [sys.executable, "-c", DEVICE_PROGRAM, broker, client_id, run, dataset]


def run_federation(device_files: Sequence[str | Path], overrides: dict[str, Any], out_dir: Path,
                   run_name: str = "python-api", timeout_s: float = 1800.0) -> tuple[Any, list[dict[str, Any]]]:
    """Start Mosquitto, one device process per file (start_client) and the coordinator (run_coordinator) in this
    process; return the RunResult and metrics.jsonl's rows. Device logs go to out_dir/logs/."""
    from coordinator import run_coordinator

    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with MosquittoProcess() as broker:
        address = f"{broker.host}:{broker.port}"
        devices = []
        for k, path in enumerate(device_files, start=1):
            log = open(logs / f"device-{k}.log", "w")
            devices.append((subprocess.Popen(device_command(address, f"device-{k}", run_name, str(path)),
                                             stdout=log, stderr=subprocess.STDOUT), log))
        try:
            result = run_coordinator(None, overrides={
                **overrides, "run.name": run_name, "run.output_dir": str(out_dir), "run.on_existing": "new",
                "broker.host": broker.host, "broker.port": broker.port, "deploy.enabled": False,
                "quorum.min_clients": overrides.get("quorum.min_clients", len(devices))})
            deadline = time.monotonic() + min(timeout_s, 120.0)
            codes = [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc, _ in devices]
        finally:
            for proc, log in devices:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
    if any(codes):
        raise RuntimeError(f"device exit codes {codes}; see {logs}")
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return result, rows


def setting_value(text: str) -> Any:
    """A --set value as TOML reads it (3, 0.5, true, ["a", "b"], "text"); anything else is the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.python_api", description=__doc__.splitlines()[0],
                                allow_abbrev=False)
    p.add_argument("--dataset", required=True, help="the coordinator's evaluation data ([model] dataset)")
    p.add_argument("--device-file", action="append", required=True, help="one device's file (repeat per device)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a setting (repeat)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="output folder (default runs)")
    args = p.parse_args(argv)
    overrides: dict[str, Any] = {"model.dataset": args.dataset}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = setting_value(value)
    result, rows = run_federation(args.device_file, overrides, args.out)
    for row in rows:
        print(f"round {row['round']}: test accuracy {row['test_accuracy']}, loss {row['test_loss']}")
    print(f"{result.reason} after {result.rounds_completed} rounds; results in {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
