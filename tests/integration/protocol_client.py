"""A minimal fedmq training client written from PROTOCOL.md alone, with raw paho-mqtt, msgpack and numpy: none
of the project's classes. The conformance test runs it in a real federation; it "trains" by sending the
global weights back, nudged, so it needs no TensorFlow."""

from __future__ import annotations

import argparse
import hashlib
import logging
import queue
import secrets
import sys
import time

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("protocol_client")
ENDING_PHASES = {"exporting", "done", "stopped"}


def envelope(kind: str, run: str, round_: int, sender: str) -> dict:
    return {"version": 1, "type": kind, "run": run, "round": round_, "sender": sender, "sent_at": time.time()}


class ProtocolClient:
    def __init__(self, host: str, port: int, run: str, client_id: str, prefix: str = "fedmq",
                 num_examples: int = 100, factor: float = 0.999, delay_s: float = 0.0) -> None:
        self.run, self.id, self.num_examples = run, client_id, num_examples
        self.factor, self.delay_s = factor, delay_s   # "training": the weights times factor, after delay_s
        self.base = f"{prefix}/{run}"
        self.status_topic = f"{self.base}/client/{client_id}/status"
        self.instance = secrets.token_hex(8)
        self.trained: list[int] = []
        self.inbox: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fedmq-client-{client_id}",
                                protocol=mqtt.MQTTv311, clean_session=True)
        self.mqtt.will_set(self.status_topic, self.status("offline"), qos=1, retain=True)
        self.mqtt.on_connect = self.on_connect
        self.mqtt.on_message = lambda c, u, m: self.inbox.put((m.topic, m.payload, bool(m.retain)))
        self.host, self.port = host, port
        self.coordinator_state: dict | None = None
        self.seen_model = False
        self.chunks: dict[str, dict[int, bytes]] = {}   # transfer sha256 -> index -> data

    def status(self, status: str) -> bytes:
        return msgpack.packb({**envelope("client_status", self.run, self.trained[-1] if self.trained else 0, self.id),
                              "status": status, "software": "protocol-client 1", "num_examples": self.num_examples,
                              "device": {"host": "test", "instance": self.instance}}, use_bin_type=True)

    def on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        client.subscribe([(f"{self.base}/model/global", 1), (f"{self.base}/model/global/chunk/+", 1),
                          (f"{self.base}/end", 1), (f"{self.base}/coordinator/state", 1), (self.status_topic, 1)])
        client.publish(self.status_topic, self.status("online"), qos=1, retain=True)

    def run_until_end(self, timeout: float) -> int:
        self.mqtt.connect(self.host, self.port, keepalive=30)
        self.mqtt.loop_start()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    topic, payload, retained = self.inbox.get(timeout=1)
                except queue.Empty:
                    continue
                if not payload:
                    continue
                message = msgpack.unpackb(payload, raw=False)
                if message.get("version") != 1:
                    continue
                if topic.endswith("/model/global") or "/model/global/chunk/" in topic:
                    model = self.model_from(message)
                    if model is not None:
                        self.handle_model(model)
                elif topic.endswith("/coordinator/state"):
                    self.coordinator_state = message
                elif topic.endswith("/end") and message["type"] == "run_end":
                    state = self.coordinator_state or {}
                    if state.get("status") == "online" and state.get("phase") not in ENDING_PHASES:
                        continue  # not sent by the coordinator: it says it is still running
                    if not retained or self.seen_model:
                        return 0
            return 1
        finally:
            self.mqtt.publish(self.status_topic, self.status("offline"), qos=1, retain=True).wait_for_publish(5)
            self.mqtt.disconnect()
            self.mqtt.loop_stop()

    def model_from(self, message: dict) -> dict | None:
        """A whole global_model message, reassembling a chunked one (section "Chunked transfer")."""
        if message["type"] == "global_model":
            return message
        if message["type"] == "model_chunk":
            assert hashlib.sha256(message["data"]).hexdigest() == message["sha256"]
            self.chunks.setdefault(message["transfer"], {})[message["index"]] = message["data"]
            self.manifests = getattr(self, "manifests", {})
            manifest = self.manifests.get(message["transfer"])
        elif message["type"] == "chunked":
            manifest = message["manifest"]
            self.manifests = getattr(self, "manifests", {})
            self.manifests[manifest["sha256"]] = manifest
        else:
            return None
        if manifest is None:
            return None
        have = self.chunks.get(manifest["sha256"], {})
        if len(have) < len(manifest["chunk_sha256"]):
            return None
        whole = b"".join(have[i] for i in range(len(manifest["chunk_sha256"])))
        assert len(whole) == manifest["size"] and hashlib.sha256(whole).hexdigest() == manifest["sha256"]
        del self.chunks[manifest["sha256"]]
        return msgpack.unpackb(whole, raw=False)

    def handle_model(self, model: dict) -> None:
        self.seen_model = True
        r = model["round"]
        last = getattr(self, "last_sent", None)
        if r in self.trained and last is not None and last[:2] == (r, model.get("weights_sha256")):
            for topic, payload in last[2]:   # the same model offered again: re-send (section "Restarts")
                self.mqtt.publish(topic, payload, qos=1)
            self.resent = getattr(self, "resent", 0) + 1
            log.info("round %d: the same model again; update re-sent", r)
            return
        if r in self.trained or ("cohort" in model and self.id not in model["cohort"]):
            return
        time.sleep(self.delay_s)
        tensors = []
        for t in model["tensors"]:
            array = np.frombuffer(t["data"], dtype=np.dtype(t["dtype"]).newbyteorder("<")).reshape(t["shape"])
            nudged = (array * np.asarray(self.factor, array.dtype)).astype(array.dtype)   # "training"
            tensors.append({"name": t["name"], "dtype": t["dtype"], "shape": list(array.shape),
                            "data": nudged.astype(nudged.dtype.newbyteorder("<")).tobytes()})
        update = {**envelope("update", self.run, r, self.id), "num_examples": self.num_examples,
                  "metrics": {"loss": 1.0, "accuracy": 0.5, "train_time_s": 0.01}, "tensors": tensors}
        payload = msgpack.packb(update, use_bin_type=True)
        topic = f"{self.base}/update/{self.id}"
        chunk = model["train"].get("chunk_bytes", 0)
        sent: list[tuple[str, bytes]] = []
        if chunk and len(payload) > chunk:
            pieces = [payload[i:i + chunk] for i in range(0, len(payload), chunk)]
            hashes = [hashlib.sha256(p).hexdigest() for p in pieces]
            whole = hashlib.sha256(payload).hexdigest()
            for i, piece in enumerate(pieces):
                sent.append((f"{topic}/chunk/{i}", msgpack.packb(
                    {**envelope("model_chunk", self.run, r, self.id), "transfer": whole, "index": i,
                     "count": len(pieces), "sha256": hashes[i], "data": piece}, use_bin_type=True)))
                self.mqtt.publish(*sent[-1], qos=1)
            manifest = {"sha256": whole, "size": len(payload), "chunk_size": chunk, "chunk_sha256": hashes}
            payload = msgpack.packb({**envelope("chunked", self.run, r, self.id), "manifest": manifest},
                                    use_bin_type=True)
            self.chunked_rounds = getattr(self, "chunked_rounds", 0) + 1
        self.mqtt.publish(topic, payload, qos=1).wait_for_publish(60)
        self.last_sent = (r, model.get("weights_sha256"), [*sent, (topic, payload)])
        self.trained.append(r)
        log.info("round %d: update sent", r)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--client-id", default="raw-1")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--num-examples", type=int, default=100)
    p.add_argument("--factor", type=float, default=0.999, help="its update: the global weights times this")
    p.add_argument("--delay-s", type=float, default=0.0, help="seconds of \"training\" before it sends")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    client = ProtocolClient("127.0.0.1", args.port, args.run, args.client_id, num_examples=args.num_examples,
                            factor=args.factor, delay_s=args.delay_s)
    code = client.run_until_end(args.timeout)
    log.info("left after rounds %s, %d of them chunked, %d re-sends", client.trained,
             getattr(client, "chunked_rounds", 0), getattr(client, "resent", 0))
    return code


if __name__ == "__main__":
    sys.exit(main())
