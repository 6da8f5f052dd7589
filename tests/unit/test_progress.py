"""Tests for the live progress of the coordinator (coordinator.progress) and of an edge client
(edge_client.progress), and for the logging set-up: a panel on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
from rich.console import Console

from coordinator.metrics import RoundMetrics
from coordinator.progress import RunProgress, format_remaining
from edge_client.progress import ClientProgress
from tests.support import REPO_ROOT



def text_of(renderable: object, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def metrics(round_: int, accuracy: float, loss: float) -> RoundMetrics:
    return RoundMetrics(round=round_, clients=2, examples=1200, test_loss=loss, test_accuracy=accuracy,
                        bytes_in=1_800_000, bytes_out=900_000, round_time_s=12.5, slowest_train_s=11.0,
                        overhead_s=1.5, aggregate_s=0.01, evaluate_s=0.5, client_ids=["a", "b"])


# ---- coordinator --------------------------------------------------------------------------------------


def test_coordinator_panel_shows_round_updates_deadline_accuracy_and_clients() -> None:
    progress = RunProgress("demo", 5)
    progress.state_changed(0, "waiting_for_clients", ["pi-1", "pi-2", "pi-3"], "need 2 online clients")
    progress.state_changed(0, "waiting_for_clients", ["pi-1", "pi-3"])  # pi-2 went offline
    progress.round_closed(metrics(1, 0.8553, 0.4064))
    progress.state_changed(2, "training", ["pi-1", "pi-3"], "expecting 2 of 2 online clients")
    progress.round_started(2, expected=2, deadline=1000.0 + 245)
    progress.update_accepted("pi-3", 1, 2)
    text = text_of(progress.render(now=1000.0))
    assert "fedmq coordinator, run demo" in text
    assert "2 / 5  (1 closed)" in text
    assert "training: expecting 2 of 2 online clients" in text
    assert "1 / 2 received (pi-3)" in text
    assert "in 4 m 05 s" in text
    assert "round 1: accuracy 0.8553, loss 0.4064, 2 clients, 12.5 s" in text
    assert "2 online: pi-1, pi-3" in text and "1 offline: pi-2" in text


def test_coordinator_panel_hides_the_deadline_between_rounds() -> None:
    progress = RunProgress("demo", 3)
    progress.round_started(1, expected=2, deadline=50.0)
    assert "deadline" in text_of(progress.render(now=60.0)) and "passed 10 s ago" in text_of(progress.render(60.0))
    progress.round_closed(metrics(1, 0.5, 1.0))
    text = text_of(progress.render(now=60.0))
    assert "deadline" not in text and "updates" not in text
    assert "none yet" not in text and "0 online" in text
    progress.finished("done", "")
    assert "phase       done" in text_of(progress.render(now=60.0))


def test_format_remaining() -> None:
    assert format_remaining(9.7) == "in 9 s"
    assert format_remaining(600) == "in 10 m 00 s"
    assert format_remaining(3 * 3600 + 65) == "in 3 h 01 m"
    assert format_remaining(-75) == "passed 1 m 15 s ago"


def test_live_panel_draws_on_a_terminal_console_and_stops() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system=None)
    with RunProgress("demo", 2, console, refresh_per_second=20) as progress:
        assert progress.live
        progress.state_changed(1, "training", ["pi-1"])
        time.sleep(0.2)
    assert not progress.live
    assert "fedmq coordinator, run demo" in out.getvalue() and "pi-1" in out.getvalue()


def test_without_a_console_nothing_is_drawn() -> None:
    progress = RunProgress("demo", 2)
    progress.start()
    assert not progress.live
    progress.stop()


# ---- edge client --------------------------------------------------------------------------------------


def test_client_panel_shows_connection_round_and_batches() -> None:
    connected = threading.Event()
    progress = ClientProgress("pi-kitchen", "mqtt://broker.lan:1883 (MQTT 3.1.1)", connected=connected)
    assert "disconnected, reconnecting" in text_of(progress.render())
    connected.set()
    progress.training_started(3, 5, epochs=2)
    progress.batch_done(2, 10, 40, {"loss": np.float32(0.5), "accuracy": 0.75})
    text = text_of(progress.render())
    assert "fedmq client pi-kitchen" in text and "mqtt://broker.lan:1883 (MQTT 3.1.1)  connected" in text
    assert "3 / 5  (0 trained here)" in text and "training" in text
    assert "epoch 2/2, batch 10/40" in text and "loss 0.5000, accuracy 0.7500" in text
    progress.round_done(3, {"loss": 0.41, "accuracy": 0.85}, 12.34, published=True)
    text = text_of(progress.render())
    assert "waiting for the next round's model" in text and "batch" not in text
    assert "round 3: loss 0.4100, accuracy 0.8500, 12.3 s; update published" in text
    assert "(1 trained here)" in text
    progress.finished("left the run after training 1 round(s) here")
    text = text_of(progress.render())
    assert "connected" not in text and "closed" in text and "left the run after training 1 round(s) here" in text


# ---- logging and terminal detection ----------------------------------------------------------------------


def run_python(code: str, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter, without the variables that make rich pretend to have a terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env.update(PYTHONPATH=str(REPO_ROOT), TERM="xterm-256color")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, text=True, timeout=60,
                          stdout=subprocess.PIPE, stderr=stderr)


def test_coordinator_panel_shows_site_relays_and_their_device_counts() -> None:
    """Issue 16: a site's presence comes summarized through its relay; the panel names sites and counts."""
    progress = RunProgress("demo", 3)
    assert "sites" not in text_of(progress.render(now=0.0))
    progress.sites_changed({"factory-1": 50, "shop-2": 12})
    text = text_of(progress.render(now=0.0))
    assert "2 relays, 62 devices: factory-1 50, shop-2 12" in text
    progress.sites_changed({f"site-{k:02d}": k for k in range(1, 11)})
    assert "10 relays, 55 devices: site-01 1, site-02 2" in text_of(progress.render(now=0.0), width=200)
    assert "and 2 more" in text_of(progress.render(now=0.0), width=200)
    progress.sites_changed({})
    assert "relays" not in text_of(progress.render(now=0.0))
