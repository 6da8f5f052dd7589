"""Peak memory of a real `python -m edge_client serve` process under hostile HTTP requests and deploy-topic floods.

Starts Mosquitto and serve, deploys a tiny model, runs each attack and prints serve's peak RSS (VmHWM) per attack."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import socket
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np

from broker import MosquittoProcess, free_port
from federation.protocol.byte_chunks import ChunkManifest
from federation.protocol.messages import ChunkedMessage, ModelChunk
from federation.protocol.model_delivery import delivery_messages
from federation.protocol.topics import RunTopics
from tests.deploy_support import (
    RetainedPublisher, deployment, http, serve_status, start_serve, stop, tiny_tflite, )
from tests.support import wait_for

RUN = "attack"
TARGET_MB = 150.0


@dataclass
class Row:
    attack: str
    sent: str
    answer: str
    peak_mb: float
    rss_after_mb: float


def proc_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def png_bytes(mode: str, size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size)).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def npz_bomb(total_bytes: int) -> bytes:
    """A .npz whose one member `x` is a .npy of `total_bytes` zero pixels, deflated: about 1000:1."""
    count = total_bytes // 784
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (%d, 28, 28, 1), }" % count
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    npy_header = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("x.npy", "w", force_zip64=True) as f:
        f.write(npy_header)
        block = bytes(1 << 20)
        left = count * 784
        while left:
            f.write(block[:min(left, len(block))])
            left -= min(left, len(block))
    return buf.getvalue()


def npy_body(total_bytes: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).integers(0, 256, (total_bytes // 784, 28, 28, 1), dtype=np.uint8))
    return buf.getvalue()


def post(port: int, body: bytes, headers: dict[str, str] | None = None) -> str:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return str(r.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError as exc:
        return type(exc).__name__


def raw_request(port: int, head: bytes, body_bytes: int) -> str:
    """Send `head` then `body_bytes` zero bytes (1 MiB at a time); the status line of the answer, or what failed."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(head)
        sent = 0
        try:
            block = bytes(1 << 20)
            while sent < body_bytes:
                s.sendall(block[:min(len(block), body_bytes - sent)])
                sent += min(len(block), body_bytes - sent)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed early: good
        try:
            answer = s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError as exc:
            answer = type(exc).__name__
    return f"{answer or 'no answer'} after {sent / 1e6:.0f} MB"


def flood(port: int, messages: list[tuple[str, bytes]]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{os.getpid()}")
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(120)
    finally:
        client.disconnect()
        client.loop_stop()


def orphan_chunks(topics: RunTopics, count: int, size: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        data = i.to_bytes(4, "big") + bytes(size - 4)
        transfer = hashlib.sha256(b"orphan %d" % i).hexdigest()
        out.append((topics.deploy_chunk(0), ModelChunk(run=RUN, round=9, sender="coordinator", transfer=transfer,
                                                       index=0, count=2, sha256=hashlib.sha256(data).hexdigest(),
                                                       data=data).encode()))
    return out


def fake_manifests(topics: RunTopics, count: int, chunks: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        hashes = tuple(hashlib.sha256(b"%d %d" % (i, j)).hexdigest() for j in range(chunks))
        manifest = ChunkManifest(hashlib.sha256(b"m %d" % i).hexdigest(), chunks * 1024, 1024, hashes)
        out.append((topics.deploy, ChunkedMessage(run=RUN, round=9, sender="coordinator", manifest=manifest).encode()))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run serve with")
    parser.add_argument("--skip", nargs="*", default=[], help="attacks to leave out")
    args = parser.parse_args(argv)
    topics = RunTopics("fedmq", RUN)
    model_a, model_b = tiny_tflite(1), tiny_tflite(2)
    good_image = png_bytes("L", 28)
    with tempfile.TemporaryDirectory() as tmp, MosquittoProcess() as broker:
        work = Path(tmp)
        http_port = free_port()
        log_path = work / "serve.log"
        serve = start_serve(args.python, broker.port, RUN, "victim", work / "models", http_port, log_path)
        publisher = RetainedPublisher(broker.port)
        rows: list[Row] = []
        try:
            for m in delivery_messages(topics, deployment(model_a, RUN, 1), model_a, 1 << 20, "coordinator"):
                publisher.publish(m.topic, m.payload)
            wait_for("the first model", lambda: (serve_status(http_port)["deployed"] or {}).get("model_version") == f"{RUN}@1", 60, log=log_path)
            assert post(http_port, good_image) == "200"

            def measure(name: str, sent: str, attack: Callable[[], str]) -> None:
                if name in args.skip:
                    return
                reset_peak(serve.pid)
                started = time.perf_counter()
                answer = attack()
                alive = serve.poll() is None and http(f"http://127.0.0.1:{http_port}/healthz", timeout=30)[0] == 200
                rows.append(Row(name, sent, f"{answer}{'' if alive else ' (serve down)'} in "
                                f"{time.perf_counter() - started:.1f} s",
                                proc_mb(serve.pid, "VmHWM") if alive else float("nan"),
                                proc_mb(serve.pid, "VmRSS") if alive else float("nan")))
                print(f"{rows[-1]}", flush=True)

            measure("baseline: one 28x28 PNG", f"{len(good_image)} B", lambda: post(http_port, good_image))
            png = png_bytes("L", 13000)
            measure("PNG 13000x13000 grey", f"{len(png) / 1e3:.0f} kB", lambda: post(http_port, png))
            png = b""  # free it before the next case
            rgba = png_bytes("RGBA", 9000)

            def three() -> str:
                answers: list[str] = []
                threads = [threading.Thread(target=lambda: answers.append(post(http_port, rgba))) for _ in range(3)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return ",".join(sorted(answers))
            measure("3 concurrent PNG 9000x9000 RGBA", f"3 x {len(rgba) / 1e3:.0f} kB", three)
            rgba = b""  # free it before the next case
            npz = npz_bomb(1 << 30)
            measure(".npz inflating to 1 GiB", f"{len(npz) / 1e3:.0f} kB", lambda: post(http_port, npz))
            npz = b""  # free it before the next case
            biggest = npy_body(16 * 1024 * 1024 - 128)

            def four_big() -> str:
                answers: list[str] = []
                threads = [threading.Thread(target=lambda: answers.append(post(http_port, biggest)))
                           for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return ",".join(sorted(answers))
            measure("4 concurrent .npy at the 16 MiB body cap", f"4 x {len(biggest) / 1e6:.0f} MB", four_big)
            biggest = b""  # free it before the next case
            head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            measure("Content-Length: -1, 200 MB body", "200 MB",
                    lambda: raw_request(http_port, head + b"Content-Length: -1\r\n\r\n", 200_000_000))
            measure("Content-Length: 10 GB", "16 MB",
                    lambda: raw_request(http_port, head + b"Content-Length: 10000000000\r\n\r\n", 16_000_000))
            measure("no Content-Length, 100 MB body", "100 MB",
                    lambda: raw_request(http_port, head + b"\r\n", 100_000_000))

            def orphans_then_genuine() -> str:
                flood(broker.port, orphan_chunks(topics, 268, 1 << 20))
                time.sleep(2)
                for m in delivery_messages(topics, deployment(model_b, RUN, 2), model_b, 16384, "coordinator"):
                    publisher.publish(m.topic, m.payload)
                try:
                    wait_for("the genuine deployment after the flood", lambda: (serve_status(http_port)["deployed"] or {}).get("model_version")
                               == f"{RUN}@2", 60)
                    return "genuine deployment then accepted"
                except AssertionError:
                    return f"genuine deployment REFUSED: {serve_status(http_port)['deploy_error']}"
            measure("268 x 1 MB orphan chunks on model/deploy", "268 MB", orphans_then_genuine)
            measure("40 manifests of 65536 chunk hashes", "173 MB",
                    lambda: (flood(broker.port, fake_manifests(topics, 40, 65536)), "sent")[1])
        finally:
            publisher.close()
            stop(serve)
    print(f"\nserve under attack (target: peak RSS under {TARGET_MB:.0f} MB); load {os.getloadavg()}")
    print("| attack | sent | answer | peak RSS MB | RSS after MB | |\n|---|---|---|---:|---:|---|")
    for r in rows:
        verdict = "PASS" if r.peak_mb < TARGET_MB else "FAIL"
        print(f"| {r.attack} | {r.sent} | {r.answer} | {r.peak_mb:.0f} | {r.rss_after_mb:.0f} | {verdict} |")
    return 0 if all(r.peak_mb < TARGET_MB for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
