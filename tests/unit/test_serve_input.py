"""Hostile and unusual input to `serve`'s HTTP interface and to the image/array readers: decompression bombs, bad
Content-Length headers, multipart uploads and wrong methods get a clear 4xx answer, never a 500 (issues 9 and 10)."""

from __future__ import annotations

import http.client
import io
import json
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from broker import free_port
from edge_client.images import InputError, InputTooLarge, decode_array, decode_image
from edge_client.model_store import ModelStore
from edge_client.serve import ModelServer, _HTTPServer
from tests.deploy_support import deployment, npy_bytes, tiny_tflite

SHAPE = (28, 28, 1)


def png_bomb(width: int, height: int, color_type: int = 0) -> bytes:
    """A PNG of zero pixels (grey: color type 0, RGBA: 6), compressed as it is streamed: tiny, huge when decoded."""
    channels = {0: 1, 2: 3, 6: 4}[color_type]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + width * channels)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def npz_with(members: dict[str, bytes], compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, shape)
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


# ---- the readers ------------------------------------------------------------------------------------------------


def test_an_image_of_too_many_pixels_is_refused_before_it_is_decoded() -> None:
    bomb = png_bomb(13_000, 13_000)
    assert len(bomb) < 300_000
    started = time.process_time()   # CPU time: parallel work must not fail it
    with pytest.raises(InputTooLarge, match="169000000 pixels"):
        decode_image(bomb, SHAPE, "upload")
    assert time.process_time() - started < 0.2, "checked from the header, not after decoding"


def test_an_image_within_the_pixel_cap_is_still_read() -> None:
    image = Image.fromarray(np.full((1500, 2000), 200, np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), SHAPE).shape == SHAPE


def test_unreadable_image_errors_do_not_show_python_objects() -> None:
    with pytest.raises(InputError) as info:
        decode_image(b"not an image at all", SHAPE, "request body")
    assert "BytesIO" not in str(info.value) and "not a readable image" in str(info.value)


def test_an_npz_inflating_beyond_the_cap_is_refused_before_it_is_inflated() -> None:
    data = npy_header((100_000, 28, 28, 1)) + bytes(100_000 * 784)  # 78 MB of zeros, deflated to about 80 kB
    bomb = npz_with({"x.npy": data})
    assert len(bomb) < 200_000
    with pytest.raises(InputTooLarge, match="x"):
        decode_array(bomb, SHAPE, "upload", max_bytes=16 << 20)


def test_an_npz_member_whose_header_claims_more_than_it_holds_is_refused() -> None:
    lying = npz_with({"x.npy": npy_header((1_000_000, 28, 28, 1)) + bytes(784)})  # says 784 MB, holds 784 bytes
    with pytest.raises(InputError, match="x"):
        decode_array(lying, SHAPE, "upload", max_bytes=1 << 30)


def test_a_big_npy_is_refused_and_object_arrays_never_unpickled() -> None:
    with pytest.raises(InputTooLarge):
        decode_array(npy_bytes(np.zeros((30, 28, 28, 1), np.uint8)), SHAPE, "upload", max_bytes=10_000)
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="object"):
        decode_array(pickled.getvalue(), SHAPE, "upload")
    with pytest.raises(InputError, match="object"):
        decode_array(npz_with({"x.npy": pickled.getvalue()}), SHAPE, "upload")


def test_good_arrays_still_load() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), np.uint8)
    batch = decode_array(npy_bytes(images), SHAPE)
    assert np.array_equal(batch.images, images)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=images, y=np.arange(5))
    batch = decode_array(buf.getvalue(), SHAPE)
    assert np.array_equal(batch.images, images) and list(batch.labels) == [0, 1, 2, 3, 4]
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(images[:, :, :, 0]))
    assert np.array_equal(decode_array(fortran.getvalue(), SHAPE).images, images)


# ---- the HTTP interface -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    content = tiny_tflite(1)
    server = ModelServer(ModelStore(Path(tmp_path_factory.mktemp("models"))))
    assert server.install(deployment(content, "demo", 1), content)
    httpd = _HTTPServer(("127.0.0.1", free_port()), server, lambda: {})
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, skip_length: bool = False) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection(url, timeout=30)
    try:
        conn.putrequest(method, path)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None and not skip_length and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body:
            try:
                conn.send(body)
            except OSError:
                pass  # answered and closed before reading it all
        response = conn.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), json.loads(data) if data else {}
    finally:
        conn.close()


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = np.random.default_rng(1).integers(0, 256, (28, 28), np.uint8)


def test_get_predict_is_405_with_an_allow_header(url: str) -> None:
    code, headers, body = request(url, "GET", "/predict")
    assert code == 405 and headers.get("Allow") == "POST" and "POST" in body["error"]
    code, headers, _ = request(url, "POST", "/status", b"x")
    assert code == 405 and headers.get("Allow") == "GET"


@pytest.mark.parametrize("length, code", [("-1", 400), ("abc", 400), ("1e3", 400), ("99999999999", 413)])
def test_bad_content_lengths_are_refused_without_reading(url: str, length: str, code: int) -> None:
    started = time.perf_counter()
    status, headers, body = request(url, "POST", "/predict", png(IMAGE) + bytes(1 << 20),
                                    headers={"Content-Length": length})
    assert status == code and "Content-Length" in body["error"] and time.perf_counter() - started < 5
    assert headers.get("Connection") == "close"


def test_a_missing_content_length_is_411(url: str) -> None:
    code, _, body = request(url, "POST", "/predict", png(IMAGE), skip_length=True)
    assert code == 411 and "Content-Length" in body["error"]
    code, _, _ = request(url, "POST", "/elsewhere", b"abc", headers={"Content-Length": "abc"})
    assert code == 404


def test_a_pixel_bomb_over_http_is_413(url: str) -> None:
    code, _, body = request(url, "POST", "/predict", png_bomb(13_000, 13_000))
    assert code == 413 and "pixels" in body["error"]


def test_deeply_nested_json_is_400_not_500(url: str) -> None:
    code, _, body = request(url, "POST", "/predict", b"[" * 200_000 + b"]" * 200_000,
                            headers={"Content-Type": "application/json"})
    assert code == 400 and "JSON" in body["error"]


def _multipart(parts: list[tuple[str, str | None, str, bytes]], boundary: str = "XyZ123") -> tuple[bytes, str]:
    out = b""
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n").encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_multipart_upload_is_read_like_the_bare_file(url: str) -> None:
    bare = request(url, "POST", "/predict", png(IMAGE))
    assert bare[0] == 200
    body, ctype = _multipart([("file", "shirt.png", "image/png", png(IMAGE))])
    code, _, answer = request(url, "POST", "/predict", body, headers={"Content-Type": ctype})
    assert code == 200, answer
    assert answer["predictions"] == bare[2]["predictions"]
    two, ctype = _multipart([("note", None, "text/plain", b"hello"), ("a", "a.png", "image/png", png(IMAGE)),
                             ("b", "b.npy", "application/octet-stream", npy_bytes(IMAGE[None]))])
    code, _, answer = request(url, "POST", "/predict", two, headers={"Content-Type": ctype})
    assert code == 200 and len(answer["predictions"]) == 2


@pytest.mark.parametrize("body, ctype", [
    (b"--XyZ\r\nno end", "multipart/form-data; boundary=XyZ"),
    (b"whatever", "multipart/form-data"),
    (_multipart([("note", None, "text/plain", b"")])[0], "multipart/form-data; boundary=XyZ123"),
])
def test_a_malformed_multipart_upload_is_a_clear_400(url: str, body: bytes, ctype: str) -> None:
    code, _, answer = request(url, "POST", "/predict", body, headers={"Content-Type": ctype})
    assert code == 400 and "multipart" in answer["error"] and "BytesIO" not in answer["error"]
