"""One simulator process: its share of the devices on one event loop, until every device left (run_end), the time
limit passed or it was told to stop; it reports its counts every second to `report` and returns the final ones."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from typing import Callable

from edge_client.simulator.counts import SimCounts
from edge_client.simulator.device import FleetContext, SimDevice
from edge_client.simulator.event_loop import EventLoop
from edge_client.simulator.settings import SimulationSettings
from edge_client.simulator.shared_messages import SharedMessages

log = logging.getLogger(__name__)
REPORT_EVERY_S = 1.0
STOP_GRACE_S = 6.0      # after a stop: time for the devices' offline statuses and DISCONNECTs


def run_worker(settings: SimulationSettings, worker: int, report: Callable[[SimCounts], None]) -> SimCounts:
    loop = EventLoop()
    share = settings.share(worker)
    counts = SimCounts(devices=len(share))
    ctx = FleetContext(settings, loop, SharedMessages(int(settings.max_payload_mb * 1024 * 1024)), counts,
                       secrets.token_hex(6), remaining=len(share))
    devices = [SimDevice(ctx, index) for index in share]
    started = time.monotonic()
    cpu_start = _cpu_s()
    stop_asked: list[str] = []

    def ask_stop(signum: int, frame: object) -> None:
        stop_asked.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, ask_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def tick() -> None:
        counts.cpu_s = _cpu_s() - cpu_start
        report(counts)
        loop.call_later(REPORT_EVERY_S, tick)

    stopping_since = [0.0]

    def done() -> bool:
        if ctx.remaining <= 0:
            return True
        now = time.monotonic()
        over_time = settings.max_seconds > 0 and now - started > settings.max_seconds
        if (stop_asked or over_time) and not stopping_since[0]:
            stopping_since[0] = now
            log.warning("simulator worker %d: stopping (%s); %d devices leave", worker,
                        stop_asked[0] if stop_asked else f"--max-seconds {settings.max_seconds:g}", ctx.remaining)
            for device in devices:
                device.leave()
        return bool(stopping_since[0]) and now - stopping_since[0] > STOP_GRACE_S

    try:
        for device in devices:
            device.start()
        loop.call_later(REPORT_EVERY_S, tick)
        loop.run(done)
        flush_until = time.monotonic() + 2.0   # let the last DISCONNECTs out
        loop.run(lambda: not loop.selector.get_map() or time.monotonic() > flush_until)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        loop.close()
    counts.cpu_s = _cpu_s() - cpu_start
    report(counts)
    return counts


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system
