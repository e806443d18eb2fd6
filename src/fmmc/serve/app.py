"""The HTTP service: ``create_app(model_or_path, settings)`` -> a FastAPI app (run it with uvicorn).

    >>> from fmmc.serve import ServeSettings, create_app
    >>> app = create_app("runs/demo/model", ServeSettings(token="s3cret"))     # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)          # doctest: +SKIP

Endpoints (multipart/form-data in, JSON out; the schema is served at ``/openapi.json``, docs at ``/docs``):

* ``POST /v1/classify``: ``image`` + optional ``mask`` file | ``point=x,y`` | ``box=x0,y0,x1,y1`` (``refine=true``
  asks SAM for the object in the box) | ``object=name``; ``description``, ``top_k``, ``classes``,
  ``mask_format=none|png|rle``. Without ``classes`` a model answers among the classes it was trained on;
  ``classes=all`` asks for its whole taxonomy.
* ``POST /v1/segment``: ``image``, ``mode=sam|grid`` -> regions, overlay PNG, label map PNG.
* ``GET /v1/model``, ``GET /healthz``, and the web page at ``/``.

Every error is ``{"error": {"code", "message"}}``; see ``docs/serving.md`` for the status codes.
"""

import base64
import io
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Security, UploadFile
from fastapi.responses import FileResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image

from fmmc.serve.cors import JSONCORSMiddleware
from fmmc.serve.errors import ApiError, install_handlers
from fmmc.serve.middleware import GuardMiddleware
from fmmc.serve.runtime import Runtime
from fmmc.serve.schemas import ClassifyResponse, ErrorResponse, Health, ModelInfo, SegmentResponse
from fmmc.serve.settings import ServeSettings
from fmmc.serve.uploads import check_type, decode_image, decode_mask, header_pixels, upload_name

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CLASSES_HELP = ("comma-separated class names to choose from, or 'all' for the whole taxonomy "
                "(default: the classes the model was trained on)")
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d} for s, d in {
        400: "malformed image or mask, or malformed HTTP", 401: "missing or wrong bearer token",
        404: "object not found", 408: "request headers or body too slow to arrive",
        413: "upload or image too large", 415: "not multipart/form-data, or not an image",
        422: "invalid field or prompt (point outside the image, zero-area box)",
        500: "a file-system fault on the server (io_error) or a bug (internal)",
        503: "busy (queue full, or too many pixels in flight) or component unavailable", 504: "timed out"}.items()}


def _floats(text: str, n: int, name: str, fmt: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise ApiError(422, "bad_prompt", f"{name} {text!r}: expected {fmt} ({n} comma-separated numbers)")
    return vals


def _mask_json(mask: Any, fmt: str) -> dict[str, Any] | None:
    from fmmc.grounding.prompts import mask_rle, mask_summary

    if mask is None:
        return None
    out = mask_summary(mask)
    if fmt == "png":
        buf = io.BytesIO()
        Image.fromarray(mask.astype(bool)).save(buf, format="PNG")
        out["png_base64"] = base64.b64encode(buf.getvalue()).decode("ascii")
    elif fmt == "rle":
        out["rle"] = mask_rle(mask)
    return out


def _load(model_or_path: Any, settings: ServeSettings) -> tuple[Any, str]:
    if isinstance(model_or_path, (str, Path)):
        from fmmc.model.classifier import MaterialClassifier

        return MaterialClassifier.from_pretrained(model_or_path, **settings.model_overrides), str(model_or_path)
    model_or_path.config.override(**settings.model_overrides)
    return model_or_path, str(model_or_path.config.name or type(model_or_path).__name__)


def create_app(model_or_path: Any, settings: ServeSettings | None = None, name: str | None = None) -> FastAPI:
    """The FastAPI app serving one model (a ``MaterialClassifier`` or a path/hub id to load)."""
    from fmmc import __version__
    from fmmc.grounding.prompts import component_availability, component_spec, resolve_prompt
    from fmmc.model.maps.render import hex_color

    settings = settings or ServeSettings()
    model, default_name = _load(model_or_path, settings)
    model_name = name or default_name
    runtime = Runtime(model, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        import asyncio

        await asyncio.to_thread(runtime.warm_up)
        yield
        runtime.close()

    app = FastAPI(title="fmmc material classification", version=__version__, lifespan=lifespan,
                  description="Classify the material of a region of a photo, or map every pixel. "
                              "Errors are always {\"error\": {\"code\", \"message\"}}.")
    app.state.runtime = runtime
    app.state.settings = settings
    install_handlers(app)
    # the guard decides auth, body size and type from the headers alone (middleware.py); CORS sits outside
    # it, so a cross-origin client can read the guard's answers too
    app.add_middleware(GuardMiddleware, max_body=settings.max_upload_bytes, token=settings.token,
                       read_timeout=settings.read_timeout)
    if settings.cors_origins:
        app.add_middleware(JSONCORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    # declared for the OpenAPI schema only: GuardMiddleware has already checked the token on every /v1/* path
    auth = [Security(HTTPBearer(auto_error=False, description="required when the server was started with a token"))]

    def parsed_classes(classes: str | None) -> list[str] | str | None:
        """The ``classes`` field (None: the trained classes, ``all``, or names); unknown names: 422."""
        from fmmc.model.prediction import parse_classes

        parsed = parse_classes(classes)
        try:
            model.class_indices(parsed)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"classes: {e}") from e
        return parsed

    def request_description(description: str | None) -> str | None:
        """The request's language-stream text (else the server's ``--description``); 422 with the fix before
        any work when the model cannot describe a photo itself (``config.needs_description``)."""
        from fmmc.model.config import description_fix

        text = description if description is not None else settings.description
        if text is None and model.config.needs_description:
            raise ApiError(422, "description_required", description_fix(
                "the form field 'description' (or start the server with --description TEXT)",
                "`fmmc serve MODEL --describer SPEC`"))
        return text

    # ----- classify -----
    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=auth, responses=_ERRORS,
              summary="Classify the material of a region (mask, point, box, object name) or the whole image")
    async def classify(
        image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, ...)")],
        mask: Annotated[UploadFile | None, File(description="binary mask PNG, same size as the image")] = None,
        point: Annotated[str | None, Form(description="x,y in image pixels: SAM segments the object there")] = None,
        box: Annotated[str | None, Form(description="x0,y0,x1,y1 in image pixels")] = None,
        refine: Annotated[bool, Form(description="segment the object inside the box with SAM")] = False,
        object_: Annotated[str | None, Form(alias="object", max_length=200,
                                            description="object name: Grounding DINO finds it, SAM segments it")] = None,
        box_threshold: Annotated[float | None, Form(ge=0, le=1, description="grounder score threshold")] = None,
        description: Annotated[str | None, Form(max_length=2000, description="appearance text (language stream)")] = None,
        top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
        classes: Annotated[str | None, Form(description=CLASSES_HELP)] = None,
        mask_format: Annotated[Literal["none", "png", "rle"], Form(description="include the mask itself")] = "none",
        mask_threshold: Annotated[int | None, Form(ge=0, le=65535, description=(
            "non-binary masks (JPEG, anti-aliased): pixels >= this are the region (default 128)"))] = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        check_type(image, "image")
        if mask is not None:
            check_type(mask, "mask")
        prompts: dict[str, Any] = {}
        if point:
            prompts["point"] = _floats(point, 2, "point", "x,y")
        if box:
            prompts["box"] = _floats(box, 4, "box", "x0,y0,x1,y1")
            prompts["refine"] = refine
        if object_ is not None:
            prompts["object"] = object_
            prompts["refine"] = True
            prompts["box_threshold"] = settings.box_threshold if box_threshold is None else box_threshold
            prompts["text_threshold"] = settings.text_threshold
        if mask is not None and prompts:
            raise ApiError(422, "bad_prompt", "give one region: a mask file, or point/box, or object, not several")
        names_subset = parsed_classes(classes)  # unknown names: 422 before any work
        description = request_description(description)
        data = await image.read()
        mask_data = await mask.read() if mask is not None else None
        image_name = upload_name(image, "image")
        mask_name = upload_name(mask, "mask")
        pixels = header_pixels(data, image_name, settings.max_pixels)  # 400/413 from the headers, before any decode
        if mask_data is not None:
            pixels += header_pixels(mask_data, mask_name, settings.max_pixels)

        def work() -> tuple[Any, Any, dict[str, Any], str | None]:
            from fmmc.model.prediction import RegionInput

            img = decode_image(data, image_name, settings.max_pixels)
            region: dict[str, Any] = {"source": "image"}
            m = None
            if mask_data is not None:
                m = decode_mask(mask_data, img.size, mask_name, mask_threshold, settings.max_pixels)
                region = {"source": "mask"}
            elif prompts:
                rp = resolve_prompt(model, img, **prompts)
                m, region = rp.mask, rp.to_json()
            pred = runtime.classify_sync(RegionInput(img, m, description, names_subset))
            return pred.probs, m, region, pred.description

        probs, m, region, desc = await runtime.run(work, pixels=pixels)
        order = probs.argsort()[::-1][:top_k]
        names = model.labels
        best = int(order[0])
        return {"label": names[best], "confidence": float(probs[best]),
                "top": [{"label": names[i], "prob": float(probs[i])} for i in order],
                "mask": _mask_json(m, mask_format), "region": region,
                "description": desc if enc_has_text(model) else None,
                "timing_ms": round((time.perf_counter() - t0) * 1000, 2)}

    # ----- segment -----
    @app.post("/v1/segment", response_model=SegmentResponse, dependencies=auth, responses=_ERRORS,
              summary="Material map of the whole image: regions, overlay PNG, label map PNG")
    async def segment(
        image: Annotated[UploadFile, File(description="the photo")],
        mode: Annotated[Literal["sam", "grid"] | None, Form(description="sam: SAM regions; grid: patch grid")] = None,
        points_per_side: Annotated[int | None, Form(ge=1, description="SAM point grid (sam mode)")] = None,
        description: Annotated[str | None, Form(max_length=2000)] = None,
        top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
        classes: Annotated[str | None, Form(description=CLASSES_HELP)] = None,
        legend: Annotated[bool, Form(description="draw the legend into the overlay")] = True,
        alpha: Annotated[float, Form(ge=0, le=1, description="colour opacity in the overlay")] = 0.5,
    ) -> dict[str, Any]:
        from fmmc.model.maps.render import png_base64

        t0 = time.perf_counter()
        check_type(image, "image")
        pps = points_per_side or settings.points_per_side
        if pps > settings.max_points_per_side:
            raise ApiError(422, "invalid_request", f"points_per_side={pps} is over this server's limit of "
                                                   f"{settings.max_points_per_side}")
        chosen_classes = parsed_classes(classes)
        description = request_description(description)
        data = await image.read()
        image_name = upload_name(image, "image")
        pixels = header_pixels(data, image_name, settings.max_pixels)
        chosen = mode or settings.segment_mode

        def work() -> dict[str, Any]:
            img = decode_image(data, image_name, settings.max_pixels)
            mmap = model.segment(img, mode=chosen, classes=chosen_classes,
                                 description=description, points_per_side=pps,
                                 pred_iou_thresh=settings.pred_iou_thresh, stability_thresh=settings.stability_thresh)
            out = mmap.to_json(top_k)
            out["overlay_png_base64"] = png_base64(mmap.overlay(img, alpha=alpha, legend=legend))
            out["label_map_png_base64"] = png_base64(mmap.labels)
            out["confidence_png_base64"] = png_base64(mmap.confidence_image())
            return out

        out = await runtime.run(work, pixels=pixels)
        out["timing_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return out

    # ----- info -----
    @app.get("/v1/model", response_model=ModelInfo, dependencies=auth, responses=_ERRORS,
             summary="The taxonomy (with colours), component specs and whether each can load here, limits, config")
    async def model_info() -> dict[str, Any]:
        tax = model.taxonomy
        classes = [{"index": i, "name": n, "description": tax.descriptions[i] if i < len(tax.descriptions) else n,
                    "color": hex_color(tax.color(i))} for i, n in enumerate(tax.names)]
        c = model.config
        modes = ["sam"] + (["grid"] if c.streams == "vision" or c.describer == "none" else [])
        kinds = ("segmenter", "grounder") + (("text_encoder", "describer") if enc_has_text(model) else ())
        availability = {k: component_availability(model, k) for k in kinds}  # cheap: no build, no download
        return {"name": model_name, "fmmc_version": str(c.fmmc_version or __version__),
                "streams": str(c.streams), "taxonomy": {"name": tax.name, "classes": classes},
                "components": {"backbone": c.backbone, "text_encoder": c.text_encoder,
                               "describer": c.describer, "segmenter": component_spec(model, "segmenter"),
                               "grounder": component_spec(model, "grounder")},
                "availability": availability, "segment_modes": modes, "limits": settings.public(),
                "config": {k: v for k, v in c.to_json().items() if k != "taxonomy"}}

    @app.get("/healthz", response_model=Health, summary="Liveness: the process is up and the model loaded")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "in_flight": runtime.in_flight}

    # ----- the web page -----
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    log.info("app ready for model %s (token %s, CORS %s)", model_name, "on" if settings.token else "off",
             ",".join(settings.cors_origins) or "off")
    return app


def enc_has_text(model: Any) -> bool:
    return model.config.streams in ("both", "language")
