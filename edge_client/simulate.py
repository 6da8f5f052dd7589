"""Command line of the device simulator: `python -m edge_client simulate --broker URL --clients N ...` runs N light
simulated devices (each its own MQTT connection, speaking PROTOCOL.md) in one or more processes, for capacity planning.

It prints a progress line to stderr every few seconds and, with --summary FILE, writes the counts as JSON at the end."""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import queue
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edge_client.simulator.counts import SimCounts
from edge_client.simulator.settings import SimulationSettings, SimulationSettingsError, parse_examples
from federation.cli.broker_flags import add_connection_flags
from federation.config.settings import ConfigError, load_settings
from federation.transport.broker_address import AddressError
from federation.transport.mqtt_link import BrokerAddress

log = logging.getLogger("edge_client.simulate")
FDS_PER_PROCESS = 64   # files a worker holds besides its devices' sockets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_client simulate", description=__doc__.splitlines()[0],
                                allow_abbrev=False,
                                epilog="Exit codes: 0 every device left at the run's end, 1 stopped first (--max-seconds "
                                       "or a signal), 2 bad arguments.")
    add_connection_flags(p, None, "not used: simulated devices are named --id-prefix plus their index")
    fleet = p.add_argument_group("the fleet")
    fleet.add_argument("--clients", type=int, required=True, help="simulated devices")
    fleet.add_argument("--id-prefix", default="sim-", help="client ids are this plus a zero-padded index: sim-0001")
    fleet.add_argument("--processes", type=int, default=1,
                       help="spread the devices over this many worker processes (default 1)")
    fleet.add_argument("--examples", default="600", metavar="N|LOW:HIGH",
                       help="num_examples per device, or a seeded uniform range (default 600)")
    fleet.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    train = p.add_argument_group("training (simulated: a timer, then a real update)")
    train.add_argument("--train-seconds", type=float, default=2.0, help="mean training time per round (default 2)")
    train.add_argument("--train-spread", type=float, default=0.0, metavar="SIGMA",
                       help="log-normal spread of training times (sigma; 0: every device the mean)")
    train.add_argument("--slowdown", type=float, default=1.0, metavar="N",
                       help="slow devices train N times longer (default 1)")
    train.add_argument("--slow-fraction", type=float, default=1.0,
                       help="the share of devices that are slow, with --slowdown (default 1: all)")
    train.add_argument("--noise", type=float, default=1e-3,
                       help="std of the seeded noise an update adds to the global weights (default 0.001)")
    train.add_argument("--chunk-bytes", type=int, default=None,
                       help="chunk updates larger than this (default: the round's train.chunk_bytes)")
    faults = p.add_argument_group("failures and connections")
    faults.add_argument("--failure-rate", type=float, default=0.0,
                        help="probability per round that a device dies while training: its socket closes without "
                             "DISCONNECT, so its will fires (default 0)")
    faults.add_argument("--rejoin-seconds", type=float, default=5.0,
                        help="a dead device comes back after this long (default 5)")
    faults.add_argument("--connect-rate", type=float, default=200.0,
                        help="first connections per second over the fleet, jittered; 0: all at once (an "
                             "announcement storm) (default 200)")
    faults.add_argument("--reconnect-jitter", type=float, default=2.0, metavar="S",
                        help="after a lost connection, reconnect after the backoff plus up to S seconds; 0 with a "
                             "restarted broker is a storm (default 2)")
    faults.add_argument("--keepalive", type=int, default=None, metavar="S",
                        help="MQTT keepalive (default: config [broker] keepalive_s, 30)")
    out = p.add_argument_group("output")
    out.add_argument("--summary", type=Path, default=None, metavar="FILE", help="write the counts as JSON at the end")
    out.add_argument("--report-every", type=float, default=5.0, metavar="S",
                     help="a progress line on stderr every S seconds (0: none; default 5)")
    out.add_argument("--max-seconds", type=float, default=0.0,
                     help="stop after this long even if the run has not ended (0: wait for run_end)")
    out.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """SimulationSettingsError (or ConfigError, AddressError) naming the bad flag."""
    if args.client_id:
        raise SimulationSettingsError("--client-id names one device; simulated devices are named --id-prefix plus "
                                      "their index (sim-0001): give --id-prefix")
    cfg = load_settings(args.config)
    keepalive = cfg.broker.keepalive_s if args.keepalive is None else args.keepalive
    if not 5 <= keepalive <= 3600:
        raise SimulationSettingsError(f"--keepalive {keepalive} is out of range: give 5 to 3600 seconds")
    base = BrokerAddress(port=cfg.broker.port, mqtt_version=args.mqtt_version or cfg.broker.mqtt_version,
                         keepalive_s=keepalive)
    broker = BrokerAddress.parse(args.broker or cfg.broker.host, base, port_flag=args.port)
    low, high = parse_examples(args.examples)
    return SimulationSettings(
        broker=broker, clients=args.clients, run=args.run or cfg.run.name,
        topic_prefix=args.topic_prefix or cfg.broker.topic_prefix, id_prefix=args.id_prefix,
        train_seconds=args.train_seconds, train_spread=args.train_spread, examples_min=low, examples_max=high,
        failure_rate=args.failure_rate, rejoin_seconds=args.rejoin_seconds, slowdown=args.slowdown,
        slow_fraction=args.slow_fraction, processes=args.processes, connect_rate=args.connect_rate,
        reconnect_jitter_s=args.reconnect_jitter, noise=args.noise, seed=args.seed, chunk_bytes=args.chunk_bytes,
        max_payload_mb=cfg.broker.max_payload_mb, summary=args.summary, report_every_s=args.report_every,
        max_seconds=args.max_seconds)


def raise_file_limit(settings: SimulationSettings) -> str:
    """Raise this process's open-file limit to the hard limit (workers inherit it); SimulationSettingsError when a
    worker's devices need more sockets than that. Returns a line saying what was done."""
    per_process = math.ceil(settings.clients / settings.processes)
    need = per_process + FDS_PER_PROCESS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and need > hard:
        fits = max(1, hard - FDS_PER_PROCESS)
        raise SimulationSettingsError(
            f"{settings.clients} devices in {settings.processes} process(es) need about {need} open files per process, "
            f"over this machine's hard limit of {hard}: give --processes {math.ceil(settings.clients / fits)} or more, "
            "or raise the hard limit (ulimit -Hn, /etc/security/limits.conf, LimitNOFILE= in a systemd unit)")
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return f"open-file limit raised from {soft} to {hard} (each process needs about {need})"
    return f"open-file limit {soft} (each process needs about {need})"


class _Progress:
    """The parent's view: the latest counts of every worker, and the periodic stderr line."""

    def __init__(self, settings: SimulationSettings, workers: int) -> None:
        self.settings = settings
        self.parts = [SimCounts() for _ in range(workers)]
        self.started = time.monotonic()
        self._next_line = self.started + settings.report_every_s

    def update(self, worker: int, counts: SimCounts) -> None:
        self.parts[worker] = counts
        now = time.monotonic()
        if self.settings.report_every_s > 0 and now >= self._next_line:
            self._next_line = now + self.settings.report_every_s
            print(self.total.progress_line(now - self.started), file=sys.stderr, flush=True)

    @property
    def total(self) -> SimCounts:
        return SimCounts.merged(self.parts)


def _worker_main(settings: SimulationSettings, worker: int, out: Any) -> None:
    from edge_client.simulator.worker import run_worker

    run_worker(settings, worker, lambda counts: out.put((worker, False, counts.to_wire())))
    out.put((worker, True, None))


def run_fleet(settings: SimulationSettings) -> tuple[SimCounts, float, bool]:
    """Run the fleet; (the merged counts, seconds, True if every device left at the run's end)."""
    progress = _Progress(settings, settings.processes)
    if settings.processes == 1:
        from edge_client.simulator.worker import run_worker

        final = run_worker(settings, 0, lambda counts: progress.update(0, counts))
        return final, time.monotonic() - progress.started, _all_left(final)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(settings, k, out), name=f"simulate-{k}", daemon=True)
             for k in range(settings.processes)]
    for proc in procs:
        proc.start()

    def forward(signum: int, frame: object) -> None:   # the workers make their devices leave, then report
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    finished: set[int] = set()
    try:
        while len(finished) < len(procs):
            try:
                worker, final, wire = out.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if final:
                finished.add(worker)
            else:
                progress.update(worker, SimCounts.from_wire(wire))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for proc in procs:
        proc.join(timeout=15)
    lost = [p.name for p in procs if p.exitcode not in (0, None) or p.is_alive()]
    if lost:
        log.error("simulator workers %s did not finish cleanly; their last counts are in the summary", lost)
    total = progress.total
    return total, time.monotonic() - progress.started, _all_left(total)


def _all_left(counts: SimCounts) -> bool:
    return counts.left == counts.devices


def summary_json(settings: SimulationSettings, counts: SimCounts, elapsed_s: float, ended: bool,
                 load_before: tuple[float, float, float], fd_note: str) -> dict[str, Any]:
    return {"clients": settings.clients, "processes": settings.processes, "broker": settings.broker.url,
            "run": settings.run, "ended": "run_end" if ended else "stopped", "elapsed_s": round(elapsed_s, 3),
            "load_average_start": list(load_before), "load_average_end": list(os.getloadavg()),
            "file_limit": fd_note, **counts.to_wire()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        settings = settings_from_args(args)
        fd_note = raise_file_limit(settings)
    except (SimulationSettingsError, ConfigError, AddressError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    print(f"simulate: {settings.clients} devices ({settings.device_id(1)} to {settings.device_id(settings.clients)}) "
          f"in {settings.processes} process(es) on {settings.broker.url}, run {settings.run!r}; {fd_note}",
          file=sys.stderr, flush=True)
    counts, elapsed, ended = run_fleet(settings)
    print(counts.progress_line(elapsed), file=sys.stderr, flush=True)
    if settings.summary is not None:
        settings.summary.parent.mkdir(parents=True, exist_ok=True)
        settings.summary.write_text(json.dumps(summary_json(settings, counts, elapsed, ended, load_before, fd_note),
                                               indent=1) + "\n")
    return 0 if ended else 1
