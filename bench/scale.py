"""Scale benchmark (issue 15): fedmq with 10 to 5,000 simulated devices on one Mosquitto, against Flower 1.41.

Each fedmq row starts a real Mosquitto on a free port (the project's broker/mosquitto.conf), the real coordinator
(small_cnn, 0.9 MB updates, Fashion-MNIST with a small evaluation set) and the device simulator (`python -m
edge_client simulate`, 2 s of simulated training), and measures per round: the overhead (round time minus the
training time, from the coordinator's metrics.jsonl), the coordinator's RSS from round 1 to its peak and
Mosquitto's peak RSS (/proc/PID/status, VmRSS and VmHWM), and births and updates counted by both sides (the
simulator's --summary, the coordinator's metrics and state): lost must be 0. The Flower row of the same size runs
right after it (bench/flower_scale.py: a gRPC server and light simulated clients with the same parameters and sleep),
so that the ratio fedmq/Flower holds on a noisy machine. The load average is printed before and after every run.

Then the physical limits: how fast Mosquitto fans one 0.9 MB retained model out to N subscribers (bench/fanout.py),
and how fast one process takes in N updates (bench/ingest.py, when present)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import Backlog, Fanout, measure_backlog, measure_fanout
from federated_run import REPO_ROOT, print_table, write_results
from fleet_setup import load_average
from scale_readouts import (Counts, MemoryTrace, Row, Span, counts_from, load_text, median, online_count,
                            overheads, parse_proc_status, parse_rows, parse_sampling, ratio)

NAME = "scale"
MODEL_BYTES = 906_643          # small_cnn's global_model message (README "Your own model and data")
DEFAULT_FLOWER_PYTHON = Path(os.environ.get("FEDMQ_FLOWER_PYTHON",
                                            REPO_ROOT / ".venv-flower" / "bin" / "python"))
FLOWER_ROLES = Path(__file__).resolve().parent / "flower_scale.py"
SAMPLE_S = 0.25
FLOWER_CLIENTS_PER_PROCESS = 250


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python bench/scale.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run from the repository root with the product's Python, alone on the machine (timing). --quick: 10 "
               "and 50 devices, 2 rounds, no 5,000 rows, fan-out to 10 and 50 (a smoke test of a few minutes). "
               "Exit code 0: every row ran and nothing was lost; 1: a row lost births or updates; 2: a run failed.")
    p.add_argument("--quick", action="store_true", help="smoke test (see below)")
    p.add_argument("--devices", type=int, nargs="+", default=[10, 100, 1000, 5000], help="fleet sizes")
    p.add_argument("--sample", nargs="*", default=["5000:0.1"],
                   help="N:FRACTION: the row of N devices trains FRACTION of them per round (default 5000:0.1)")
    p.add_argument("--online-cohort", nargs="*", default=["5000:1000"],
                   help="ONLINE:COHORT rows: every device online, COHORT training per round (default 5000:1000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per run (default 5)")
    p.add_argument("--train-seconds", type=float, default=2.0, help="simulated training per round (default 2)")
    p.add_argument("--eval-examples", type=int, default=500, help="the coordinator's evaluation set (default 500)")
    p.add_argument("--connect-rate", type=float, default=500.0, help="simulator connections per second (default 500)")
    p.add_argument("--devices-per-process", type=int, default=250,
                   help="simulator devices per process (default 250, as Flower's side runs 250 client threads per "
                        "process: both sides' simulated devices then use both cores)")
    p.add_argument("--flower-python", type=Path, default=DEFAULT_FLOWER_PYTHON,
                   help=f"Python of the Flower virtual environment (default {DEFAULT_FLOWER_PYTHON})")
    p.add_argument("--flower-max", type=int, default=1000,
                   help="Flower rows up to this many devices (a thread per simulated Flower client; default 1000)")
    p.add_argument("--no-flower", action="store_true", help="fedmq rows only")
    p.add_argument("--fanout", type=int, nargs="*", default=None,
                   help="fan-out measurements to N subscribers (default: each N of --devices up to 1000)")
    p.add_argument("--backlog", type=int, default=300,
                   help="updates waiting in the broker for a coordinator that does not read: Mosquitto's memory "
                        "per waiting update (default 300; 0: skip)")
    p.add_argument("--ingest", type=int, nargs="*", default=None,
                   help="bench/ingest.py --updates N runs (default: the largest N of --devices up to 1000)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help=f"output folder: <out>/{NAME}.json and <out>/{NAME}/ (logs, runs) (default bench/results)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before one run is stopped (default 1800)")
    args = p.parse_args(argv)
    if args.quick:
        args.devices, args.sample, args.online_cohort, args.rounds = [10, 50], [], [], 2
        args.fanout = [10, 50] if args.fanout is None else args.fanout
    if args.fanout is None:
        args.fanout = [n for n in args.devices if n <= 1000]
    if args.ingest is None:
        args.ingest = [max((n for n in args.devices if n <= 1000), default=0)] if args.devices else []
        args.ingest = [n for n in args.ingest if n]
    try:
        args.rows = parse_rows(args.devices, parse_sampling(args.sample), args.online_cohort)
    except ValueError as exc:
        p.error(str(exc))
    return args


# ---- measuring processes ----------------------------------------------------------------------------------------


class MemorySampler:
    """Samples the VmRSS and VmHWM of a few processes every SAMPLE_S on a thread; `round_1` marks when round 1
    started (or closed), for MemoryTrace.at_round_1."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.traces = {name: MemoryTrace() for name in pids}
        self._pids = pids
        self.round_1 = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self._pids.items():
                try:
                    text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
                except OSError:
                    continue
                rss, hwm = parse_proc_status(text)
                self.traces[name].add(rss, hwm, self.round_1.is_set())
            self._stop.wait(SAMPLE_S)


def read_retained(host: str, port: int, topic: str, timeout_s: float = 10.0) -> bytes:
    """The retained payload on `topic` (b"" if none arrives in time), read by a short-lived MQTT client."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[bytes] = []
    arrived = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fedmq-bench-reader-{os.getpid()}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)

    def on_message(c: Any, u: Any, message: Any) -> None:
        if not got:
            got.append(bytes(message.payload))
            arrived.set()

    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    arrived.wait(timeout_s)
    client.loop_stop()
    client.disconnect()
    return got[0] if got else b""


def coordinator_online(host: str, port: int, run: str) -> int:
    """Training clients online in the coordinator's retained state message (its count of births)."""
    import msgpack

    payload = read_retained(host, port, f"fedmq/{run}/coordinator/state")
    return online_count(msgpack.unpackb(payload, raw=False)) if payload else 0


# ---- one fedmq row -----------------------------------------------------------------------------------------------


@dataclass
class RowResult:
    row: Row
    system: str
    rounds_done: int = 0
    overheads: list[float] = field(default_factory=list)
    server_memory: MemoryTrace = field(default_factory=MemoryTrace)
    broker_memory: MemoryTrace = field(default_factory=MemoryTrace)
    counts: Counts | None = None
    load_before: str = ""
    load_after: str = ""
    error: str = ""
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"devices": self.row.devices, "cohort": self.row.cohort, "system": self.system,
                "rounds_done": self.rounds_done, "overheads_s": self.overheads,
                "server_rss_at_round_1": self.server_memory.at_round_1, "server_rss_peak": self.server_memory.peak,
                "broker_rss_peak": self.broker_memory.peak,
                "counts": None if self.counts is None else {**vars(self.counts), "lost": self.counts.lost},
                "load_before": self.load_before, "load_after": self.load_after, "error": self.error,
                "wall_s": round(self.wall_s, 1)}


def fedmq_overrides(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    """The coordinator's settings for a row: wait for the whole fleet, sample the cohort, evaluate little."""
    return {"model.name": "small_cnn", "model.dataset": "fashion_mnist", "training.rounds": str(args.rounds),
            "quorum.min_clients": str(row.cohort), "quorum.fraction": "1.0", "quorum.start_grace_s": "1.0",
            "sampling.fraction_train": f"{row.cohort / row.devices:.6g}",
            "sampling.min_train_clients": str(row.cohort), "sampling.max_train_clients": str(row.cohort),
            "sampling.min_available_clients": str(row.devices),
            "evaluation.max_examples": str(args.eval_examples), "export.tflite": [], "deploy.enabled": "false"}


def simulator_command(row: Row, port: int, run: str, summary: Path, args: argparse.Namespace) -> list[str]:
    processes = max(1, math.ceil(row.devices / args.devices_per_process))
    return [sys.executable, "-m", "edge_client", "simulate", "--broker", f"mqtt://127.0.0.1:{port}", "--run", run,
            "--clients", str(row.devices), "--id-prefix", "sim-", "--train-seconds", f"{args.train_seconds:g}",
            "--examples", "600", "--failure-rate", "0", "--processes", str(processes),
            "--connect-rate", f"{args.connect_rate:g}", "--summary", str(summary)]


def run_fedmq(row: Row, args: argparse.Namespace, out: Path) -> RowResult:
    from demo.local_federation import LocalFederation

    result = RowResult(row, "fedmq", load_before=load_average())
    slug = f"fedmq-{row.devices}-{row.cohort}"
    summary = out / slug / "simulator-summary.json"
    shutil.rmtree(out / slug, ignore_errors=True)   # the coordinator would resume a checkpoint found there
    fed = LocalFederation(out / slug, run_name=slug)
    started = time.monotonic()
    try:
        fed.start_broker()
        assert fed.broker is not None and fed.broker.pid is not None
        coordinator = fed.start_coordinator(fedmq_overrides(row, args))
        simulator = fed.spawn("simulator", simulator_command(row, fed.port, slug, summary, args))
        metrics_path = fed.run_dir / "metrics.jsonl"
        births_seen = 0
        with MemorySampler({"coordinator": coordinator.popen.pid, "broker": fed.broker.pid}) as sampler:
            deadline = started + args.timeout
            while coordinator.popen.poll() is None:
                if not sampler.round_1.is_set() and metrics_path.is_file() and metrics_path.stat().st_size:
                    sampler.round_1.set()
                    births_seen = coordinator_online("127.0.0.1", fed.port, slug)
                if simulator.popen.poll() not in (None, 0):
                    raise RuntimeError(f"the simulator exited with code {simulator.popen.returncode}:\n"
                                       f"{simulator.log_tail(20)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{slug} did not finish within {args.timeout:g} s:\n{coordinator.log_tail(20)}")
                time.sleep(SAMPLE_S)
            simulator.popen.wait(timeout=120)
        result.server_memory, result.broker_memory = sampler.traces["coordinator"], sampler.traces["broker"]
        if coordinator.popen.returncode != 0:
            raise RuntimeError(f"the coordinator exited with code {coordinator.popen.returncode}:\n"
                               f"{coordinator.log_tail(20)}")
        metrics = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line]
        result.rounds_done = len(metrics)
        result.overheads = overheads(metrics, args.train_seconds)
        simulated = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else {}
        result.counts = counts_from(row.devices, simulated, metrics, births_seen)
    except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired) as exc:
        result.error = str(exc)
    finally:
        fed.stop()
        result.wall_s = time.monotonic() - started
        result.load_after = load_average()
    return result


# ---- one Flower row ----------------------------------------------------------------------------------------------


def model_shapes(path: Path) -> Path:
    """Write small_cnn's weight shapes (the 0.9 MB Flower sends) to `path`, computed once by the product's Python."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        code = ("import json, sys; from federation.learning.models import build_model; "
                "m = build_model('small_cnn', (28, 28, 1), 10); "
                "json.dump([list(w.shape) for w in m.get_weights()], open(sys.argv[1], 'w'))")
        subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO_ROOT, check=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True)
    return path


def run_flower(row: Row, args: argparse.Namespace, out: Path, shapes: Path) -> RowResult:
    from broker.mosquitto_process import port_accepts
    from broker.ports import free_port

    result = RowResult(row, "Flower", load_before=load_average())
    slug = f"flower-{row.devices}-{row.cohort}"
    folder = out / slug
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    report = folder / "server.json"
    report.unlink(missing_ok=True)
    base = [str(args.flower_python), str(FLOWER_ROLES)]
    common = ["--address", address, "--shapes", str(shapes), "--devices", str(row.devices),
              "--train-seconds", f"{args.train_seconds:g}"]
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        with open(folder / "server.log", "wb") as log:
            server = subprocess.Popen([*base, "server", *common, "--cohort", str(row.cohort), "--rounds",
                                       str(args.rounds), "--result", str(report)], stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(server)
        while not port_accepts("127.0.0.1", port):
            if server.poll() is not None or time.monotonic() > started + 120:
                raise RuntimeError(f"the Flower server did not start (log {folder / 'server.log'})")
            time.sleep(0.2)
        left = row.devices
        for k in range(math.ceil(row.devices / FLOWER_CLIENTS_PER_PROCESS)):
            count = min(FLOWER_CLIENTS_PER_PROCESS, left)
            left -= count
            with open(folder / f"clients-{k}.log", "wb") as log:
                procs.append(subprocess.Popen([*base, "clients", *common, "--clients", str(count)], stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        with MemorySampler({"server": server.pid}) as sampler:
            server.wait(timeout=args.timeout)
        if server.returncode != 0 or not report.is_file():
            raise RuntimeError(f"the Flower server exited with code {server.returncode} (log {folder / 'server.log'})")
        data = json.loads(report.read_text(encoding="utf-8"))
        result.rounds_done = len(data["rounds"])
        result.overheads = [float(r["overhead_s"]) for r in data["rounds"]]
        result.server_memory = MemoryTrace(at_round_1=int(data["rss_at_round_1"]),
                                           peak=max(int(data["rss_peak"]), sampler.traces["server"].peak), samples=1)
    except (RuntimeError, OSError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
        result.error = str(exc)
    finally:
        for proc in procs:   # the clients leave when the server ends; whatever is left is stopped
            try:
                proc.wait(timeout=30 if proc is not procs[0] else 1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        result.wall_s = time.monotonic() - started
        result.load_after = load_average()
    return result


# ---- physical limits ---------------------------------------------------------------------------------------------


def run_fanouts(sizes: list[int]) -> list[Fanout]:
    from broker.mosquitto_process import MosquittoProcess

    found = []
    for n in sizes:
        with MosquittoProcess() as broker:
            assert broker.pid is not None
            found.append(measure_fanout(broker.host, broker.port, n, MODEL_BYTES, broker.pid))
        print(f"[scale] fan-out: {found[-1].text()}", file=sys.stderr, flush=True)
    return found


def run_backlog(updates: int) -> Backlog:
    from broker.mosquitto_process import MosquittoProcess

    with MosquittoProcess() as broker:
        assert broker.pid is not None
        found = measure_backlog(broker.host, broker.port, updates, MODEL_BYTES, broker.pid)
    print(f"[scale] backlog: {found.text()}", file=sys.stderr, flush=True)
    return found


def run_ingest(sizes: list[int]) -> str:
    script = REPO_ROOT / "bench" / "ingest.py"
    if not script.is_file():
        return "bench/ingest.py is not in this checkout: one process's ingest limit is not measured here.\n"
    text = ""
    for n in sizes:
        done = subprocess.run([sys.executable, str(script), "--updates", str(n)], cwd=REPO_ROOT, text=True,
                              capture_output=True, timeout=3600)
        text += f"$ python bench/ingest.py --updates {n}   (load {load_text(load_average())})\n{done.stdout}"
        if done.returncode:
            text += f"(exit code {done.returncode})\n{done.stderr[-2000:]}\n"
    return text


# ---- the tables ----------------------------------------------------------------------------------------------------


def print_rows(results: list[RowResult], rounds: int) -> None:
    headers = ["devices", "system", "rounds", "overhead per round (s)", "server RSS, round 1 to peak",
               "Mosquitto peak RSS", "births and updates (coordinator/devices)", "load before -> after"]
    rows = []
    for r in results:
        rows.append([r.row.label, r.system, f"{r.rounds_done}/{rounds}" + (" (failed)" if r.error else ""),
                     Span.of(r.overheads).text(), r.server_memory.text(),
                     f"{r.broker_memory.peak / 1e6:,.0f} MB" if r.broker_memory.samples else "-",
                     r.counts.text() if r.counts else "-",
                     f"{load_text(r.load_before)} -> {load_text(r.load_after)}"])
    print_table(headers, rows, align="llllllll")


def print_ratios(results: list[RowResult]) -> None:
    by_row: dict[Row, dict[str, RowResult]] = {}
    for r in results:
        by_row.setdefault(r.row, {})[r.system] = r
    headers = ["devices", "fedmq median overhead (s)", "Flower median overhead (s)", "fedmq/Flower",
               "fedmq RSS growth", "Flower RSS growth"]
    rows = []
    for row, systems in by_row.items():
        fedmq, flower = systems.get("fedmq"), systems.get("Flower")
        ours = median(fedmq.overheads) if fedmq else None
        theirs = median(flower.overheads) if flower else None
        rows.append([row.label, "n/a" if ours is None else f"{ours:.2f}",
                     "not run" if flower is None else ("n/a" if theirs is None else f"{theirs:.2f}"),
                     ratio(ours, theirs), growth(fedmq), growth(flower)])
    print_table(headers, rows, align="lrrrrr")


def print_peak_growth(results: list[RowResult]) -> None:
    """The issue's memory target: each system's peak RSS at every fleet size against its smallest fleet's peak
    (fedmq: at most +50 MB from 10 to 1,000 devices)."""
    for system in ("fedmq", "Flower"):
        runs = [r for r in results if r.system == system and r.server_memory.samples]
        if len(runs) < 2:
            continue
        base = min(runs, key=lambda r: (r.row.devices, r.row.cohort))
        steps = ", ".join(f"{r.row.label}: {r.server_memory.peak / 1e6:,.0f} MB "
                          f"({(r.server_memory.peak - base.server_memory.peak) / 1e6:+,.0f} MB)"
                          for r in runs if r is not base)
        print(f"- {system} server peak RSS, against {base.row.label} ({base.server_memory.peak / 1e6:,.0f} MB): "
              f"{steps}")


def growth(result: RowResult | None) -> str:
    if result is None or not result.server_memory.at_round_1:
        return "n/a"
    return f"{(result.server_memory.peak - result.server_memory.at_round_1) / 1e6:+,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (args.out / NAME).resolve()
    out.mkdir(parents=True, exist_ok=True)
    flower = not args.no_flower and args.flower_python.is_file()
    if not args.no_flower and not flower:
        print(f"[scale] no Flower Python at {args.flower_python} (bench/flower_non_iid.py says how to make it; "
              "or --flower-python): fedmq rows only", file=sys.stderr)
    shapes = model_shapes(out / "small_cnn_shapes.json") if flower else None
    results: list[RowResult] = []
    for row in args.rows:
        for system in ("fedmq", "Flower"):
            if system == "Flower" and (shapes is None or row.devices > args.flower_max):
                continue
            print(f"[scale] {system}: {row.label}, {args.rounds} rounds (load {load_text(load_average())})",
                  file=sys.stderr, flush=True)
            done = run_fedmq(row, args, out) if system == "fedmq" else run_flower(row, args, out, shapes or Path())
            if done.error:
                print(f"[scale] {system} {row.label} failed: {done.error}", file=sys.stderr, flush=True)
            results.append(done)
    fanouts = run_fanouts(args.fanout)
    backlog = run_backlog(args.backlog) if args.backlog else None
    ingest = run_ingest(args.ingest)

    print(f"## Scale: {args.rounds} rounds, {args.train_seconds:g} s of simulated training, small_cnn "
          f"({MODEL_BYTES / 1e6:.1f} MB), {os.cpu_count()} CPU cores\n")
    print("Overhead = round time minus the training time; server RSS from the moment round 1 closes (fedmq) or "
          "starts (Flower) to the peak (VmHWM). Births: the coordinator's online count before round 1 / births the "
          "broker acknowledged; updates: aggregated / acknowledged by the broker; lost: the difference.\n")
    print_rows(results, args.rounds)
    print()
    print_ratios(results)
    print_peak_growth(results)
    print("\n### Physical limits\n")
    for fanout in fanouts:
        print(f"- Mosquitto fan-out of one {MODEL_BYTES / 1e6:.1f} MB retained model: {fanout.text()}")
    if backlog is not None:
        print(f"- Mosquitto's memory for the coordinator's backlog: {backlog.text()}")
    print(f"\n{ingest}")
    lost = sum(r.counts.lost for r in results if r.counts)
    failed = [r for r in results if r.error]
    print(f"lost births and updates, all fedmq rows: {lost}" + (" (MUST be 0)" if lost else ""))
    write_results(args.out / f"{NAME}.json", {
        "bench": NAME, "settings": {k: v for k, v in vars(args).items() if k != "rows"},
        "rows": [r.to_json() for r in results], "fanout": [vars(f) for f in fanouts],
        "backlog": vars(backlog) if backlog else None, "ingest": ingest})
    return 2 if failed else (1 if lost else 0)


if __name__ == "__main__":
    sys.exit(main())
