"""The OpenAI-compatible client and describer against real local HTTP servers (no mocked client)."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fmmc.core.registry import build
from fmmc.data.records import Region
from fmmc.language.cache import DescriptionCache
from fmmc.language.describers import DescriberError, describe_regions
from fmmc.language.openai_client import OpenAIChatClient, image_content, resolve_base_url

KEY = "sk-test-SECRET-0123456789abcdef"

# A handler returns (status, headers, body); body None closes without answering (after any sleep).
Behaviour = Callable[[int, dict[str, Any], dict[str, str]], tuple[int, dict[str, str], bytes]]


def completion(text: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


@dataclass
class Server:
    url: str
    requests: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)


@contextmanager
def serve(behaviour: Behaviour) -> Iterator[Server]:
    """A real ThreadingHTTPServer on 127.0.0.1 (port 0) speaking /v1/chat/completions."""
    lock = threading.Lock()
    state: Server

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"_raw": raw.decode(errors="replace")}
            with lock:
                state.requests.append((body, headers))
                n = len(state.requests)
            if self.path != "/v1/chat/completions":
                status, extra, payload = 404, {}, b'{"error": {"message": "no such route"}}'
            else:
                status, extra, payload = behaviour(n, body, headers)
            try:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **extra}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (timeout tests)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}/v1")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's real key or endpoint must never reach these fake servers; proxies must not intercept them.
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "FMMC_OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def ok(text: str = "Smooth, glossy surface with sharp reflections.") -> Behaviour:
    return lambda n, body, headers: (200, {}, completion(text))


def _image_and_mask() -> tuple[Image.Image, np.ndarray]:
    img = Image.fromarray(np.full((120, 160, 3), (30, 140, 60), dtype=np.uint8))
    mask = np.zeros((120, 160), dtype=bool)
    mask[30:90, 40:120] = True
    return img, mask


def _decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_image_content_is_a_jpeg_data_url():
    part = image_content(Image.new("RGBA", (3000, 1000), (255, 0, 0, 128)), max_side=512)
    assert part["type"] == "image_url"
    img = _decode_data_url(part["image_url"]["url"])
    assert img.format == "JPEG" and img.size == (512, 171)
    assert "detail" not in part["image_url"]
    assert image_content(Image.new("L", (8, 8)), detail="low")["image_url"]["detail"] == "low"


def test_base_url_resolution(monkeypatch: pytest.MonkeyPatch):
    assert resolve_base_url() == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://a/v1/")
    assert resolve_base_url() == "http://a/v1"
    monkeypatch.setenv("FMMC_OPENAI_BASE_URL", "http://b/v1")
    assert resolve_base_url() == "http://b/v1"
    assert resolve_base_url("http://c/v1") == "http://c/v1"


def test_describer_request_and_reply(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with serve(ok('  "Smooth, glossy surface with sharp reflections."\n')) as server:
        d = build("describer", "openai:test-vlm", base_url=server.url)
        img, mask = _image_and_mask()
        assert d.describe(img, mask) == "Smooth, glossy surface with sharp reflections."
    assert d.spec == "openai:test-vlm"
    (body, headers), = server.requests
    assert headers["authorization"] == f"Bearer {KEY}"
    assert body["model"] == "test-vlm" and body["temperature"] == 0 and body["max_tokens"] == 60
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    parts = user["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    outlined = np.asarray(_decode_data_url(parts[0]["image_url"]["url"]).convert("RGB")).astype(int)
    assert outlined.shape == (120, 160, 3)
    assert outlined[30, 80, 0] > 200 and outlined[30, 80, 1] < 60  # red outline on the mask's edge
    assert outlined[60, 80, 1] > 100  # the region itself is untouched
    assert "outlined in red" in parts[2]["text"] and "ONE sentence" in parts[2]["text"]


def test_describer_options_change_prompt_version_and_request():
    with serve(ok()) as server:
        base = build("describer", "openai:m", base_url=server.url)
        d = build("describer", "openai:m", base_url=server.url, marking="contour", prompt="Describe {region}.",
                  system=None)
        assert d.prompt_version != base.prompt_version
        assert build("describer", "openai:m", base_url=server.url).prompt_version == base.prompt_version
        img, _ = _image_and_mask()
        d.describe(img, None)  # whole image: no outline
    (body, headers), = server.requests
    assert "authorization" not in headers  # local servers need no key
    (user,) = body["messages"]
    assert [p["type"] for p in user["content"]] == ["image_url", "text"]
    assert user["content"][1]["text"] == "Describe the main surface in this image."
    with pytest.raises(ValueError, match="needs a model"):
        build("describer", "openai:")


def test_retry_after_429_is_honoured(caplog: pytest.LogCaptureFixture):
    def behaviour(n, body, headers):
        if n == 1:
            return 429, {"Retry-After": "1"}, b'{"error": {"message": "rate limited"}}'
        return 200, {}, completion("Rough grey stone.")

    with serve(behaviour) as server:
        client = OpenAIChatClient("m", base_url=server.url, api_key=KEY, backoff=0.001)
        t0 = time.monotonic()
        with caplog.at_level(logging.DEBUG):
            assert client.chat([{"role": "user", "content": "hi"}]) == "Rough grey stone."
        assert time.monotonic() - t0 >= 0.95  # waited as told, not the tiny backoff
    assert len(server.requests) == 2
    assert "HTTP 429" in caplog.text and "retry 1/4" in caplog.text
    assert KEY not in caplog.text


def test_500_forever_gives_a_clear_error(caplog: pytest.LogCaptureFixture):
    with serve(lambda n, b, h: (500, {}, b'{"error": {"message": "upstream exploded"}}')) as server:
        client = OpenAIChatClient("my-model", base_url=server.url, api_key=KEY, max_retries=3, backoff=0.01)
        with caplog.at_level(logging.DEBUG), pytest.raises(DescriberError) as err:
            client.chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 4
    msg = str(err.value)
    assert server.url + "/chat/completions" in msg and "'my-model'" in msg
    assert "HTTP 500" in msg and "upstream exploded" in msg and "4 attempts" in msg
    assert KEY not in msg and KEY not in caplog.text and KEY not in repr(client)


def test_4xx_is_not_retried_and_echoed_key_is_redacted(caplog: pytest.LogCaptureFixture):
    def echo_auth(n, body, headers):  # a (bad) server that echoes the Authorization header back
        msg = f"invalid key in header {headers.get('authorization')}"
        return 401, {}, json.dumps({"error": {"message": msg}}).encode()

    with serve(echo_auth) as server:
        client = OpenAIChatClient("m", base_url=server.url, api_key=KEY, backoff=0.01)
        with caplog.at_level(logging.DEBUG), pytest.raises(DescriberError, match="HTTP 401") as err:
            client.chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1
    assert "OPENAI_API_KEY" in str(err.value)  # says how to fix it
    assert KEY not in str(err.value) and "***" in str(err.value)
    assert KEY not in caplog.text


def test_wrong_route_404_hints_at_base_url():
    with serve(ok()) as server:
        client = OpenAIChatClient("m", base_url=server.url.removesuffix("/v1"), max_retries=0)
        with pytest.raises(DescriberError, match="HTTP 404.*base URL"):
            client.chat([{"role": "user", "content": "hi"}])


def test_slow_server_times_out_clearly():
    def slow(n, body, headers):
        time.sleep(1.0)
        return 200, {}, completion("too late")

    with serve(slow) as server:
        client = OpenAIChatClient("m", base_url=server.url, api_key=KEY, timeout=0.2, max_retries=1, backoff=0.01)
        t0 = time.monotonic()
        with pytest.raises(DescriberError, match="timed out after 0.2 s.*2 attempts") as err:
            client.chat([{"role": "user", "content": "hi"}])
        assert time.monotonic() - t0 < 2.0
    assert server.url in str(err.value) and KEY not in str(err.value)


def test_connection_refused_is_retried_then_clear():
    with serve(ok()) as server:
        url = server.url
    client = OpenAIChatClient("m", base_url=url, max_retries=2, backoff=0.01)  # the server is gone now
    with pytest.raises(DescriberError, match="connection failed.*3 attempts"):
        client.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("payload", "match"),
    [(b"{not json", "not valid JSON"), (b'{"choices": []}', "no choices"),
     (b'{"choices": [{"message": {"content": null, "refusal": "no"}}]}', "refusal: no")],
)
def test_malformed_replies(payload: bytes, match: str):
    with serve(lambda n, b, h: (200, {}, payload)) as server:
        client = OpenAIChatClient("m", base_url=server.url, api_key=KEY, backoff=0.01)
        with pytest.raises(DescriberError, match=match) as err:
            client.chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1 and KEY not in str(err.value)


def test_content_parts_reply_and_extra_params():
    reply = {"choices": [{"message": {"content": [{"type": "text", "text": "Matte "}, {"type": "text", "text": "wood."}]}}]}
    with serve(lambda n, b, h: (200, {}, json.dumps(reply).encode())) as server:
        client = OpenAIChatClient("m", base_url=server.url)
        assert client.chat([{"role": "user", "content": "hi"}], temperature=0, seed=3) == "Matte wood."
    assert server.requests[0][0]["seed"] == 3


def _dataset(root: Path) -> list[Region]:
    rng = np.random.default_rng(1)
    regions = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / f"i{i}.png")
        m = np.zeros((48, 64), dtype=np.uint8)
        m[8:40, 8:56] = 255
        Image.fromarray(m).save(root / f"m{i}.png")
        regions.append(Region(image=root / f"i{i}.png", mask=root / f"m{i}.png"))
    regions.append(Region(image=root / "i0.png", box=(0, 0, 20, 20), id="boxed"))
    regions.append(Region(image=root / "gone.png", id="gone"))
    return regions


def test_describe_regions_with_cache_makes_no_second_call(tmp_path: Path):
    counter = iter(range(100))
    regions = _dataset(tmp_path)
    with serve(lambda n, b, h: (200, {}, completion(f"Glossy surface {next(counter)}."))) as server:
        d = build("describer", "openai:test-vlm", base_url=server.url)
        cache = DescriptionCache(tmp_path / "desc.sqlite")
        texts, failures = describe_regions(regions, d, cache, progress=False, workers=2)
        assert len(server.requests) == 4
        assert all(t and t.startswith("Glossy surface") for t in texts[:4]) and len(set(texts[:4])) == 4
        assert texts[4] is None and failures[0][0] == "gone" and "file not found" in failures[0][1]
        again, _ = describe_regions(regions, build("describer", "openai:test-vlm", base_url=server.url),
                                    DescriptionCache(tmp_path / "desc.sqlite"), progress=False)
        assert again == texts and len(server.requests) == 4  # all from the cache
        other = build("describer", "openai:test-vlm", base_url=server.url, marking="contour")
        describe_regions(regions, other, cache, progress=False)
        assert len(server.requests) == 8  # another prompt version misses


def test_describe_regions_reports_server_errors(tmp_path: Path):
    regions = _dataset(tmp_path)[:2]

    def behaviour(n, body, headers):
        return (200, {}, completion("Soft fabric.")) if n == 1 else (400, {}, b'{"error": {"message": "bad image"}}')

    with serve(behaviour) as server:
        d = build("describer", "openai:m", base_url=server.url, max_retries=0)
        texts, failures = describe_regions(regions, d, None, progress=False)
    assert texts == ["Soft fabric.", None]
    assert failures == [(regions[1].id, failures[0][1])] and "HTTP 400: bad image" in failures[0][1]
