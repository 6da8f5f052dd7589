"""Fault benchmark: runs Fashion-MNIST federations while killing clients, the coordinator and the broker,
with a hostile device and a size-capped broker, and prints rounds completed, updates lost and duplicates."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo.local_federation import REPO_ROOT, LocalFederation
from federated_run import print_table, write_results

NAME = "faults"
ROUNDS = 4
CLIENTS = 3
_TRAINED = re.compile(r"round (\d+): trained in")


@dataclass
class Outcome:
    fault: str
    behaviour: str
    rounds: int
    lost: int
    duplicates: int
    rejected: int
    ignored: int
    accuracy: float


def _wait_for(predicate: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("fault scenario did not reach its trigger")
        time.sleep(0.2)


def _logged(fed: LocalFederation, name: str, text: str) -> Callable[[], bool]:
    return lambda: text in fed.procs[name].log_path.read_text(errors="replace")


def _overrides(**extra: object) -> dict[str, object]:
    return {"training.rounds": ROUNDS, "quorum.min_clients": 2, "quorum.round_deadline_s": 600, **extra}


def _start_clients(fed: LocalFederation, examples: int, extra: list[str] | None = None) -> list[str]:
    names = [f"dev-{k}" for k in range(1, CLIENTS + 1)]
    for k, name in enumerate(names, start=1):
        fed.start_client(name, ["--dataset", "fashion_mnist", "--max-examples", str(examples),
                                "--partition", f"{k}/{CLIENTS}", *(extra or [])])
    return names


def _outcome(fed: LocalFederation, fault: str, behaviour: str, whole_run_clients: list[str]) -> Outcome:
    """Count, from the clients' own logs and the coordinator's metrics, what was lost or double-counted."""
    rows = fed.metrics()
    accepted = {r["round"]: r["client_ids"] for r in rows}
    lost = 0
    for name in whole_run_clients:
        trained = {int(m) for m in _TRAINED.findall(fed.procs[name].log_path.read_text(errors="replace"))}
        lost += sum(1 for r in trained if name not in accepted.get(r, []))
    duplicates = sum(len(ids) - len(set(ids)) for ids in accepted.values())
    rejected = sum(sum(r["rejected"].values()) for r in rows)
    ignored = sum(sum(r.get("ignored", {}).values()) for r in rows)
    return Outcome(fault, behaviour, len(rows), lost, duplicates, rejected, ignored, rows[-1]["test_accuracy"])


def no_fault(fed: LocalFederation, examples: int) -> Outcome:
    fed.start_coordinator(_overrides())
    names = _start_clients(fed, examples)
    _check_exit(fed.wait_all(900))
    return _outcome(fed, "none (reference)", "-", names)


def client_killed(fed: LocalFederation, examples: int) -> Outcome:
    fed.start_coordinator(_overrides())
    names = _start_clients(fed, examples)
    _wait_for(_logged(fed, "dev-3", "round 2/4: training"))
    fed.kill("dev-3")
    fed.start_client("dev-3-back", ["--dataset", "fashion_mnist", "--max-examples", str(examples),
                                    "--partition", f"3/{CLIENTS}"])
    _check_exit(fed.wait_all(900), killed={"dev-3"})
    rows = fed.metrics()
    back = [r["round"] for r in rows if "dev-3-back" in r["client_ids"]]
    return _outcome(fed, "kill -9 one of three clients mid-training (round 2), restart it",
                    f"its last will closed round 2 with 2 updates ({rows[1]['round_time_s']:.0f} s, deadline 600 s); "
                    f"restarted, it took part in rounds {back}", names[:2])


def coordinator_killed(fed: LocalFederation, examples: int) -> Outcome:
    fed.start_coordinator(_overrides())
    names = _start_clients(fed, examples)
    _wait_for(_logged(fed, "dev-1", "round 3: trained in"))
    fed.kill("coordinator")
    fed.start_coordinator(_overrides(), name="coordinator-restarted")
    _check_exit(fed.wait_all(900), killed={"coordinator"})
    resumed = re.search(r"resuming run '\w+' after round (\d+)", fed.procs["coordinator-restarted"].log_path.read_text())
    return _outcome(fed, "kill -9 the coordinator mid-round 3, restart it",
                    f"resumed after round {resumed[1] if resumed else '?'} from its checkpoint; clients re-sent "
                    "their round-3 updates, no client restarted", names)


def broker_restarted(fed: LocalFederation, examples: int) -> Outcome:
    assert fed.broker is not None
    fed.start_coordinator(_overrides())
    names = _start_clients(fed, examples)
    _wait_for(_logged(fed, "dev-1", "round 2/4: training"))
    fed.broker.stop()
    time.sleep(5)
    fed.broker.start()
    _check_exit(fed.wait_all(900))
    return _outcome(fed, "stop Mosquitto mid-round 2 for 5 s, start it again",
                    "everyone reconnected with backoff; coordinator re-published state and model; "
                    "queued updates delivered", names)


def late_joiner(fed: LocalFederation, examples: int) -> Outcome:
    fed.start_coordinator(_overrides())
    names = _start_clients(fed, examples)
    _wait_for(_logged(fed, "dev-1", "round 1/4: training"))
    time.sleep(1.0)
    fed.start_client("dev-late", ["--dataset", "fashion_mnist", "--index-range",
                                  f"{examples}:{examples + examples // CLIENTS}"])
    _check_exit(fed.wait_all(900))
    rows = fed.metrics()
    joined = [r["round"] for r in rows if "dev-late" in r["client_ids"]]
    return _outcome(fed, "a fourth client joins 1 s after round 1 started",
                    f"not in round 1's cohort, it waited; asked from round {joined[0] if joined else '-'} on, "
                    f"it took part in rounds {joined}", [*names, "dev-late"])


def broker_restarted_after_an_update(fed: LocalFederation, examples: int) -> Outcome:
    assert fed.broker is not None
    fed.start_coordinator(_overrides())
    names = _start_clients(fed, examples)
    _wait_for(_logged(fed, "dev-1", "round 2: trained in"))
    fed.broker.stop()
    time.sleep(5)
    fed.broker.start()
    _check_exit(fed.wait_all(900))
    return _outcome(fed, "restart Mosquitto right after one client's round-2 update",
                    "the coordinator re-published the open round's model; the client re-sent its update, "
                    "counted once (a copy already received is ignored as a duplicate, not rejected)", names)


def hostile_client(fed: LocalFederation, examples: int) -> Outcome:
    fed.start_coordinator(_overrides(**{"broker.max_payload_mb": 2.0}))
    names = _start_clients(fed, examples)
    fed.spawn("hostile", [sys.executable, "-m", "tests.integration.hostile_client", "--port", str(fed.port),
                          "--run", fed.run_name])
    _check_exit(fed.wait_all(900))
    rows = fed.metrics()
    reasons = sorted({k for r in rows for k in r["rejected"]})
    return _outcome(fed, "a fourth device sends 12 bad payloads and a duplicate every round",
                    f"each rejected with a logged reason ({', '.join(reasons)}); its one valid update "
                    "per round counted once", names)


def size_capped_broker(fed: LocalFederation, examples: int) -> Outcome:
    fed.start_coordinator(_overrides(**{"broker.chunk_bytes": 250_000}))
    names = _start_clients(fed, examples, ["--chunk-bytes", "250000"])
    _check_exit(fed.wait_all(900))
    return _outcome(fed, "Mosquitto message_size_limit 300 kB, model 0.9 MB",
                    "model and updates sent as 4 sha256-checked chunks each and reassembled", names)


def cluster_node_killed(fed: LocalFederation, examples: int) -> Outcome:
    """A 3-node NATS cluster instead of Mosquitto; dev-k starts on node k, the coordinator on node 1."""
    from broker.nats_cluster import NatsCluster

    with NatsCluster(fed.workdir / "nats", nodes=3) as cluster:
        urls = cluster.mqtt_urls()
        fed.start_coordinator(_overrides(**{"broker.host": ",".join(urls), "broker.port": cluster.ports[0].mqtt,
                                            "quorum.min_clients": CLIENTS}))
        names = [f"dev-{k}" for k in range(1, CLIENTS + 1)]
        for k, name in enumerate(names):
            fed.spawn(name, [sys.executable, "-m", "edge_client", "--broker", ",".join(urls[k:] + urls[:k]),
                             "--run", fed.run_name, "--client-id", name, "--dataset", "fashion_mnist",
                             "--max-examples", str(examples), "--partition", f"{k + 1}/{CLIENTS}"])
        _wait_for(_logged(fed, "dev-1", "round 2/4: training"))
        killed_at = time.monotonic()
        cluster.kill(0)
        _wait_for(lambda: any(f"connected to {url}" in fed.procs["coordinator"].log_path.read_text(errors="replace")
                              for url in urls[1:]), 300)
        back_s = time.monotonic() - killed_at
        _check_exit(fed.wait_all(900))
    return _outcome(fed, "3-node NATS cluster: kill -9 the node of the coordinator and dev-1 mid-round 2",
                    f"both failed over to a surviving node (the coordinator {back_s:.0f} s after the kill); the "
                    "re-published model brought re-sends, counted once", names)


SCENARIOS: list[tuple[Callable[[LocalFederation, int], Outcome], list[str]]] = [
    (no_fault, []), (client_killed, []), (coordinator_killed, []), (broker_restarted, []),
    (late_joiner, []), (broker_restarted_after_an_update, []), (hostile_client, []), (size_capped_broker, ["message_size_limit 300000"]),
    (cluster_node_killed, []),
]
OWN_BROKER = {cluster_node_killed}   # scenarios that start their own broker instead of Mosquitto


def _check_exit(codes: dict[str, int], killed: set[str] = frozenset()) -> None:
    bad = {name: code for name, code in codes.items() if code != 0 and name not in killed}
    if bad:
        raise RuntimeError(f"processes failed: {bad}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python bench/faults.py", description=__doc__)
    p.add_argument("--examples", type=int, default=15000, help="Fashion-MNIST training images shared by the 3 clients")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--only", default="", help="run only the scenarios with these function names (comma-separated)")
    args = p.parse_args(argv)
    outcomes = []
    for scenario, broker_config in SCENARIOS:
        if args.only and scenario.__name__ not in args.only.split(","):
            continue
        workdir = args.out / NAME / scenario.__name__
        shutil.rmtree(workdir, ignore_errors=True)
        started = time.monotonic()
        with LocalFederation(workdir, run_name="faults", broker_config=broker_config) as fed:
            if scenario not in OWN_BROKER:
                fed.start_broker()
            outcomes.append(scenario(fed, args.examples))
        print(f"{scenario.__name__}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(f"\nFashion-MNIST, {CLIENTS} clients with {args.examples // CLIENTS} images each, {ROUNDS} rounds, "
          "full test set\n")
    print_table(["fault", "what the system did", "rounds completed", "updates lost", "duplicates counted",
                 "rejected (errors)", "ignored (late, duplicate)", "final accuracy"],
                [[o.fault, o.behaviour, f"{o.rounds}/{ROUNDS}", o.lost, o.duplicates, o.rejected, o.ignored,
                  f"{o.accuracy:.4f}"] for o in outcomes])
    write_results(args.out / f"{NAME}.json", {"outcomes": [o.__dict__ for o in outcomes]})
    ok = all(o.rounds == ROUNDS and o.lost == 0 and o.duplicates == 0 for o in outcomes)
    print(f"\n**{'PASS' if ok else 'FAIL'}**: every run completed, no update lost, none counted twice")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
