"""A misbehaving device for fault tests: for every round it publishes garbage, malformed and
mis-shaped updates, NaNs, a spoofed sender, then one valid update twice (a duplicate)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from federation.protocol.messages import ClientStatus, GlobalModel, RunEnd, Update, decode_message
from federation.protocol.topics import RunTopics

log = logging.getLogger("hostile_client")


def bad_payloads(model: GlobalModel, client_id: str, run: str, oversize_bytes: int) -> list[tuple[str, bytes]]:
    """(expected rejection reason, payload) pairs for one round."""
    weights = [(name, np.array(w)) for name, w in model.tensors]

    def update(**changes: object) -> Update:
        fields = dict(run=run, round=model.round, sender=client_id, num_examples=100,
                      metrics={"train_time_s": 0.1}, tensors=weights)
        fields.update(changes)
        return Update(**fields)  # type: ignore[arg-type]

    wrong_shape = [(n, w.reshape(-1)) if i == 0 else (n, w) for i, (n, w) in enumerate(weights)]
    with_nan = [(n, w.copy()) for n, w in weights]
    with_nan[-1][1][0] = np.nan
    bad_version = msgpack.unpackb(update().encode())
    bad_version["version"] = 99
    negative = msgpack.unpackb(update().encode())
    negative["num_examples"] = -5
    return [
        ("malformed", b"\xc1 this is not msgpack"),
        ("malformed", msgpack.packb({"version": 1, "type": "update", "hello": [1, 2, 3]})),
        ("version", msgpack.packb(bad_version, use_bin_type=True)),
        ("bad_tensors", update(tensors=wrong_shape).encode()),
        ("bad_tensors", update(tensors=weights[:-1]).encode()),
        ("not_finite", update(tensors=with_nan).encode()),
        ("bad_num_examples", msgpack.packb(negative, use_bin_type=True)),
        ("bad_num_examples", update(num_examples=10**12).encode()),
        ("sender_mismatch", update(sender="someone-else").encode()),
        ("wrong_run", update(run="other-run").encode()),
        ("wrong_round", update(round=model.round + 5).encode()),
        ("too_large", b"\x00" * oversize_bytes),
    ]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--client-id", default="hostile")
    p.add_argument("--oversize-bytes", type=int, default=3_000_000)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    topics = RunTopics("fedmq", args.run)
    models: list[GlobalModel] = []
    ended = threading.Event()
    wake = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        message = decode_message(msg.payload)
        if isinstance(message, GlobalModel):
            models.append(message)
            wake.set()
        elif isinstance(message, RunEnd) and not msg.retain:
            ended.set()
            wake.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fedmq-client-{args.client_id}")
    status = ClientStatus(run=args.run, round=0, sender=args.client_id, status="online", num_examples=100)
    client.will_set(topics.client_status(args.client_id), ClientStatus(
        run=args.run, round=0, sender=args.client_id, status="offline").encode(), qos=1, retain=True)
    client.on_message = on_message

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe([(topics.global_model, 1), (topics.run_end, 1)])
        c.publish(topics.client_status(args.client_id), status.encode(), qos=1, retain=True)

    client.on_connect = on_connect
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    done_rounds: set[int] = set()
    while not ended.is_set():
        wake.wait(1)
        wake.clear()
        for model in list(models):
            if model.round in done_rounds:
                continue
            done_rounds.add(model.round)
            for reason, payload in bad_payloads(model, args.client_id, args.run, args.oversize_bytes):
                client.publish(topics.update(args.client_id), payload, qos=1).wait_for_publish(10)
                log.info("round %d: sent a payload the coordinator must reject as %s", model.round, reason)
            good = Update(run=args.run, round=model.round, sender=args.client_id, num_examples=100,
                          metrics={"train_time_s": 0.1}, tensors=[(n, np.array(w)) for n, w in model.tensors])
            for _ in range(2):  # the second one is a duplicate
                client.publish(topics.update(args.client_id), good.encode(), qos=1).wait_for_publish(10)
            log.info("round %d: sent a valid update twice", model.round)
    client.publish(topics.client_status(args.client_id), ClientStatus(
        run=args.run, round=0, sender=args.client_id, status="offline").encode(), qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
