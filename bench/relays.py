"""Site relays against a flat fleet (issue 16): S sites of N simulated devices (python -m edge_client simulate), every
device on the central broker (flat) or on its site's broker behind `python -m coordinator relay` (relayed).

The WAN is a byte-counting TCP proxy in front of the central broker: every site-side connection (the flat run's
devices, the relayed run's relays) goes through it; the coordinator connects directly, as it would in the central
data centre. Printed per mode: WAN bytes per round each way (the whole run's, connections, births and the run's
end included, divided by the rounds; MQTT framing included), the central coordinator's
accepted update bytes and CPU seconds per round (from /proc: decode, validate, aggregate, and the same evaluation in
both modes), its round overhead, and the final weights' largest relative difference between the modes (per tensor,
L2). The simulated devices' updates are seeded by (site seed, device index, round), so both modes see the same ones.

    .venv/bin/python bench/relays.py                       # 3 sites x 50 devices, 3 rounds
    .venv/bin/python bench/relays.py --sites 2 --devices 10 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np

from broker.mosquitto_process import MosquittoProcess
from broker.ports import free_port
from coordinator.checkpoint import load_checkpoint
from demo.local_federation import LocalFederation

CLK_TCK = os.sysconf("SC_CLK_TCK")


class CountingProxy:
    """A TCP proxy on `port` to 127.0.0.1:`target`, counting bytes each way (up: to the broker), in its own thread."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.up = 0
        self.down = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_until_complete(server.serve_forever())

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, broker_writer, True), self._pipe(broker_reader, writer, False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await reader.read(1 << 16):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@dataclass
class ModeResult:
    mode: str
    wan_up_mb: float          # per round
    wan_down_mb: float
    bytes_in_mb: float        # the coordinator's accepted update bytes per round
    cpu_s: float              # coordinator CPU seconds per round
    overhead_s: float         # mean round overhead
    rounds: int
    weights: list[np.ndarray]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> ModeResult:
    sites: list[MosquittoProcess] = []
    with LocalFederation(workdir / mode, run_name="relays") as fed:
        fed.start_broker()
        proxy = CountingProxy(fed.port)
        total = args.sites * args.devices
        coordinator = fed.start_coordinator({
            "training.rounds": args.rounds, "quorum.min_clients": total, "quorum.round_deadline_s": 600,
            "quorum.start_grace_s": 3, "quorum.wait_for_clients_s": 600, "evaluation.max_examples": 500,
            "deploy.enabled": False, "export.tflite": ["float32"], "relay.send_after_s": 600})
        try:
            for i in range(args.sites):
                site = f"site{i + 1}"
                port = proxy.port
                if mode == "relayed":
                    broker = MosquittoProcess(workdir=workdir / mode / f"mosquitto-{site}")
                    broker.start()
                    sites.append(broker)
                    port = broker.port
                    fed.spawn(f"relay-{site}", [sys.executable, "-m", "coordinator", "relay", "--site", site,
                                                "--upstream", f"127.0.0.1:{proxy.port}", "--local",
                                                f"127.0.0.1:{broker.port}", "--run", fed.run_name,
                                                "--send-after-s", "600", "--log-level", "WARNING"])
                fed.spawn(f"sim-{site}", [sys.executable, "-m", "edge_client", "simulate", "--broker", "127.0.0.1",
                                          "--port", str(port), "--run", fed.run_name, "--clients", str(args.devices),
                                          "--id-prefix", f"{site}-dev", "--seed", str(i + 1), "--examples",
                                          "100:1000", "--train-seconds", str(args.train_seconds),
                                          "--report-every", "0"])
            log = coordinator.log_path
            deadline = time.monotonic() + 900
            while "round 1/" not in log.read_text() or "model published" not in log.read_text():
                if time.monotonic() > deadline or coordinator.popen.poll() is not None:
                    raise RuntimeError(f"round 1 never started:\n{coordinator.log_tail()}")
                time.sleep(0.2)
            cpu0 = _cpu_seconds(coordinator.popen.pid)
            metrics = fed.run_dir / "metrics.jsonl"
            while not metrics.is_file() or len(metrics.read_text().splitlines()) < args.rounds:
                if time.monotonic() > deadline or coordinator.popen.poll() is not None:
                    raise RuntimeError(f"the run did not finish its rounds:\n{coordinator.log_tail()}")
                time.sleep(0.2)
            cpu1 = _cpu_seconds(coordinator.popen.pid)
            codes = fed.wait_all(600)
            if set(codes.values()) != {0}:
                raise RuntimeError(f"exit codes {codes}")
            rows = fed.metrics()
        finally:
            for broker in sites:
                broker.close()
    checkpoint = load_checkpoint(fed.run_dir)
    assert checkpoint is not None
    n = args.rounds
    if any(r["clients"] != total for r in rows):
        raise RuntimeError(f"not every device was counted each round: {[r['clients'] for r in rows]}")
    return ModeResult(mode, proxy.up / n / 1e6, proxy.down / n / 1e6,
                      sum(r["bytes_in"] for r in rows) / n / 1e6, (cpu1 - cpu0) / n,
                      sum(r["overhead_s"] for r in rows) / n, n, checkpoint.weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--devices", type=int, default=50, help="simulated devices per site")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-seconds", type=float, default=2.0)
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "runs" / "bench-relays")
    args = p.parse_args(argv)
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    results = [run_mode(mode, args, args.workdir) for mode in ("flat", "relayed")]
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    flat, relayed = results
    difference = max(float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))
                     for a, b in zip(relayed.weights, flat.weights))
    print(f"\n{args.sites} sites x {args.devices} simulated devices, {args.rounds} rounds, reference CNN "
          f"(225,034 float32 weights)\n")
    print("| mode | WAN up per round | WAN down per round | coordinator's accepted update bytes per round | "
          "coordinator CPU per round (round 1 to the last) | round overhead |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.mode} | {r.wan_up_mb:.1f} MB | {r.wan_down_mb:.1f} MB | {r.bytes_in_mb:.1f} MB | "
              f"{r.cpu_s:.2f} s | {r.overhead_s:.2f} s |")
    print(f"\nfinal weights, relayed vs flat: largest relative difference {difference:.2e} (per tensor, L2)")
    return 0 if difference <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
