"""`python -m edge_client serve`: inference-only device. Receives the deployed TFLite model over MQTT, verifies and
stores it, hot-swaps it, and answers predictions over HTTP (POST /predict) with LiteRT; TensorFlow is never imported."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import numpy as np

from federation.errors import FedmqError
from edge_client.cli_common import add_broker_args, default_model_dir, host_name, run_name, setup_logging
from edge_client.security_flags import add_security_flags, broker_address
from edge_client.images import (
    MAX_ARRAY_BYTES, NPY_MAGIC, ZIP_MAGIC, InputError, InputTooLarge, as_batch, decode_array, decode_image,
)
from edge_client.model_store import ModelStore, ModelStoreError
from federation.protocol.deployed_model import DeploymentInfo
from federation.transport.inbox import Inbound, Inbox
from federation.inference.runtime import TFLiteClassifier, load_interpreter_class, regression_answer
from federation.protocol.messages import ClientStatus
from federation.protocol.model_delivery import DeliveryReceiver, DeliveryRejected
from federation.transport.mqtt_link import BrokerAddress, MqttLink
from federation.protocol.topics import RunTopics, check_level
from federation.protocol.version import SOFTWARE_VERSION

log = logging.getLogger("edge_client.serve")

DEFAULT_HTTP_PORT = 8501  # TensorFlow Serving's REST port: what users of model servers try first
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_JSON_BYTES = 4 * 1024 * 1024      # parsed JSON takes several times its size
MAX_MULTIPART_BYTES = 8 * 1024 * 1024  # the email parser holds a body about 4 times over
MAX_CONCURRENT_REQUESTS = 2  # predictions decoding at once; with the caps above, serve stays under about 150 MB
REQUEST_TIMEOUT_S = 30.0
INBOX_BYTES = 8 * 1024 * 1024  # MQTT payloads waiting for the serving loop; paho's thread waits beyond that
INBOX_WAIT_S = 60.0
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


class NoModelError(FedmqError, RuntimeError):
    """No model has been deployed to this device yet."""


class ModelLoadError(FedmqError, RuntimeError):
    """A delivered model that the runtime can't load or that does not match its description."""


@dataclass
class LoadedModel:
    """A model ready to serve. Its interpreter is used by one request at a time (`lock`)."""

    info: DeploymentInfo
    classifier: TFLiteClassifier
    path: Path
    loaded_at: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)


def load_model(info: DeploymentInfo, path: Path, num_threads: int | None = None) -> LoadedModel:
    """Load and check a stored model: the runtime accepts it, its tensors match `info`, and one inference runs."""
    try:
        classifier = TFLiteClassifier(path, num_threads=num_threads)
    except ImportError:
        raise  # no runtime at all: not this model's fault
    except Exception as exc:  # the runtimes raise ValueError or RuntimeError for a bad flatbuffer
        raise ModelLoadError(f"model {info.model_version} does not load: {exc}") from None
    actual_in, actual_out = classifier.input_format, classifier.output_format
    if (actual_in.shape, actual_in.dtype) != (info.input.shape, info.input.dtype) or \
            actual_out.shape != info.output.shape:
        raise ModelLoadError(f"model {info.model_version} takes {actual_in.dtype}{list(actual_in.shape)} and gives "
                             f"{list(actual_out.shape)}, but its deployment announced {info.input.dtype}"
                             f"{list(info.input.shape)} and {list(info.output.shape)}")
    try:
        classifier.predict(np.zeros((1, *classifier.input_shape), np.float32))
    except Exception as exc:
        raise ModelLoadError(f"model {info.model_version} fails its first inference: {exc}") from None
    return LoadedModel(info, classifier, path)


def _measured(info: DeploymentInfo) -> str:
    """What the coordinator measured on a deployed model: 'accuracy 0.9123', or a regression's 'MAE 3.1, RMSE 4.2'."""
    if info.is_regression:
        return f"MAE {info.test_mae:.4g}, RMSE {info.test_rmse:.4g}" if info.test_mae is not None and \
            info.test_rmse is not None else "MAE n/a"
    return f"accuracy {info.test_accuracy:.4f}" if info.test_accuracy is not None else "accuracy n/a"


class ModelServer:
    """Answers predictions with the current model and swaps in new ones without dropping requests.

    A request takes the model that is current when it starts and finishes on it, even if a new one is swapped in
    meanwhile; a model that fails to load never replaces the last good one."""

    def __init__(self, store: ModelStore, num_threads: int | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.store = store
        self.num_threads = num_threads
        self.on_change = on_change or (lambda: None)
        self._active: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.started = time.time()
        self.counters = {"requests": 0, "failed_requests": 0, "images": 0, "swaps": 0, "rejected_deployments": 0}
        self.deploy_error = ""
        self.runtime = ""

    @property
    def active(self) -> LoadedModel | None:
        return self._active

    def load_stored(self) -> bool:
        """Serve the model kept in the model folder, if there is a good one (e.g. after a restart)."""
        stored = self.store.current()
        if stored is None:
            return False
        try:
            self._swap(load_model(stored.info, stored.path, self.num_threads))
        except ModelLoadError as exc:
            log.error("the stored model can't be served: %s", exc)
            return False
        log.info("serving the stored model %s (%s) from %s", stored.info.model_version, stored.info.variant,
                 stored.path)
        return True

    def install(self, info: DeploymentInfo, content: bytes) -> bool:
        """Store, load and swap in a verified delivery; on failure keep the current model. True if now serving it."""
        current = self._active
        if current is not None and current.info.sha256 == info.sha256:
            log.debug("model %s is already being served", info.model_version)
            return True
        try:
            path = self.store.stage(info, content)
        except ModelStoreError as exc:
            self.reject(str(exc))
            return False
        try:
            loaded = load_model(info, path, self.num_threads)
        except ModelLoadError as exc:
            self.store.discard(path)
            self.reject(f"{exc}; still serving {current.info.model_version if current else 'nothing'}")
            return False
        try:
            self.store.commit(info, path)
        except ModelStoreError as exc:
            self.reject(str(exc))
            return False
        self._swap(loaded)
        self.deploy_error = ""
        log.info("now serving model %s (%s, %d bytes, test %s)%s", info.model_version, info.variant,
                 info.size, _measured(info),
                 f"; replaced {current.info.model_version}" if current else "")
        self.on_change()
        return True

    def reject(self, reason: str) -> None:
        with self._stats_lock:
            self.counters["rejected_deployments"] += 1
        self.deploy_error = reason
        log.error("deployment rejected: %s", reason)
        self.on_change()

    def _swap(self, loaded: LoadedModel) -> None:
        with self._swap_lock:
            previous, self._active = self._active, loaded
            self.runtime = loaded.classifier.runtime
            if previous is not None:
                with self._stats_lock:
                    self.counters["swaps"] += 1
        # `previous` is freed when the last request still using it finishes (reference counting).

    def predict(self, images: np.ndarray, top: int = 1) -> dict[str, Any]:
        model = self._active  # the model current at the start serves the whole request
        if model is None:
            raise NoModelError("no model has been deployed to this device yet")
        with model.lock:
            probs = model.classifier.predict(images)
        with self._stats_lock:
            self.counters["images"] += len(images)
        if model.info.is_regression:  # values, not classes: {"value": v}, or {"values": [...]} for several outputs
            predictions = [regression_answer(row) for row in probs]
            return {"model_version": model.info.model_version, "variant": model.info.variant,
                    "predictions": predictions}
        names = model.info.class_names
        top = max(1, min(top, probs.shape[1]))
        predictions = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:top]
            best = int(order[0])
            entry: dict[str, Any] = {"class_index": best, "label": names[best] if names else str(best),
                                     "confidence": round(float(row[best]), 6)}
            if top > 1:
                entry["top"] = [{"class_index": int(i), "label": names[i] if names else str(int(i)),
                                 "confidence": round(float(row[i]), 6)} for i in order]
            predictions.append(entry)
        return {"model_version": model.info.model_version, "variant": model.info.variant,
                "predictions": predictions}

    def count_request(self, ok: bool) -> None:
        with self._stats_lock:
            self.counters["requests"] += 1
            self.counters["failed_requests"] += 0 if ok else 1

    def status(self) -> dict[str, Any]:
        model = self._active
        with self._stats_lock:
            counters = dict(self.counters)
        return {"deployed": model.info.to_json() if model else None,
                "loaded_at": model.loaded_at if model else None,
                "runtime": self.runtime or None, "tensorflow_imported": "tensorflow" in sys.modules,
                "deploy_error": self.deploy_error or None, "uptime_s": round(time.time() - self.started, 3),
                **counters}


# ---- HTTP --------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """POST /predict (an image, .npy/.npz, JSON {"instances": ...}, or any of these as multipart/form-data files);
    GET /status; GET /healthz. Bad input gets a 4xx answer saying why, never a 500."""

    protocol_version = "HTTP/1.1"  # keep-alive: a client can stream requests over one connection
    timeout = REQUEST_TIMEOUT_S  # a client that stalls mid-request is cut off
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("http %s: " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path == "/status":
            self._send_json(HTTPStatus.OK, {**self.server.extra_status(), **self.server.models.status()})
        elif path == "/healthz":
            ready = self.server.models.active is not None
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE if not ready else HTTPStatus.OK, {"ready": ready})
        elif path == "/predict":
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "POST the input to /predict"},
                            headers={"Allow": "POST"})
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such path {path}; try POST /predict, GET /status"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if url.path != "/predict":
            close = not self._drain()
            if url.path in ("/status", "/healthz"):
                self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"GET {url.path}"}, close=close,
                                headers={"Allow": "GET"})
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}; try POST /predict"},
                                close=close)
            return
        models = self.server.models
        body: bytes | None = None
        if not self.server.slots.acquire(timeout=REQUEST_TIMEOUT_S):
            models.count_request(False)
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "busy: too many predictions at once"},
                            close=True)
            return
        try:
            body = self._read_body()
            top = int(parse_qs(url.query).get("top", ["1"])[0])
            model = models.active
            if model is None:
                raise NoModelError("no model has been deployed to this device yet")
            images = _decode_body(body, model.info.input.shape, self.headers.get("Content-Type", ""))
            result = models.predict(images, top)
        except NoModelError as exc:
            models.count_request(False)
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}, close=body is None)
        except _LengthRequired as exc:
            models.count_request(False)
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": str(exc)}, close=True)
        except (_TooLarge, InputTooLarge) as exc:
            models.count_request(False)
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(exc)}, close=body is None)
        except (InputError, ValueError) as exc:
            models.count_request(False)  # an unread body would be taken for the next request: close then
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)}, close=body is None)
        except Exception as exc:  # a runtime failure: report it, keep serving
            log.exception("prediction failed")
            models.count_request(False)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"},
                            close=body is None)
        else:
            models.count_request(True)
            self._send_json(HTTPStatus.OK, result)
        finally:
            self.server.slots.release()

    def _content_length(self) -> int:
        """The body's length from its one Content-Length header; _LengthRequired, InputError or _TooLarge."""
        if self.headers.get("Transfer-Encoding"):
            raise _LengthRequired("chunked transfer encoding is not supported: send a Content-Length header")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise _LengthRequired("send the input as the request body, with a Content-Length header")
        if len(set(lengths)) > 1 or not _CONTENT_LENGTH.fullmatch(lengths[0].strip()):
            raise InputError(f"bad Content-Length {', '.join(lengths)[:40]!r}: expected one byte count")
        size = int(lengths[0])
        if size > MAX_BODY_BYTES:
            raise _TooLarge(f"a request body of {size} bytes (Content-Length); the limit is {MAX_BODY_BYTES}")
        return size

    def _read_body(self) -> bytes:
        size = self._content_length()
        body = self.rfile.read(size)
        if len(body) != size:
            raise InputError(f"the request body ended after {len(body)} of its {size} bytes (Content-Length)")
        return body

    def _drain(self) -> bool:
        """Read and drop a request body that won't be used; False if the connection can't be reused."""
        try:
            size = self._content_length()
        except (InputError, _LengthRequired, _TooLarge):
            return False
        return len(self.rfile.read(size)) == size

    def _send_json(self, code: int, body: dict[str, Any], close: bool = False,
                   headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


class _TooLarge(FedmqError, ValueError):
    pass


class _LengthRequired(FedmqError, ValueError):
    pass


def _decode_body(body: bytes, shape: tuple[int, ...], content_type: str, multipart: bool = True) -> np.ndarray:
    if not body:
        raise InputError("empty request body: send an image, a .npy/.npz file, or JSON {\"instances\": [...]}")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data" and multipart:
        return _decode_multipart(body, shape, content_type)
    if body.startswith(NPY_MAGIC) or body.startswith(ZIP_MAGIC):
        return decode_array(body, shape, "request body", MAX_ARRAY_BYTES).images
    if media_type == "application/json" or body[:1] in (b"{", b"["):
        if len(body) > MAX_JSON_BYTES:
            raise InputTooLarge(f"a JSON body of {len(body)} bytes; the limit is {MAX_JSON_BYTES} (send a .npy "
                                "file or images for more)")
        try:
            doc = json.loads(body)
        except RecursionError:
            raise InputError("request body: JSON nested too deeply") from None
        except ValueError as exc:
            raise InputError(f"request body is not valid JSON: {str(exc)[:200]}") from None
        instances = doc.get("instances") if isinstance(doc, dict) else doc
        try:
            array = np.asarray(instances, dtype=np.float32)
        except (TypeError, ValueError, RecursionError):
            raise InputError("JSON \"instances\" must be nested lists of pixel values") from None
        return as_batch(array, shape, "JSON instances")
    return decode_image(body, shape, "request body")[None]


def _decode_multipart(body: bytes, shape: tuple[int, ...], content_type: str) -> np.ndarray:
    """The files of a multipart/form-data upload (an HTML form, `curl -F file=@x.png`), each read like a bare body,
    as one batch in order; parts without a file name count only when no part has one."""
    from email import policy
    from email.parser import BytesParser

    if "boundary=" not in content_type.lower():
        raise InputError("a multipart upload without a boundary in its Content-Type")
    if len(body) > MAX_MULTIPART_BYTES:
        raise InputTooLarge(f"a multipart upload of {len(body)} bytes; the limit is {MAX_MULTIPART_BYTES} (send "
                            "the file as the bare request body for more)")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        problems = ", ".join(type(d).__name__ for d in message.defects) or "no parts"
        raise InputError(f"a malformed multipart upload ({problems})")
    parts = list(message.iter_parts())
    files = [p for p in parts if p.get_filename()] or parts
    batches = []
    for index, part in enumerate(files):
        data = part.get_payload(decode=True)
        if not data:
            continue
        label = part.get_filename() or part.get_param("name", header="content-disposition") or f"part {index}"
        try:
            batches.append(_decode_body(data, shape, part.get_content_type(), multipart=False))
        except InputError as exc:
            raise type(exc)(f"multipart file {str(label)[:80]!r}: {exc}") from None
    if not batches:
        raise InputError("a multipart upload holding no file: send the image as a form field with a file name")
    return np.concatenate(batches)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], models: ModelServer,
                 extra_status: Callable[[], dict[str, Any]]) -> None:
        super().__init__(address, _Handler)
        self.models = models
        self.extra_status = extra_status
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)


# ---- the serving process: MQTT + HTTP ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServeSettings:
    client_id: str
    broker: BrokerAddress
    run: str = "demo"
    topic_prefix: str = "fedmq"
    model_dir: Path = Path("fedmq-model")
    http_host: str = "127.0.0.1"
    http_port: int | None = DEFAULT_HTTP_PORT  # None: no HTTP; 0: any free port
    num_threads: int | None = None
    chunk_timeout_s: float = 60.0
    max_payload_mb: float = 64.0
    max_model_mb: float = 16.0


class ServeProcess:
    """Subscribes to the run's deploy topics, installs what arrives, serves HTTP, and reports its status."""

    def __init__(self, settings: ServeSettings) -> None:
        check_level(settings.client_id, "client id")
        self.settings = settings
        self.topics = RunTopics(settings.topic_prefix, settings.run)
        self.models = ModelServer(ModelStore(settings.model_dir), settings.num_threads, self._publish_status)
        self.receiver = DeliveryReceiver(self.topics, int(settings.max_payload_mb * 1024 * 1024),
                                         settings.chunk_timeout_s, int(settings.max_model_mb * 1024 * 1024))
        self._inbox = Inbox(INBOX_BYTES)  # a flood waits in the broker and the socket, not in this process
        self._inbox_dropped = 0
        self.stop_event = threading.Event()
        self.http: _HTTPServer | None = None
        self.link = MqttLink(
            client_id=f"fedmq-serve-{settings.client_id}", address=settings.broker,
            subscriptions=self.receiver.subscriptions,
            on_message=self._on_message,
            will=(self.topics.client_status(settings.client_id), self._status("offline").encode()),
            on_connected=self._publish_status)

    def _status(self, status: str = "online") -> ClientStatus:
        model = self.models.active
        return ClientStatus(
            run=self.settings.run, round=model.info.round if model else 0, sender=self.settings.client_id,
            status=status, software=f"fedmq {SOFTWARE_VERSION}", num_examples=0,
            device={"host": host_name(), "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}", "machine": platform.machine(),
                    "python": platform.python_version(), "cpu_count": os.cpu_count() or 0,
                    "runtime": self.models.runtime or "none"},
            role="serve", deployed=model.info.summary() if model and status == "online" else None,
            deploy_error=self.models.deploy_error if status == "online" else "")

    def _publish_status(self) -> None:
        if self.link.connected.is_set():
            self.link.publish(self.topics.client_status(self.settings.client_id), self._status().encode(), qos=1,
                              retain=True)

    def _extra_status(self) -> dict[str, Any]:
        return {"client_id": self.settings.client_id, "run": self.settings.run,
                "broker_connected": self.link.connected.is_set(), "pending_transfers": self.receiver.pending,
                "held_chunk_bytes": self.receiver.receiver.held_bytes(),
                "dropped_messages": dict(self.receiver.receiver.rejected) | {"inbox_full": self._inbox_dropped}}

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """On paho's thread: queue for the serving loop, waiting while the inbox is full, but not for ever."""
        if not self._inbox.put(Inbound(topic, payload, retained), timeout=INBOX_WAIT_S):
            self._inbox_dropped += 1
            log.warning("dropped a message on %s: the serving loop took none for %.0f s", topic, INBOX_WAIT_S)

    def start_http(self) -> int | None:
        """Start the HTTP server in a thread; returns its port (None when HTTP is off)."""
        if self.settings.http_port is None:
            return None
        try:
            self.http = _HTTPServer((self.settings.http_host, self.settings.http_port), self.models,
                                    self._extra_status)
        except OSError as exc:
            raise OSError(f"can't listen on {self.settings.http_host}:{self.settings.http_port}: {exc}") from None
        port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()
        log.info("HTTP on http://%s:%d: POST /predict (image, .npy or .npz), GET /status", self.settings.http_host,
                 port)
        return port

    def run(self) -> None:
        """Serve until stop_event is set."""
        if not self.models.load_stored():
            log.info("no stored model in %s yet; waiting for a deployment on %s", self.settings.model_dir,
                     self.topics.deploy)
        self.start_http()
        self.link.start()
        try:
            while not self.stop_event.is_set():
                item = self._inbox.get(timeout=0.5)
                if item is not None:
                    self._handle(item.topic, item.payload)
                for manifest in self.receiver.expire():
                    self.models.reject(f"deployment of round {manifest.round}: chunks incomplete after "
                                       f"{self.settings.chunk_timeout_s:g} s; dropped")
        finally:
            self._shutdown()

    def _handle(self, topic: str, payload: bytes) -> None:
        try:
            delivered = self.receiver.handle(topic, payload)
        except DeliveryRejected as exc:
            self.models.reject(f"{exc} ({exc.reason})")
            return
        if delivered is not None:
            self.models.install(delivered.info, delivered.content)

    def _shutdown(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.link.connected.is_set():
            self.link.publish_and_wait(self.topics.client_status(self.settings.client_id),
                                       self._status("offline").encode(), retain=True, timeout=5)
        self.link.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_client serve",
        description="Inference-only device: receive the deployed TFLite model over MQTT, check, store and hot-swap "
                    "it, and answer POST /predict over HTTP with LiteRT. TensorFlow is never imported.")
    add_broker_args(p, f"{host_name()}-serve")
    add_security_flags(p)
    s = p.add_argument_group("serving")
    s.add_argument("--model-dir", type=Path, default=None,
                   help="where the deployed model is kept (default: ~/.fedmq/models/<run>)")
    s.add_argument("--http", type=int, default=DEFAULT_HTTP_PORT, metavar="PORT",
                   help=f"HTTP port for predictions (default {DEFAULT_HTTP_PORT}; 0: any free port)")
    s.add_argument("--http-host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)")
    s.add_argument("--no-http", action="store_true", help="no HTTP server: only receive and store the model")
    s.add_argument("--threads", type=int, default=None, help="interpreter threads (default: the runtime's)")
    s.add_argument("--chunk-timeout", type=float, default=60.0,
                   help="drop a chunked model not complete after this many seconds")
    s.add_argument("--max-model-mb", type=float, default=16.0,
                   help="refuse larger models (default 16); pending chunks are capped at about this too")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _return_big_buffers_to_the_system() -> None:
    """glibc raises its mmap threshold after a big buffer is freed, so later request bodies and chunks come from
    the heap and stay resident after use; a fixed threshold keeps every buffer over 1 MiB in its own mapping,
    given back when freed. Elsewhere than glibc this does nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    _return_big_buffers_to_the_system()
    from federation.config.settings import ConfigError, load_settings

    try:
        cfg = load_settings(args.config)
        _, runtime = load_interpreter_class()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = run_name(args, cfg)
    try:
        broker = broker_address(args, args.broker or cfg.broker.host, args.port or cfg.broker.port,
                                args.mqtt_version or cfg.broker.mqtt_version, cfg.broker.keepalive_s, args.client_id)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = ServeSettings(
        client_id=args.client_id, broker=broker, run=run, topic_prefix=args.topic_prefix or cfg.broker.topic_prefix,
        model_dir=args.model_dir or default_model_dir(run), http_host=args.http_host,
        http_port=None if args.no_http else args.http, num_threads=args.threads,
        chunk_timeout_s=args.chunk_timeout, max_payload_mb=cfg.broker.max_payload_mb,
        max_model_mb=args.max_model_mb)
    try:
        process = ServeProcess(settings)
    except (ValueError, ModelStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: process.stop_event.set())
    log.info("serving run %r as %s with %s: broker %s, models in %s", run, settings.client_id, runtime,
             settings.broker, settings.model_dir)
    try:
        process.run()
    except OSError as exc:
        log.error("%s", exc)
        return 2
    return 0
