"""The live dashboard in a real headless Chromium (Debian's, driven by Playwright), against a real Mosquitto
with a websockets listener, a real coordinator and two edge clients: round, clients, chart, run end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from broker import free_port
from demo.local_federation import REPO_ROOT, LocalFederation
from federation.protocol.messages import ClientStatus, RoundMetricsMessage, decode_message
from tests.support import probe_client, retained_messages

pytestmark = pytest.mark.timeout(300)

RUN = "dash"
ROUNDS = 3
CLIENTS = ("dev-1", "dev-2")
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
# Offline and quiet: no network but the page's own, no first-run work, no GPU (headless servers, CI).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
WAIT_MS = 180_000


def chromium_path() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium binary on PATH: install Debian's `chromium` package (scripts/setup.sh does)")


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """Debian's Chromium under Playwright; Playwright gives it a fresh temporary profile (user data dir)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def text_is(page: Page, selector: str, expected: str) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s)?.textContent === t", arg=[selector, expected],
                           timeout=WAIT_MS)


def chart_points(page: Page, chart: str) -> list[tuple[int, float]]:
    return [(int(r), float(v)) for r, v in page.eval_on_selector_all(
        f"#{chart} circle.point", "els => els.map(e => [e.dataset.round, e.dataset.value])")]


def publish_status(port: int, status: ClientStatus) -> None:
    with probe_client(port, "test-status-publisher") as client:
        client.publish(f"fedmq/{RUN}/client/{status.sender}/status", status.encode(), qos=1,
                       retain=True).wait_for_publish(10)


def save_artifact(source: Path, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    shutil.copyfile(source, target)
    return target


def test_dashboard_shows_a_live_run_in_chromium(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "fed", run_name=RUN, ws_port=free_port())
    try:
        fed.start_broker()
        assert not fed.embedded_broker, "the dashboard needs Mosquitto's websockets listener"
        http_port = free_port()
        dashboard = fed.start_dashboard(http_port)  # python -m coordinator dashboard, a real process
        url = f"http://127.0.0.1:{http_port}/"

        with headless_chromium() as browser:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            requested: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url)
            text_is(page, "#broker", "broker: connected")
            text_is(page, "#run", RUN)

            # Two clients, then the coordinator: the page sees them come online, then the rounds.
            for k, client_id in enumerate(CLIENTS, start=1):
                fed.start_client(client_id, ["--dataset", "fashion_mnist", "--partition", f"{k}/{len(CLIENTS)}",
                                             "--max-examples", "1200"])
            text_is(page, "#online-count", str(len(CLIENTS)))
            fed.start_coordinator({"training.rounds": ROUNDS, "quorum.min_clients": len(CLIENTS),
                                   "quorum.round_deadline_s": 120, "evaluation.max_examples": 500})
            page.wait_for_function(
                "document.querySelectorAll('#chart-accuracy circle.point').length >= 2"
                " && document.getElementById('online-count').textContent === '2'", timeout=WAIT_MS)
            live_shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(live_shot), full_page=True)
            assert page.eval_on_selector_all("#clients tbody tr[data-status=online]", "rows => rows.length") == 2

            # The end: every round on the chart, the run-end banner, the coordinator done, both clients offline.
            text_is(page, "#round", f"{ROUNDS} / {ROUNDS}")
            page.wait_for_selector("#run-end:not([hidden])", timeout=WAIT_MS)
            text_is(page, "#phase", "done")
            text_is(page, "#coordinator", "offline")
            text_is(page, "#online-count", "0")
            text_is(page, "#offline-count", f"{len(CLIENTS)} offline")
            end_shot = tmp_path / "dashboard-end.png"
            page.screenshot(path=str(end_shot), full_page=True)
            codes = fed.wait_all(120)  # not the dashboard, a service
            assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0}, codes
            assert dashboard.popen.poll() is None, "the dashboard server keeps serving after the run"

            rows = fed.metrics()
            assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
            assert chart_points(page, "chart-accuracy") == [
                (r["round"], pytest.approx(r["test_accuracy"], abs=1e-12)) for r in rows]
            assert chart_points(page, "chart-loss") == [
                (r["round"], pytest.approx(r["test_loss"], abs=1e-12)) for r in rows]
            assert page.inner_text("#accuracy") == f"{rows[-1]['test_accuracy']:.4f}"
            assert page.eval_on_selector_all("#rounds tbody tr", "rows => rows.length") == ROUNDS
            assert sorted(page.eval_on_selector_all("#clients tbody tr", "rows => rows.map(r => r.dataset.client)")) \
                == list(CLIENTS)
            assert f"final test accuracy {rows[-1]['test_accuracy']:.4f}" in page.inner_text("#run-end")

            # A device that can't train says why in its status; the page shows it (issue 9).
            reason = "this device's classes do not match the coordinator's: 2 local classes ('cat', 'dog' ...)"
            publish_status(fed.port, ClientStatus(run=RUN, round=0, sender="misfit", error=reason))
            page.wait_for_selector("#clients tr[data-client=misfit] td.problem", timeout=30_000)
            assert page.inner_text("#clients tr[data-client=misfit] td.problem") == "can't train: " + reason

            # A page opened after the run draws the whole curve from the one retained metrics message.
            late = browser.new_page()
            late.goto(url)
            text_is(late, "#round", f"{ROUNDS} / {ROUNDS}")
            late.wait_for_function(f"document.querySelectorAll('#chart-loss circle.point').length === {ROUNDS}",
                                   timeout=30_000)
            assert chart_points(late, "chart-accuracy") == chart_points(page, "chart-accuracy")
            # Over wall-clock time (issue 13): the same points, placed at each round's elapsed_s, from history alone.
            late.click("#x-time")
            text_is(late, "#accuracy-caption", "test accuracy over time")
            assert late.get_attribute("#x-time", "aria-pressed") == "true"
            placed = late.eval_on_selector_all("#chart-accuracy circle.point",
                                               "els => els.map(e => [+e.dataset.round, +e.dataset.x, +e.getAttribute('cx')])")
            assert [(rnd, x) for rnd, x, _ in placed] == [
                (r["round"], pytest.approx(r["elapsed_s"], abs=1e-9)) for r in rows]
            assert all(r["elapsed_s"] > 0 for r in rows)
            xs = [cx for _, _, cx in placed]
            assert xs == sorted(xs) and len(set(xs)) == len(xs), xs
            assert "m:ss" in late.eval_on_selector("#chart-accuracy .x-label", "e => e.textContent")
            late.click("#x-round")
            text_is(late, "#accuracy-caption", "test accuracy per round")
            late.close()

            assert problems == [], problems
            hosts = {urlsplit(u).hostname for u in requested if urlsplit(u).scheme not in ("data", "blob")}
            assert hosts == {"127.0.0.1"}, f"the page must load nothing from the internet: {requested}"

        # The broker keeps the last round's metrics (round_metrics, msgpack), with the whole history.
        retained = retained_messages(fed.port, f"fedmq/{RUN}/metrics")
        message = decode_message(retained[f"fedmq/{RUN}/metrics"])
        assert isinstance(message, RoundMetricsMessage)
        assert message.round == ROUNDS and message.total_rounds == ROUNDS
        assert message.test_accuracy == pytest.approx(rows[-1]["test_accuracy"])
        assert message.bytes_in == rows[-1]["bytes_in"] and message.client_ids == list(CLIENTS)
        assert [p["round"] for p in message.history] == list(range(1, ROUNDS + 1))
        assert [p["test_loss"] for p in message.history] == pytest.approx([r["test_loss"] for r in rows])

        # Not a terminal: the coordinator logged plain lines, one per closed round, and no live panel.
        coordinator_log = fed.procs["coordinator"].log_path.read_text()
        assert sum(f"round {r}/{ROUNDS}: 2 clients" in coordinator_log for r in range(1, ROUNDS + 1)) == ROUNDS
        assert "\x1b[" not in coordinator_log and "fedmq coordinator, run" not in coordinator_log

        for shot in (live_shot, end_shot):
            assert shot.stat().st_size > 20_000, f"{shot} looks empty"
        save_artifact(live_shot, "dashboard.png")
        save_artifact(end_shot, "dashboard-end.png")
        (ARTIFACTS / "dashboard-run.json").write_text(json.dumps(rows, indent=1))
    finally:
        fed.stop()


def test_dashboard_shows_a_regressions_errors_in_chromium(tmp_path: Path) -> None:
    """A regression run's retained round_metrics and run_end (published here, as the coordinator would): the page
    shows RMSE and MAE where a classification shows accuracy, charts the RMSE, and ends with both."""
    from coordinator.metrics import RoundMetrics, round_metrics_message
    from federation.protocol.messages import RunEnd

    fed = LocalFederation(tmp_path / "fed", run_name=RUN, ws_port=free_port())
    try:
        fed.start_broker()
        http_port = free_port()
        fed.start_dashboard(http_port)
        rows = [RoundMetrics(round=r, clients=2, examples=350, test_loss=4000.0 / r, test_accuracy=float("nan"),
                             bytes_in=3000, bytes_out=1500, round_time_s=1.5, slowest_train_s=1.0, overhead_s=0.5,
                             aggregate_s=0.0, evaluate_s=0.0, client_ids=list(CLIENTS), test_mae=60.0 - 5 * r,
                             test_rmse=75.5 - 6 * r) for r in (1, 2, 3)]
        with headless_chromium() as browser:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.goto(f"http://127.0.0.1:{http_port}/")
            text_is(page, "#broker", "broker: connected")
            with probe_client(fed.port, "test-metrics-publisher") as client:
                for r in (1, 2, 3):
                    payload = round_metrics_message(rows[r - 1], RUN, ROUNDS, rows[:r]).encode()
                    client.publish(f"fedmq/{RUN}/metrics", payload, qos=1, retain=True).wait_for_publish(10)
                text_is(page, "#accuracy", "57.5")
                end = RunEnd(run=RUN, round=3, sender="coordinator", test_mae=45.0, test_rmse=57.5)
                client.publish(f"fedmq/{RUN}/end", end.encode(), qos=1, retain=True).wait_for_publish(10)
            page.wait_for_selector("#run-end:not([hidden])", timeout=WAIT_MS)
            assert page.inner_text("#accuracy-label").lower() == "test rmse"
            assert page.inner_text("#accuracy-detail") == "MAE 45, after round 3"
            assert page.inner_text("#rounds-accuracy").lower() == "rmse"
            assert page.inner_text("#accuracy-caption") == "test RMSE per round"
            assert chart_points(page, "chart-accuracy") == [(1, 69.5), (2, 63.5), (3, 57.5)]
            assert page.eval_on_selector_all("#rounds tbody tr td:nth-child(3)", "cells => cells.map(c => c.textContent)") \
                == ["57.5", "63.5", "69.5"]
            assert "final test MAE 45, RMSE 57.5" in page.inner_text("#run-end")
            assert problems == [], problems
    finally:
        fed.stop()
