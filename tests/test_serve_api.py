"""The HTTP service against REAL uvicorn servers on 127.0.0.1: every endpoint, parallel requests checked
against the in-process model, every bad input (and the server still up afterwards), auth, CORS, timeouts,
back-pressure, and the served OpenAPI schema."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from fixtures_serve import LiveServer, overrides, png_bytes, scene, tiny_component_dirs, tiny_model_dir
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fmmc.serve import ServeSettings, create_app  # noqa: E402

SCENE = png_bytes(scene())  # 160 x 120: wood left, foliage right
SAM_SETTINGS = {"pred_iou_thresh": -1.0, "stability_thresh": -1.0, "points_per_side": 4}  # random tiny SAM


@pytest.fixture(scope="session")
def comp(tmp_path_factory):
    return overrides(tiny_component_dirs(tmp_path_factory))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def model(model_dir, comp):
    from fmmc.model.classifier import MaterialClassifier

    return MaterialClassifier.from_pretrained(model_dir, **comp)


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, ServeSettings(max_upload_mb=1, max_pixels=200_000, timeout=60, **SAM_SETTINGS))
    with LiveServer(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def post(client, path="/v1/classify", image=SCENE, name="scene.png", ctype="image/png", extra_files=None, **data):
    files = {"image": (name, image, ctype), **(extra_files or {})}
    return client.post(path, files=files, data={k: str(v) for k, v in data.items()})


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


# ----- the happy paths -----
def test_classify_whole_image_and_prompts(client):
    r = post(client)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"label", "confidence", "top", "mask", "region", "timing_ms"}
    assert body["mask"] is None and body["region"]["source"] == "image" and len(body["top"]) == 5
    assert body["top"][0] == {"label": body["label"], "prob": body["confidence"]}

    r = post(client, point="30,60", mask_format="png", top_k=3)
    body = r.json()
    assert r.status_code == 200 and len(body["top"]) == 3 and body["region"]["source"] == "point"
    mask = decode_png(body["mask"]["png_base64"]) > 0
    assert mask.shape == (120, 160) and int(mask.sum()) == body["mask"]["area"]

    r = post(client, box="0,0,80,120", refine="false")
    assert r.json()["mask"] == {"bbox": [0, 0, 80, 120], "area": 80 * 120, "png_base64": None, "rle": None}
    assert r.json()["label"] == "wood"

    r = post(client, object="mug", box_threshold=0.0, mask_format="rle")
    body = r.json()
    assert r.status_code == 200 and body["region"]["source"] == "object" and body["region"]["detection"]["score"] > 0
    assert sum(body["mask"]["rle"]["counts"]) == 120 * 160

    r = post(client, classes="metal,foliage", top_k=21)
    probs = {t["label"]: t["prob"] for t in r.json()["top"] if t["prob"] > 0}
    assert set(probs) <= {"metal", "foliage"} and abs(sum(probs.values()) - 1) < 1e-4

    mask = np.zeros((120, 160), np.uint8)
    mask[:, 100:] = 255
    r = post(client, extra_files={"mask": ("m.png", png_bytes(mask), "image/png")})
    assert r.json()["region"]["source"] == "mask" and r.json()["mask"]["area"] == 60 * 120


def test_parallel_requests_match_the_in_process_model(server, client, model):
    url, app = server
    boxes = [(0, 0, 80, 120), (80, 0, 160, 120), (10, 10, 60, 90), (90, 20, 150, 110),
             (0, 0, 160, 120), (40, 30, 120, 90), (0, 60, 160, 120), (5, 5, 30, 30)]

    async def fire():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            reqs = [c.post("/v1/classify", files={"image": ("s.png", SCENE, "image/png")},
                           data={"box": ",".join(map(str, b)), "top_k": "21"}) for b in boxes]
            return await asyncio.gather(*reqs)

    before = app.state.runtime.batcher.items
    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 8
    img = Image.open(io.BytesIO(SCENE))
    for b, r in zip(boxes, responses):
        served = {t["label"]: t["prob"] for t in r.json()["top"]}
        local = dict(model.predict(img, box=b).top(21))
        assert max(abs(served[k] - local[k]) for k in local) < 1e-4
    assert app.state.runtime.batcher.items - before == 8
    assert client.get("/healthz").json() == {"status": "ok", "in_flight": 0}


def test_segment_grid_and_sam(client):
    for mode in ("grid", "sam"):
        r = post(client, "/v1/segment", mode=mode, legend="false")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mode"] == mode and (body["width"], body["height"]) == (160, 120)
        labels = decode_png(body["label_map_png_base64"])
        assert labels.shape == (120, 160) and decode_png(body["overlay_png_base64"]).shape == (120, 160, 3)
        assert decode_png(body["confidence_png_base64"]).shape == (120, 160)
        names = body["classes"]
        assert {e["label"] for e in body["legend"]} == {names[v] if v != 255 else "unlabelled" for v in np.unique(labels)}
        assert body["regions"] and {"bbox", "area", "label", "top"} <= set(body["regions"][0])
    with_legend = post(client, "/v1/segment", mode="grid").json()
    assert decode_png(with_legend["overlay_png_base64"]).shape[1] > 160
    r = post(client, "/v1/segment", points_per_side=1000)
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]


def test_model_info_and_health(client, comp):
    info = client.get("/v1/model").json()
    assert info["streams"] == "vision" and info["segment_modes"] == ["sam", "grid"]
    assert info["components"]["segmenter"] == comp["segmenter"] and info["components"]["backbone"].startswith("builtin:")
    wood = next(c for c in info["taxonomy"]["classes"] if c["name"] == "wood")
    assert wood["color"].startswith("#") and len(wood["color"]) == 7
    assert info["limits"]["max_upload_mb"] == 1 and "taxonomy" not in info["config"]
    assert client.get("/healthz").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


# ----- every bad input: a JSON error with the right status, and the server keeps serving -----
def _multipart(fields: dict[str, tuple[str, bytes, str]], boundary: str = "fmmcboundary") -> bytes:
    out = b""
    for key, (fname, data, ctype) in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"; filename=\"{fname}\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


BIG = Image.new("RGB", (600, 400), (90, 60, 30))  # 240,000 px > max_pixels=200,000, but a small file
TRUNCATED = SCENE[: len(SCENE) // 2]
BAD_CASES = [
    ("upload over the limit", {"image": ("big.png", b"\x89PNG" + b"0" * 1_500_000, "image/png")}, {}, 413, "too_large"),
    ("too many pixels", {"image": ("big.png", png_bytes(BIG), "image/png")}, {}, 413, "image_too_large"),
    ("not an image type", {"image": ("a.txt", b"hello", "text/plain")}, {}, 415, "unsupported_media_type"),
    ("garbage bytes", {"image": ("a.png", b"not really a png", "image/png")}, {}, 400, "bad_image"),
    ("empty file", {"image": ("a.png", b"", "image/png")}, {}, 400, "bad_image"),
    ("truncated png", {"image": ("a.png", TRUNCATED, "image/png")}, {}, 400, "bad_image"),
    ("point outside", None, {"point": "500,10"}, 422, "bad_prompt"),
    ("point malformed", None, {"point": "abc"}, 422, "bad_prompt"),
    ("zero-area box", None, {"box": "10,10,10,50"}, 422, "bad_prompt"),
    ("zero-area box, SAM", None, {"box": "10,10,50,10", "refine": "true"}, 422, "bad_prompt"),
    ("mask and point", {"image": ("s.png", SCENE, "image/png"),
                        "mask": ("m.png", png_bytes(np.full((120, 160), 255, np.uint8)), "image/png")},
     {"point": "5,5"}, 422, "bad_prompt"),
    ("mask of the wrong size", {"image": ("s.png", SCENE, "image/png"),
                                "mask": ("m.png", png_bytes(np.full((10, 10), 255, np.uint8)), "image/png")},
     {}, 400, "bad_image"),
    ("object not found", None, {"object": "mug", "box_threshold": "1.0"}, 404, "not_found"),
    ("top_k zero", None, {"top_k": "0"}, 422, "invalid_request"),
    ("unknown class", None, {"classes": "unobtainium"}, 422, "invalid_request"),
    ("bad mask_format", None, {"mask_format": "gif"}, 422, "invalid_request"),
]


@pytest.mark.parametrize("why,files,data,status,code", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_inputs_are_json_errors(client, why, files, data, status, code):
    files = files or {"image": ("s.png", SCENE, "image/png")}
    r = client.post("/v1/classify", files=files, data=data)
    assert r.status_code == status, (why, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if code == "not_found":
        assert "not found" in err["message"]
    assert client.get("/healthz").status_code == 200


def test_more_bad_requests_and_the_server_stays_up(client):
    r = client.post("/v1/classify", json={"image": "x"})
    assert r.status_code == 415 and "multipart" in r.json()["error"]["message"]
    r = client.post("/v1/classify", data={"point": "1,1"}, files={"other": ("x", b"x", "image/png")})
    assert r.status_code == 422 and "image" in r.json()["error"]["message"]
    # a chunked body (no Content-Length) over the limit is cut off too
    body = _multipart({"image": ("big.png", b"0" * 1_300_000, "image/png")})
    r = client.post("/v1/segment", content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                    headers={"content-type": "multipart/form-data; boundary=fmmcboundary"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    small = _multipart({"image": ("s.png", SCENE, "image/png")})
    r = client.post("/v1/classify", content=iter([small]), headers={"content-type": "multipart/form-data; boundary=fmmcboundary"})
    assert r.status_code == 200, r.text
    assert client.get("/v1/nope").json()["error"]["code"] == "not_found"
    assert client.delete("/v1/classify").json()["error"]["code"] == "method_not_allowed"
    assert post(client, "/v1/segment", image=b"junk").json()["error"]["code"] == "bad_image"
    assert post(client).status_code == 200


# ----- auth, CORS -----
def test_bearer_token_and_cors(model, client):
    app = create_app(model, ServeSettings(token="s3cret", cors_origins=("http://allowed.example",)))
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = post(c)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = c.post("/v1/classify", files={"image": ("s.png", SCENE, "image/png")}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness needs no token
        pre = c.options("/v1/classify", headers={"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"})
        assert pre.headers.get("access-control-allow-origin") == "http://allowed.example"
        other = c.options("/v1/classify", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert other.headers.get("access-control-allow-origin") is None
        # refused in the API's one error shape, not Starlette's plain text (a leftover of an earlier review)
        assert other.status_code == 400 and other.headers["content-type"] == "application/json"
        err = other.json()["error"]
        assert err["code"] == "cors_refused" and "'http://evil.example'" in err["message"] and "--cors-origin" in err["message"]
        bad_header = c.options("/v1/classify", headers={"Origin": "http://allowed.example",
                                                        "Access-Control-Request-Method": "POST",
                                                        "Access-Control-Request-Headers": "X-Other"})
        assert bad_header.status_code == 400 and "headers not allowed" in bad_header.json()["error"]["message"]
    # CORS is off by default
    r = client.get("/v1/model", headers={"Origin": "http://allowed.example"})
    assert "access-control-allow-origin" not in r.headers


# ----- timeouts and back-pressure -----
def test_timeout_504_and_busy_503(model_dir, comp):
    from fmmc.model.classifier import MaterialClassifier

    slow = MaterialClassifier.from_pretrained(model_dir, **comp)
    real_segment = slow.segment

    def slow_segment(*args, **kwargs):
        time.sleep(1.5)
        return real_segment(*args, **kwargs)

    slow.segment = slow_segment
    app = create_app(slow, ServeSettings(timeout=0.4, max_concurrency=1, max_queue=0))
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=post(c, "/v1/segment", mode="grid")))
        t.start()
        time.sleep(0.15)
        busy = post(c, "/v1/segment", mode="grid")  # the only slot is taken: refused at once
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy" and busy.headers["retry-after"] == "1"
        t.join()
        assert first["r"].status_code == 504 and first["r"].json()["error"]["code"] == "timeout"
        deadline = time.monotonic() + 10  # the timed-out work keeps its slot until it finishes, then all is well
        while (r := post(c)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200 and c.get("/healthz").status_code == 200


# ----- the schema -----
def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_openapi_schema_matches_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/segment", "/v1/model", "/healthz"} <= set(spec["paths"])
    op = spec["paths"]["/v1/classify"]["post"]
    form = _resolve(spec, op["requestBody"]["content"]["multipart/form-data"]["schema"])
    assert {"image", "mask", "point", "box", "refine", "object", "description", "top_k", "classes", "mask_format",
            "box_threshold"} <= set(form["properties"]) and form["required"] == ["image"]
    assert {"400", "401", "404", "413", "415", "422", "503", "504"} <= set(op["responses"])
    resp = _resolve(spec, op["responses"]["200"]["content"]["application/json"]["schema"])
    assert {"label", "confidence", "top"} <= set(resp["required"])
    body = post(client, point="20,20", mask_format="png").json()
    assert set(body) == set(resp["properties"])
    assert set(body["mask"]) <= set(_resolve(spec, spec["components"]["schemas"]["MaskInfo"])["properties"])
    seg = _resolve(spec, spec["paths"]["/v1/segment"]["post"]["responses"]["200"]["content"]["application/json"]["schema"])
    got = post(client, "/v1/segment", mode="grid").json()
    assert set(got) == set(seg["properties"])
    seg_form = _resolve(spec, spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"])
    assert {"image", "mode", "points_per_side", "legend", "alpha"} <= set(seg_form["properties"])
    err = _resolve(spec, op["responses"]["404"]["content"]["application/json"]["schema"])
    assert set(err["properties"]) == {"error"}


# ----- the micro-batcher on its own -----
def test_micro_batcher_batches_waits_only_when_more_are_coming_and_isolates_failures():
    from fmmc.serve.runtime import MicroBatcher

    seen: list[list[int]] = []

    def fn(items):
        seen.append(list(items))
        if -1 in items:
            raise ValueError("bad item")
        return [i * 10 for i in items]

    lone = MicroBatcher(fn, max_batch=8, window_s=2.0, pending=lambda: 1)
    t0 = time.monotonic()
    assert lone.submit(3).result(timeout=5) == 30
    assert time.monotonic() - t0 < 1.0  # a lone request does not wait for the 2 s window
    lone.close()

    busy = MicroBatcher(fn, max_batch=4, window_s=1.0, pending=lambda: 4)
    seen.clear()
    futs = [busy.submit(i) for i in (1, 2, -1, 4)]
    assert futs[0].result(timeout=5) == 10 and futs[1].result(timeout=5) == 20 and futs[3].result(timeout=5) == 40
    with pytest.raises(ValueError, match="bad item"):
        futs[2].result(timeout=5)
    assert seen[0] == [1, 2, -1, 4]  # one batch, then retried one by one
    busy.close()


def test_serve_cli_flags_become_settings():
    from fmmc.cli.main import build_parser
    from fmmc.cli.serve_cmd import settings_from_args

    args = build_parser().parse_args(["serve", "m", "--port", "9001", "--token", "t", "--max-upload-mb", "2",
                                      "--cors-origin", "http://a", "--cors-origin", "http://b", "--max-batch", "1",
                                      "--segmenter", "hf:/x/sam", "--segment-mode", "grid", "--timeout", "5"])
    s = settings_from_args(args)
    assert (s.port, s.token, s.max_upload_bytes, s.cors_origins, s.max_batch, s.segment_mode, s.timeout) == \
        (9001, "t", 2 * 1024 * 1024, ("http://a", "http://b"), 1, "grid", 5.0)
    assert s.model_overrides == {"segmenter": "hf:/x/sam"} and s.host == "127.0.0.1"
    with pytest.raises(ValueError, match="max_concurrency"):
        ServeSettings(max_concurrency=0)
