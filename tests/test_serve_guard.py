"""The service under hostile clients, against REAL uvicorn servers on 127.0.0.1 with raw sockets: refusals
decided from the headers alone (413, 401, no ``100 Continue``), malformed HTTP and slow clients answered
in the JSON error shape, a bounded number of decoded pixels in flight, byte-fuzzed images, I/O faults."""

from __future__ import annotations

import errno
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fixtures_serve import LiveServer, png_bytes, scene, texture, tiny_model_dir
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fmmc.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST_S = 2.0  # a refusal from the headers comes at once; the old code never answered these


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def model(model_dir):
    from fmmc.model.classifier import MaterialClassifier

    return MaterialClassifier.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, ServeSettings(token=TOKEN, max_upload_mb=20, max_pixels=200_000, read_timeout=0.6))
    with LiveServer(app) as url:
        yield app, int(url.rsplit(":", 1)[1])


# ----- raw HTTP -----
def exchange(port: int, data: bytes, wait: float = 3.0) -> tuple[bytes, float]:
    """Send ``data`` (and nothing more), read until the server closes or ``wait`` s pass: (bytes, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        t0 = time.monotonic()
        s.sendall(data)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - t0


def parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    """(status, headers, JSON body) of the first final (non-1xx) answer in ``raw``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    while head.split(b" ")[1:2] == [b"100"]:
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["content-type"].startswith("application/json"), raw[:300]
    return int(lines[0].split(" ")[1]), headers, json.loads(body[: int(headers["content-length"])])


def request_head(path: str = "/v1/classify", length: int | None = 10_000_000_000, expect: bool = False,
                 auth: bool = True, extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: multipart/form-data; boundary=b0undary"]
    lines += [f"Content-Length: {length}"] if length is not None else ["Transfer-Encoding: chunked"]
    lines += ["Expect: 100-continue"] if expect else []
    lines += [f"Authorization: Bearer {TOKEN}"] if auth else []
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def multipart(data: bytes, name: str = "s.png", field: str = "image") -> bytes:
    return (f"--b0undary\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n--b0undary--\r\n"


# ----- refused from the headers, nothing of the body read -----
def test_huge_declared_body_with_expect_gets_413_and_no_100_continue(server):
    _, port = server
    raw, took = exchange(port, request_head(expect=True))
    assert took < FAST_S, raw
    assert raw.startswith(b"HTTP/1.1 413 "), raw[:200]  # the very first line: no "100 Continue" before it
    assert b"100 Continue" not in raw
    status, headers, body = parse(raw)
    assert body["error"]["code"] == "too_large" and "MiB" in body["error"]["message"]
    assert headers["connection"] == "close"


def test_huge_declared_body_without_expect_is_answered_at_once(server):
    _, port = server
    raw, took = exchange(port, request_head(expect=False, path="/v1/segment"))  # headers only, body never sent
    assert took < FAST_S and parse(raw)[0] == 413, raw[:300]


def test_chunked_body_over_the_limit_is_cut_off_without_waiting_for_the_rest(model):
    app = create_app(model, ServeSettings(max_upload_mb=1, read_timeout=5))
    with LiveServer(app) as url:
        port = int(url.rsplit(":", 1)[1])
        part = multipart(b"x" * 1_300_000)[:-20]  # a 1.3 MB file, sent in chunks, the last never
        body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (part[i:i + 65536]
                                                                      for i in range(0, len(part), 65536)))
        raw, took = exchange(port, request_head(length=None, auth=False) + body)
        assert took < FAST_S and parse(raw)[0] == 413, raw[:300]


def test_no_token_gets_401_before_any_body_is_sent(server):
    _, port = server
    for expect in (False, True):  # a 19 MB upload declared: refused from the headers, no 100 Continue invited
        raw, took = exchange(port, request_head(length=19_000_000, expect=expect, auth=False))
        status, headers, body = parse(raw)
        assert took < FAST_S and status == 401 and b"100 Continue" not in raw
        assert body["error"]["code"] == "unauthorized" and headers["www-authenticate"] == "Bearer"
    raw, _ = exchange(port, b"GET /v1/model HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n")
    assert parse(raw)[0] == 401
    # with the right token the upload is invited (100 Continue) and served
    payload = multipart(png_bytes(scene()))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request_head(length=len(payload), expect=True))
        assert s.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(payload)
        got = b""
        while b"\r\n\r\n" not in got or len(got.partition(b"\r\n\r\n")[2]) < 20:
            got += s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 ")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:  # liveness and the page stay open
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


# ----- protocol-level errors and slow clients: the JSON error shape -----
@pytest.mark.parametrize("request_bytes", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
], ids=["request line", "header without colon", "NUL in target", "bad content-length"])
def test_malformed_http_gets_a_json_400(server, request_bytes):
    _, port = server
    raw, took = exchange(port, request_bytes)
    status, headers, body = parse(raw)
    assert took < FAST_S and status == 400 and body["error"]["code"] == "bad_request" and body["error"]["message"]
    assert headers["connection"] == "close"


def test_unknown_paths_and_methods_are_json(server):
    _, port = server
    for req, status in ((b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
                        (b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405)):
        assert parse(exchange(port, req)[0])[0] == status


def test_slow_headers_and_stalled_bodies_get_408_and_are_closed(server):
    _, port = server
    raw, took = exchange(port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    status, _, body = parse(raw)
    assert status == 408 and body["error"]["code"] == "timeout" and took < 0.6 + FAST_S
    raw, took = exchange(port, request_head(length=5000) + b"--b0undary\r\n")  # a body that stops
    assert parse(raw)[0] == 408 and took < 0.6 + FAST_S
    raw, took = exchange(port, b"")  # a connection that never sends anything is closed, without an answer
    assert raw == b"" and took < 0.6 + FAST_S


# ----- a bound on decoded pixels in flight -----
def test_pixel_budget_bounds_decoded_images_in_flight(model):
    side = 1600
    big = Image.fromarray(np.tile(texture("wood", (400, 400), seed=1), (side // 400, side // 400, 1)))
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=85)
    photo = buf.getvalue()
    budget = side * side  # room for exactly one of these at a time
    settings = ServeSettings(max_pixels=budget, max_pixels_in_flight=budget, max_concurrency=4, queue_timeout=0.3)
    app = create_app(model, settings)
    pixels = app.state.runtime.pixels
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as c:

        def send(path: str = "/v1/classify", **data: str) -> httpx.Response:
            return c.post(path, files={"image": ("big.jpg", photo, "image/jpeg")}, data=data)

        with ThreadPoolExecutor(4) as ex:
            answers = list(ex.map(lambda _: send(), range(4)))
        for r in answers:  # served in turn, or told to come back
            assert r.status_code == 200 or (r.status_code == 503 and r.json()["error"]["code"] == "busy"
                                            and int(r.headers["retry-after"]) >= 1), r.text
        assert any(r.status_code == 200 for r in answers)
        assert pixels.peak == budget  # one image decoded at a time, never the 4 x budget of a free-for-all

        # a slow request (a full-size material map) holds the budget: the next large one waits, then 503
        slow = threading.Thread(target=lambda: send("/v1/segment", mode="grid"))
        slow.start()
        deadline = time.monotonic() + 10
        while pixels.used == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        busy = send()
        slow.join()
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy", busy.text
        assert "pixels" in busy.json()["error"]["message"] and busy.headers["retry-after"]
        assert send().status_code == 200 and pixels.used == 0 and pixels.peak == budget


def test_pixel_budget_is_first_come_first_served_and_bounded_in_time():
    import asyncio

    from fmmc.serve.runtime import PixelBudget

    async def scenario() -> list:
        budget = PixelBudget(100)
        got = [await budget.acquire(60, 1)]  # 60 of 100 taken
        big = asyncio.ensure_future(budget.acquire(70, 1))  # waits: 130 > 100
        await asyncio.sleep(0)
        small = asyncio.ensure_future(budget.acquire(30, 1))  # would fit, but waits its turn behind `big`
        late = asyncio.ensure_future(budget.acquire(50, 0.05))  # gives up after 50 ms
        await asyncio.sleep(0.1)
        got += [big.done(), small.done(), await late]
        budget.release(60)  # `big` then `small` get theirs, in order
        got += [await big, await small, budget.used, budget.peak]
        return got

    assert asyncio.run(scenario()) == [True, False, False, False, True, True, 100, 100]


# ----- byte-fuzzed images -----
def fuzzed(data: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    """Truncations at several offsets and single-byte changes (mostly in the header)."""
    out = [data[: len(data) * k // 9] for k in range(1, 9)] + [data[:8], data[:33]]
    for _ in range(n):
        b = bytearray(data)
        b[int(rng.integers(0, min(len(b), 256) if rng.random() < 0.7 else len(b)))] = int(rng.integers(0, 256))
        out.append(bytes(b))
    return out


def test_fuzzed_images_are_400_bad_image_naming_the_file(server):
    _, port = server
    rng = np.random.default_rng(7)
    cases = [("fuzz.png", d) for d in fuzzed(png_bytes(scene()), rng, 30)]
    cases += [("fuzz.jpg", d) for d in fuzzed(png_bytes(scene(), "JPEG"), rng, 30)]
    seen = set()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=AUTH) as c:
        for i, (name, data) in enumerate(cases):
            path = "/v1/segment" if i % 4 == 3 else "/v1/classify"
            r = c.post(path, files={"image": (name, data, "image/jpeg")}, data={"mode": "grid"} if i % 4 == 3 else {})
            seen.add(r.status_code)
            assert r.status_code in (200, 400, 413), (i, r.status_code, r.text)
            if r.status_code != 200:
                err = r.json()["error"]
                assert err["code"] in ("bad_image", "image_too_large") and name in err["message"], err
                assert "\n" not in err["message"]
        assert c.get("/healthz").status_code == 200
    assert {200, 400} <= seen


# ----- server-side I/O faults -----
def test_io_faults_are_one_line_naming_the_path():
    from fmmc.serve.errors import from_exception

    err = from_exception(OSError(errno.ENOSPC, "No space left on device", "/srv/fmmc/out.png"))
    assert (err.status, err.code) == (500, "io_error")
    assert err.message.startswith("/srv/fmmc/out.png: no space left") and "\n" not in err.message
    assert from_exception(OSError("a library's OSError without an errno")).code == "internal"


def test_an_unwritable_cache_does_not_stop_the_service(model_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FMMC_CACHE", str(blocker / "cache"))  # unwritable even for root
    app = create_app(str(model_dir), ServeSettings())  # the service only reads: it must start and serve
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/classify", files={"image": ("s.png", png_bytes(scene()), "image/png")})
        assert r.status_code == 200, r.text
