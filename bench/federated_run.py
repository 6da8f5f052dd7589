"""Run one real federation (Mosquitto, coordinator and edge clients as processes) and collect its results.

Shared by the bench/ scripts: run_federation() drives demo.local_federation.LocalFederation and never leaves a
process behind; print_table() prints Markdown."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from broker.mosquitto_process import BrokerError, find_mosquitto
from demo.local_federation import LocalFederation, Proc

PYTHON = sys.executable
ATTACKING_CLIENT = Path(__file__).resolve().parent / "attacks.py"   # the edge client, poisoning its updates
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.toml"
TAIL_LINES = 40
_POLL_S = 0.2
_CLIENT_EXIT_GRACE_S = 60.0   # after the coordinator exits, how long clients get to see the run end and leave


class FederationError(RuntimeError):
    """A process of the run failed, or the run timed out; the message carries the relevant log tails."""


@dataclass
class RunReport:
    """What one federated run produced."""

    run_name: str
    run_dir: Path                          # <out_dir>/<run_name>: metrics.jsonl, summary.json, models
    metrics: list[dict[str, Any]]          # rows of metrics.jsonl (coordinator.metrics.RoundMetrics as dicts)
    summary: dict[str, Any]                # summary.json
    wall_s: float                          # coordinator start to the last process's exit
    coordinator_exit_code: int
    client_exit_codes: dict[str, int]      # client id -> exit code
    logs: dict[str, Path]                  # "broker", "coordinator", client ids -> log file
    broker_port: int
    commands: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"run_name": self.run_name, "run_dir": str(self.run_dir), "wall_s": round(self.wall_s, 2),
                "coordinator_exit_code": self.coordinator_exit_code, "client_exit_codes": self.client_exit_codes,
                "broker_port": self.broker_port, "logs": {k: str(v) for k, v in self.logs.items()},
                "commands": self.commands, "metrics": self.metrics, "summary": self.summary}


def run_federation(clients: Sequence[Sequence[str]], coordinator_overrides: Mapping[str, Any], out_dir: Path,
                   run_name: str, timeout_s: float, *, config: Path | None = DEFAULT_CONFIG,
                   env: Mapping[str, str] | None = None, echo: bool = True, fresh: bool = True,
                   attacks: Mapping[int, str] | None = None) -> RunReport:
    """Run a federation of len(clients) edge clients and return its report.

    clients[k] is the extra `python -m edge_client` arguments of client k (its id defaults to client-<k+1>;
    --client-id in the extra arguments wins). coordinator_overrides maps "section.key" to a value (a string,
    or a list of strings for list settings such as export.tflite); quorum.min_clients defaults to the number
    of clients so that every round waits for all of them. Logs go to out_dir/logs/<name>.log (Mosquitto's to
    out_dir/mosquitto/mosquitto.log), results to out_dir/<run_name>/, which is removed first unless fresh=False
    (the coordinator would resume a checkpoint there). attacks maps a client's index k to a bench/attacks.py
    --attack spec: that client poisons its updates (the edge client wrapped by bench/attacks.py). Raises FederationError (with log tails) when a process
    fails or timeout_s passes; every process is stopped before this returns or raises."""
    if not clients:
        raise ValueError("run_federation needs at least one client")
    extras = [[str(a) for a in extra] for extra in clients]
    client_ids = [_flag_value(extra, "--client-id") or f"client-{k}" for k, extra in enumerate(extras, start=1)]
    if len(set(client_ids)) != len(client_ids) or "coordinator" in client_ids:
        raise FederationError(f"client ids are not unique: {client_ids}")
    if find_mosquitto() is None:  # LocalFederation would fall back to the embedded broker: not what we measure
        raise BrokerError("mosquitto is not installed (or not on PATH)")
    out_dir = Path(out_dir).resolve()
    run_dir = out_dir / run_name
    if fresh and run_dir.exists():
        # Never resume or mix with an earlier run: the coordinator resumes a checkpoint it finds there.
        shutil.rmtree(run_dir)
    overrides: dict[str, Any] = {"quorum.min_clients": str(len(clients)), **coordinator_overrides}

    fed = LocalFederation(out_dir, run_name=run_name, config=config, env=env)
    with _sigterm_as_exit():
        try:
            fed.start_broker()
            assert fed.broker is not None
            _say(echo, f"mosquitto on 127.0.0.1:{fed.port} (log {fed.broker.log_path})")
            started = time.monotonic()
            fed.start_coordinator(overrides)
            for k, (client_id, extra) in enumerate(zip(client_ids, extras)):
                attack = (attacks or {}).get(k)
                if attack:
                    fed.start_client(client_id, extra, (str(ATTACKING_CLIENT), "--attack", attack))
                else:
                    fed.start_client(client_id, extra)
            _say(echo, f"coordinator and {len(clients)} clients started; logs in {out_dir / 'logs'}")
            _wait(fed, started + timeout_s, timeout_s)
            wall_s = time.monotonic() - started
        except BaseException as exc:
            left = [name for name, p in fed.procs.items() if p.popen.poll() is None]
            if left:
                _say(echo, f"{type(exc).__name__}: stopping {', '.join(left)}")
            raise
        finally:
            fed.stop()  # keeps out_dir/mosquitto with mosquitto.log

    metrics_path = run_dir / "metrics.jsonl"
    summary_path = run_dir / "summary.json"
    if not metrics_path.is_file() or not summary_path.is_file():
        raise FederationError(f"the coordinator exited 0 but wrote no {metrics_path.name} / {summary_path.name} "
                              f"in {run_dir}\n{_tail(fed.procs['coordinator'])}")
    with metrics_path.open(encoding="utf-8") as fh:
        metrics = [json.loads(line) for line in fh if line.strip()]
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    codes = {name: p.popen.returncode for name, p in fed.procs.items()}
    return RunReport(run_name=run_name, run_dir=run_dir, metrics=metrics, summary=summary, wall_s=wall_s,
                     coordinator_exit_code=codes.pop("coordinator"), client_exit_codes=codes,
                     logs={"broker": fed.broker.log_path, **{n: p.log_path for n, p in fed.procs.items()}},
                     broker_port=fed.port, commands={n: list(p.popen.args) for n, p in fed.procs.items()})


def _wait(fed: LocalFederation, deadline: float, timeout_s: float) -> None:
    """Return once every process exited 0; raise FederationError on a failure or at the deadline."""
    procs = list(fed.procs.values())
    coordinator = fed.procs["coordinator"]
    clients = [p for p in procs if p is not coordinator]
    client_deadline: float | None = None
    while True:
        now = time.monotonic()
        for proc in procs:
            code = proc.popen.poll()
            if code is not None and code != 0:
                raise FederationError(f"{proc.name} exited with code {code}\n{_tail(proc)}")
        if coordinator.popen.poll() is not None:
            left = [p for p in clients if p.popen.poll() is None]
            if not left:
                return
            if client_deadline is None:
                client_deadline = min(deadline, now + _CLIENT_EXIT_GRACE_S)
            if now > client_deadline:
                raise FederationError(
                    f"the coordinator finished but {len(left)} client(s) did not exit within "
                    f"{_CLIENT_EXIT_GRACE_S:g} s: {', '.join(p.name for p in left)}\n"
                    + "\n".join(_tail(p) for p in left))
        if now > deadline:
            running = [p.name for p in procs if p.popen.poll() is None]
            raise FederationError(f"timed out after {timeout_s:g} s; still running: {', '.join(running)}\n"
                                  + _tail(coordinator))
        time.sleep(_POLL_S)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while a run is going, so `finally` stops the children."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _tail(proc: Proc, lines: int = TAIL_LINES) -> str:
    return f"--- last {lines} lines of {proc.log_path} ---\n{proc.log_tail(lines)}"


def _say(echo: bool, message: str) -> None:
    if echo:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- output helpers ------------------------------------------------------------------------------------


def run_for_bench(clients: Sequence[Sequence[str]], coordinator_overrides: Mapping[str, Any], out_dir: Path,
                  run_name: str, timeout_s: float) -> tuple[RunReport, float] | None:
    """run_federation for a bench script: (report, wall seconds including set-up), or None after printing why
    the run failed (the script then exits 2)."""
    started = time.monotonic()
    try:
        report = run_federation(clients, coordinator_overrides, out_dir, run_name, timeout_s)
    except FederationError as exc:
        print(f"ERROR: the federated run failed: {exc}", file=sys.stderr)
        return None
    return report, time.monotonic() - started


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None,
                file: IO[str] | None = None) -> None:
    """Print a Markdown table (pipe syntax, padded for reading as plain text).

    align: one character per column, "l" or "r" (default: right for numbers, left otherwise)."""
    cells = [[_cell(v) for v in row] for row in rows]
    n = len(headers)
    if any(len(r) != n for r in cells):
        raise ValueError("every row must have one value per header")
    if align is None:
        align = "".join("r" if cells and all(_numeric(r[i]) for r in cells if r[i]) else "l" for i in range(n))
    widths = [max(3, len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)]
        return "| " + " | ".join(parts) + " |"

    rule = ["-" * (w - 1) + ":" if a == "r" else "-" * w for w, a in zip(widths, align)]
    out = file or sys.stdout
    print(line([str(h) for h in headers]), file=out)
    print("| " + " | ".join(rule) + " |", file=out)
    for r in cells:
        print(line(r), file=out)
    out.flush()


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return False
    return True


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def round_table(metrics: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The standard per-round table of a run, from its metrics.jsonl rows (a regression's: MAE and RMSE where a
    classification has its accuracy)."""
    regression = bool(metrics) and metrics[-1].get("test_mae") is not None
    quality = ["test MAE", "test RMSE"] if regression else ["test accuracy"]
    headers = ["round", "clients", "examples", *quality, "test loss", "round time (s)",
               "slowest client training (s)", "overhead (s)", "MB in", "MB out"]
    rows = [[m["round"], m["clients"], m["examples"], *_quality_cells(m, regression), f"{m['test_loss']:.4f}",
             f"{m['round_time_s']:.2f}", f"{m['slowest_train_s']:.2f}", f"{m['overhead_s']:.2f}",
             f"{m['bytes_in'] / 1e6:.2f}", f"{m['bytes_out'] / 1e6:.2f}"] for m in metrics]
    return headers, rows


def _quality_cells(m: Mapping[str, Any], regression: bool) -> list[str]:
    def number(key: str, form: str) -> str:
        return format(m[key], form) if isinstance(m.get(key), (int, float)) else "n/a"

    return [number("test_mae", ".4g"), number("test_rmse", ".4g")] if regression else [number("test_accuracy", ".4f")]


def code_version() -> dict[str, Any]:
    """The commit benchmarked and the tracked files changed since (read-only git calls; {} without git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout

    try:
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
        return {"commit": git("rev-parse", "HEAD").strip(), "modified_files": changed}
    except (OSError, subprocess.SubprocessError):
        return {}


def write_results(path: Path, data: Mapping[str, Any]) -> Path:
    """Write `data` as indented JSON (paths become strings), with the code version and the time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**data, "code": code_version(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path
