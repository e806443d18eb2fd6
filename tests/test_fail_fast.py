"""Fail fast when the hub or a VLM endpoint is out of reach: seconds and one message, not minutes of retries.

The hub is made unreachable with ``HF_ENDPOINT`` pointing at a loopback port that refuses connections, or
at a loopback socket that accepts and never answers; ``HF_HUB_OFFLINE`` is unset (conftest sets it) and the
hub cache is an empty tmp dir. Every socket lives on 127.0.0.1 and is closed when its test ends.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fmmc.core import hub
from fmmc.core.hub import WeightsUnavailableError
from fmmc.core.registry import build

FAST_S = 10.0  # huggingface_hub's retries take 30 s to minutes; fmmc must answer well within this
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


# ----- unreachable endpoints (127.0.0.1 only, bounded lifetimes) ------------------------------------------
@contextmanager
def refusing_endpoint() -> Iterator[str]:
    """A loopback URL whose port refuses connections (bound to find a free port, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """A loopback URL that accepts connections (the kernel's backlog) and never answers; closed on exit."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


ENDPOINTS = {"refusing": refusing_endpoint, "silent": silent_endpoint}


@contextmanager
def failing_hub() -> Iterator[tuple[str, list[str]]]:
    """A loopback 'hub' that answers ``HEAD /`` (the probe) and HTTP 500 to everything else."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            paths.append(self.path)
            self.send_response(200 if self.path == "/" else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET = _answer  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", paths
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE unset, an empty hub cache, no proxies, no remembered probes; yields the cache dir."""
    import huggingface_hub.constants as hf_constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub read these when it was imported (with conftest's HF_HUB_OFFLINE=1); transformers reads them
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    hub.forget_hub_status()
    yield cache
    hub.forget_hub_status()


def use_endpoint(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """``HF_ENDPOINT=url``, also for huggingface_hub, which read the variable when it was imported."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def assert_one_paragraph(message: str, *needles: str) -> None:
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# ----- the hub --------------------------------------------------------------------------------------------
COMPONENTS = [("segmenter", "hf:facebook/sam-vit-base"), ("grounder", "hf:IDEA-Research/grounding-dino-tiny"),
              ("text-encoder", "hf:openai/clip-vit-base-patch32"), ("backbone", "hf:facebook/dinov2-small")]


@pytest.fixture(scope="module", autouse=True)
def _imported() -> None:
    """Import the loaders first, so the timings below measure the hub, not importing transformers."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoProcessor", "AutoTokenizer", "AutoModelForZeroShotObjectDetection",
                 "CLIPTextModelWithProjection", "Dinov2Model"):
        getattr(transformers, name)


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize(("kind", "spec"), COMPONENTS, ids=[k for k, _ in COMPONENTS])
def test_unreachable_hub_fails_in_seconds(online: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, kind: str,
                                          spec: str) -> None:
    with ENDPOINTS[endpoint]() as url:
        use_endpoint(monkeypatch, url)
        t0 = time.monotonic()
        with pytest.raises(WeightsUnavailableError) as err:
            build(kind, spec)
        elapsed = time.monotonic() - t0
    assert elapsed < FAST_S, f"{kind} took {elapsed:.1f} s to fail"
    assert_one_paragraph(str(err.value), repr(spec.removeprefix("hf:")), url, "local path", "HF_HUB_OFFLINE",
                         "builtin:efficientnet-lite0", "builtin:minilm")


def test_the_probe_is_made_once(online: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with silent_endpoint() as url:
        use_endpoint(monkeypatch, url)
        with pytest.raises(WeightsUnavailableError):
            build("backbone", "hf:facebook/dinov2-small")
        t0 = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="did not answer within"):
            build("segmenter", "hf:facebook/sam-vit-base")
        assert time.monotonic() - t0 < 1.0  # the remembered answer, not a second 2.5 s probe


def test_cached_weights_load_without_the_hub(online: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Dinov2Config, Dinov2Model

    snapshot = online / "models--tiny-org--tiny-dinov2" / "snapshots" / ("0" * 40)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=56)
    Dinov2Model(cfg).save_pretrained(snapshot)
    (online / "models--tiny-org--tiny-dinov2" / "refs").mkdir()
    (online / "models--tiny-org--tiny-dinov2" / "refs" / "main").write_text("0" * 40)
    with refusing_endpoint() as url:
        use_endpoint(monkeypatch, url)
        t0 = time.monotonic()
        backbone = build("backbone", "hf:tiny-org/tiny-dinov2", image_size=56)
    assert backbone.feature_dim == 32 and time.monotonic() - t0 < FAST_S


def test_a_hub_that_answers_but_fails_has_capped_retries(online: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with failing_hub() as (url, paths):
        use_endpoint(monkeypatch, url)
        t0 = time.monotonic()
        with pytest.raises(WeightsUnavailableError) as err:
            build("backbone", "hf:facebook/dinov2-small")
        elapsed = time.monotonic() - t0
    config_calls = [p for p in paths if p.endswith("/config.json")]
    # the first HEAD, then huggingface_hub's retry pass capped at HUB_MAX_RETRIES (its default is 5: ~23 s)
    assert 1 < len(config_calls) <= 2 + hub.HUB_MAX_RETRIES, paths
    assert elapsed < FAST_S
    assert_one_paragraph(str(err.value), "'facebook/dinov2-small'", f"{url} answers", "repo id")


def test_offline_mode_is_unchanged(online: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with silent_endpoint() as url:  # never asked: offline means the cache only
        use_endpoint(monkeypatch, url)
        t0 = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE is set"):
            build("backbone", "hf:facebook/dinov2-small")
        assert time.monotonic() - t0 < 2.0 and not hub._probes


def test_a_missing_local_path_is_not_sent_to_the_hub(online: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    with silent_endpoint() as url:
        use_endpoint(monkeypatch, url)
        with pytest.raises(WeightsUnavailableError, match="neither an existing local path nor a hub id"):
            build("backbone", f"hf:{tmp_path / 'no-such-model'}")
        assert not hub._probes


# ----- the VLM endpoint -----------------------------------------------------------------------------------
@pytest.fixture
def regions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from fmmc.data.records import Region

    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "FMMC_OPENAI_BASE_URL", *PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    Image.fromarray(np.full((32, 48, 3), 120, dtype=np.uint8)).save(tmp_path / "img.png")
    return [Region(image=tmp_path / "img.png", box=(2, 2, 30 + i % 10, 20), id=f"r{i}") for i in range(40)]


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_dead_vlm_endpoint_stops_the_run(regions: list[Any], endpoint: str, workers: int) -> None:
    from fmmc.language.describers import describe_regions
    from fmmc.language.openai_client import EndpointUnavailableError

    with ENDPOINTS[endpoint]() as url:
        d = build("describer", "openai:some-vlm", base_url=f"{url}/v1", timeout=0.5, backoff=0.01)
        t0 = time.monotonic()
        with pytest.raises(EndpointUnavailableError) as err:
            describe_regions(regions, d, None, progress=False, workers=workers)
        elapsed = time.monotonic() - t0
    assert elapsed < FAST_S, f"took {elapsed:.1f} s"
    assert_one_paragraph(str(err.value), f"{url}/v1/chat/completions", "'some-vlm'", "3 connection failures",
                         "base_url")


def test_dead_vlm_endpoint_is_not_retried_while_the_breaker_is_open() -> None:
    from fmmc.language.openai_client import EndpointUnavailableError, OpenAIChatClient

    with refusing_endpoint() as url:
        client = OpenAIChatClient("m", base_url=url, max_retries=10, backoff=0.01, max_consecutive_failures=2,
                                  breaker_cooldown=0.3)
        with pytest.raises(EndpointUnavailableError, match="2 connection failures or timeouts in a row"):
            client.chat([{"role": "user", "content": "hi"}])
        t0 = time.monotonic()
        with pytest.raises(EndpointUnavailableError, match="not trying again"):
            client.chat([{"role": "user", "content": "hi"}])
        assert time.monotonic() - t0 < 0.1
        time.sleep(0.35)  # after the cool-down one request is tried again, and fails again at once
        with pytest.raises(EndpointUnavailableError, match="3 connection failures"):
            client.chat([{"role": "user", "content": "hi"}])


def test_requests_in_flight_when_the_breaker_opens_report_the_same_count() -> None:
    """Found by CI: with 4 threads, a request already in flight failed as the 4th in a row, after another
    thread had opened the breaker at 3, and the run stopped with "4 connection failures". Every thread
    now reports the failure that opened the breaker."""
    from fmmc.language.openai_client import EndpointUnavailableError, OpenAIChatClient

    client = OpenAIChatClient("m", base_url="http://127.0.0.1:9/v1", max_consecutive_failures=3)
    client._connection_failed("connection failed (a)", 1)
    client._connection_failed("connection failed (b)", 1)
    with pytest.raises(EndpointUnavailableError, match=r"\(c\); 3 connection failures") as opened:
        client._connection_failed("connection failed (c)", 1)
    for late in ("d", "e"):  # the other threads' requests, failing after the breaker opened
        with pytest.raises(EndpointUnavailableError) as err:
            client._connection_failed(f"connection failed ({late})", 2)
        assert str(err.value) == str(opened.value)


def test_hosted_api_without_a_key_is_refused_before_the_first_region(regions: list[Any]) -> None:
    from fmmc.language.describers import describe_regions
    from fmmc.language.openai_client import EndpointUnavailableError

    d = build("describer", "openai:gpt-4o-mini")  # the default base URL: api.openai.com
    calls: list[Any] = []
    d.client._http.post = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    t0 = time.monotonic()
    with pytest.raises(EndpointUnavailableError) as err:
        describe_regions(regions, d, None, progress=False)
    assert time.monotonic() - t0 < 2.0 and calls == []
    assert_one_paragraph(str(err.value), "api.openai.com", "OPENAI_API_KEY", "base_url")


# ----- the service ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures_serve import tiny_model_dir

    return tiny_model_dir(tmp_path_factory)


def test_service_answers_503_at_once_and_remembers_the_failure(online: Path, monkeypatch: pytest.MonkeyPatch,
                                                               model_dir: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import httpx
    from fixtures_serve import LiveServer, png_bytes, scene

    import fmmc.core.registry as registry
    from fmmc.serve import ServeSettings, create_app

    builds: list[str] = []
    real_build = registry.build

    def counting_build(kind: str, spec: str, **kwargs: Any) -> Any:
        builds.append(kind)
        return real_build(kind, spec, **kwargs)

    monkeypatch.setattr(registry, "build", counting_build)
    with refusing_endpoint() as url:
        use_endpoint(monkeypatch, url)
        settings = ServeSettings(timeout=60, model_overrides={"segmenter": "hf:facebook/sam-vit-base"})
        app = create_app(str(model_dir), settings)
        with LiveServer(app) as base, httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(2):
                t0 = time.monotonic()
                r = client.post("/v1/classify", files={"image": ("s.png", png_bytes(scene()), "image/png")},
                                data={"point": "30,60"})
                assert time.monotonic() - t0 < FAST_S
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "component_unavailable"
                assert_one_paragraph(error["message"], "'facebook/sam-vit-base'", "local path")
            assert client.get("/healthz").status_code == 200  # the rest of the service keeps working
            assert client.post("/v1/classify", files={"image": ("s.png", png_bytes(scene()), "image/png")},
                               data={"box": "0,0,50,50"}).status_code == 200
    assert builds.count("segmenter") == 1  # the second request did not try the load again


def test_serve_preload_with_an_unavailable_component_exits_with_one_line(
        online: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import uvicorn

    from fmmc.cli.main import main

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("uvicorn must not start")

    monkeypatch.setattr(uvicorn, "run", never)
    with refusing_endpoint() as url:
        use_endpoint(monkeypatch, url)
        t0 = time.monotonic()
        code = main(["serve", str(model_dir), "--preload", "--segmenter", "hf:facebook/sam-vit-base",
                     "--port", "9"])
        assert time.monotonic() - t0 < FAST_S
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1, err
    assert "serving on" not in err and "Traceback" not in err
    assert err.startswith("fmmc serve: error: not serving") and "'facebook/sam-vit-base'" in err


def test_unavailable_components_map_to_503() -> None:
    from fmmc.language.openai_client import EndpointUnavailableError
    from fmmc.serve.errors import from_exception

    for e in (WeightsUnavailableError("weights"), EndpointUnavailableError("endpoint down")):
        err = from_exception(e)
        assert (err.status, err.code, err.message) == (503, "component_unavailable", str(e))
