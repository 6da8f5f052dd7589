"""Run one real federation (Mosquitto, coordinator and edge clients as processes) and collect its results.

Shared by the bench/ scripts: run_federation() never leaves a process behind; print_table() prints Markdown."""

from __future__ import annotations

import json
import os
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

from broker.mosquitto_process import MosquittoProcess  # noqa: E402

PYTHON = sys.executable
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.toml"
TAIL_LINES = 40
_POLL_S = 0.2
_TERM_GRACE_S = 5.0
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


@dataclass
class _Child:
    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]
    log_handle: IO[bytes]


def run_federation(clients: Sequence[Sequence[str]], coordinator_overrides: Mapping[str, Any], out_dir: Path,
                   run_name: str, timeout_s: float, *, config: Path | None = DEFAULT_CONFIG,
                   env: Mapping[str, str] | None = None, echo: bool = True, fresh: bool = True) -> RunReport:
    """Run a federation of len(clients) edge clients and return its report.

    clients[k] is the extra `python -m edge_client` arguments of client k (its id defaults to client-<k+1>;
    --client-id in the extra arguments wins). coordinator_overrides maps "section.key" to a value (a string,
    or a list of strings for list settings such as export.tflite); quorum.min_clients defaults to the number
    of clients so that every round waits for all of them. Logs go to out_dir/logs/, results to
    out_dir/<run_name>/, which is removed first unless fresh=False (the coordinator would resume a checkpoint
    there). Raises FederationError (with log tails) when a process fails or timeout_s passes; every process
    is stopped before this returns or raises."""
    if not clients:
        raise ValueError("run_federation needs at least one client")
    out_dir = Path(out_dir).resolve()
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / run_name
    if fresh and run_dir.exists():
        # Never resume or mix with an earlier run: the coordinator resumes a checkpoint it finds there.
        shutil.rmtree(run_dir)

    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p)
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    child_env.setdefault("PYTHONUNBUFFERED", "1")

    overrides: dict[str, Any] = {"quorum.min_clients": str(len(clients))}
    overrides.update(coordinator_overrides)

    children: list[_Child] = []
    broker = MosquittoProcess(workdir=log_dir / "broker")
    with _sigterm_as_exit():
        try:
            broker.start()
            logs = {"broker": broker.log_path}
            _say(echo, f"mosquitto on 127.0.0.1:{broker.port} (log {broker.log_path})")
            coordinator_cmd = [PYTHON, "-m", "coordinator", "run"]
            if config is not None:
                coordinator_cmd += ["--config", str(config)]
            coordinator_cmd += ["--broker.host", broker.host, "--broker.port", str(broker.port),
                                "--run.output_dir", str(out_dir), "--run.name", run_name]
            for key, value in overrides.items():
                coordinator_cmd.append(f"--{key}")
                coordinator_cmd += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            started = time.monotonic()
            coordinator = _spawn("coordinator", coordinator_cmd, log_dir, child_env)
            children.append(coordinator)
            client_ids = []
            for k, extra in enumerate(clients, start=1):
                extra = [str(a) for a in extra]
                client_id = _flag_value(extra, "--client-id") or f"client-{k}"
                client_ids.append(client_id)
                cmd = [PYTHON, "-m", "edge_client", "--broker", broker.host, "--port", str(broker.port),
                       "--run", run_name, "--client-id", client_id, *extra]
                children.append(_spawn(client_id, cmd, log_dir, child_env))
            if len(set(client_ids)) != len(client_ids):
                raise FederationError(f"client ids are not unique: {client_ids}")
            _say(echo, f"coordinator and {len(clients)} clients started; logs in {log_dir}")
            deadline = started + timeout_s
            _wait(children, coordinator, deadline, timeout_s)
            wall_s = time.monotonic() - started
            codes = {c.name: c.process.returncode for c in children}
        except BaseException as exc:
            left = [c.name for c in children if c.process.poll() is None]
            if left:
                _say(echo, f"{type(exc).__name__}: stopping {', '.join(left)}")
            raise
        finally:
            _stop_all(children)
            broker.close()  # keeps the workdir we gave it, with mosquitto.log

    logs.update({c.name: c.log_path for c in children})
    metrics_path = run_dir / "metrics.jsonl"
    summary_path = run_dir / "summary.json"
    if not metrics_path.is_file() or not summary_path.is_file():
        raise FederationError(f"the coordinator exited 0 but wrote no {metrics_path.name} / {summary_path.name} "
                              f"in {run_dir}\n{_tail_text(coordinator)}")
    with metrics_path.open(encoding="utf-8") as fh:
        metrics = [json.loads(line) for line in fh if line.strip()]
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return RunReport(run_name=run_name, run_dir=run_dir, metrics=metrics, summary=summary, wall_s=wall_s,
                     coordinator_exit_code=codes.pop("coordinator"), client_exit_codes=codes, logs=logs,
                     broker_port=broker.port, commands={c.name: c.command for c in children})


def _wait(children: list[_Child], coordinator: _Child, deadline: float, timeout_s: float) -> None:
    """Return once every process exited 0; raise FederationError on a failure or at the deadline."""
    clients = [c for c in children if c is not coordinator]
    client_deadline: float | None = None
    while True:
        now = time.monotonic()
        for child in children:
            code = child.process.poll()
            if code is not None and code != 0:
                raise FederationError(f"{child.name} exited with code {code}\n{_tail_text(child)}")
        if coordinator.process.poll() is not None:
            if all(c.process.poll() is not None for c in clients):
                return
            if client_deadline is None:
                client_deadline = min(deadline, now + _CLIENT_EXIT_GRACE_S)
            if now > client_deadline:
                left = [c for c in clients if c.process.poll() is None]
                raise FederationError(
                    f"the coordinator finished but {len(left)} client(s) did not exit within "
                    f"{_CLIENT_EXIT_GRACE_S:g} s: {', '.join(c.name for c in left)}\n"
                    + "\n".join(_tail_text(c) for c in left))
        if now > deadline:
            running = [c for c in children if c.process.poll() is None]
            raise FederationError(f"timed out after {timeout_s:g} s; still running: "
                                  f"{', '.join(c.name for c in running)}\n" + _tail_text(coordinator))
        time.sleep(_POLL_S)


def _spawn(name: str, command: list[str], log_dir: Path, env: Mapping[str, str]) -> _Child:
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("wb")
    handle.write(("$ " + " ".join(command) + "\n").encode())
    handle.flush()
    try:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True,  # own process group
                                   preexec_fn=_die_with_parent(os.getpid()))
    except OSError:
        handle.close()
        raise
    return _Child(name, command, log_path, process, handle)


def _die_with_parent(parent_pid: int) -> Any:
    """A preexec_fn asking Linux to SIGKILL the child if this bench process dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def arm() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return arm


def _stop_all(children: list[_Child]) -> None:
    """SIGTERM every child's process group, then SIGKILL what is left after a grace period; close logs."""
    for child in children:
        if child.process.poll() is None:
            _signal_group(child.process, signal.SIGTERM)
    end = time.monotonic() + _TERM_GRACE_S
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        # Kill the group even when its leader is gone: a grandchild could still hold it.
        _signal_group(child.process, signal.SIGKILL)
        if child.process.poll() is None:
            child.process.wait()
        child.log_handle.close()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass


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


def _tail_text(child: _Child, lines: int = TAIL_LINES) -> str:
    if not child.log_handle.closed:
        child.log_handle.flush()
    try:
        text = child.log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {child.log_path} ---\n{tail}"


def _say(echo: bool, message: str) -> None:
    if echo:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- output helpers ------------------------------------------------------------------------------------


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
    """The standard per-round table of a run, from its metrics.jsonl rows."""
    headers = ["round", "clients", "examples", "test accuracy", "test loss", "round time (s)",
               "slowest client training (s)", "overhead (s)", "MB in", "MB out"]
    rows = [[m["round"], m["clients"], m["examples"], f"{m['test_accuracy']:.4f}", f"{m['test_loss']:.4f}",
             f"{m['round_time_s']:.2f}", f"{m['slowest_train_s']:.2f}", f"{m['overhead_s']:.2f}",
             f"{m['bytes_in'] / 1e6:.2f}", f"{m['bytes_out'] / 1e6:.2f}"] for m in metrics]
    return headers, rows


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
