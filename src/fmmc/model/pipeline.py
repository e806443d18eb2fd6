"""The pipeline convention: ``model(images, top_k=5)`` -> ``[{"label": ..., "score": ...}, ...]`` per image.

    >>> model("mug.jpg", top_k=2)                                   # doctest: +SKIP
    [{'label': 'ceramic', 'score': 0.91}, {'label': 'glass', 'score': 0.04}]
    >>> model(["a.jpg", pil_image, array], boxes=[None, (0, 0, 64, 64), None])   # one list per image  # doctest: +SKIP

As transformers' ``pipeline("image-classification")``: one image gives one list, a list of images a list of
lists, each sorted by score (highest first) and cut to ``top_k`` (at most the classes the model chooses
among, so the scores of one list sum to at most 1). Inputs are what :meth:`MaterialClassifier.predict`
takes (paths, PIL images, arrays, bytes, mixed lists) with its region keywords (``mask=``/``box=``/
``point=``/``object=``, ``masks=``/``boxes=`` for a list); every prediction goes through ``predict``.
An ``http(s)://`` URL is fetched only with ``allow_urls=True``, never silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fmmc.model.classifier import MaterialClassifier
    from fmmc.model.prediction import Prediction

URL_PREFIXES = ("http://", "https://")
URL_TIMEOUT_S = 30.0
URL_MAX_BYTES = 50 * 1024 * 1024


def scores(pred: Prediction, top_k: int) -> list[dict[str, Any]]:
    """``[{"label", "score"}, ...]`` of ``pred``: its ``top_k`` classes among those it chose from
    (:meth:`Prediction.top`), highest first (ties in taxonomy order)."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: ask for at least 1 class")
    return [{"label": label, "score": p} for label, p in pred.top(top_k)]


def is_url(image: Any) -> bool:
    return isinstance(image, str) and image.strip().lower().startswith(URL_PREFIXES)


def fetch_url(url: str) -> bytes:
    """The bytes at ``url`` (one GET, redirects followed, at most :data:`URL_MAX_BYTES`)."""
    import httpx

    try:
        with httpx.stream("GET", url, timeout=URL_TIMEOUT_S, follow_redirects=True) as r:
            r.raise_for_status()
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > URL_MAX_BYTES:
                    raise ValueError(f"{url}: more than {URL_MAX_BYTES >> 20} MB; download it and pass the file")
    except httpx.HTTPError as e:
        raise ValueError(f"{url}: could not be downloaded ({type(e).__name__}: {e})") from e
    return bytes(data)


def _resolve(image: Any, allow_urls: bool) -> Any:
    if not is_url(image):
        return image
    if not allow_urls:
        raise ValueError(f"{image}: a URL is fetched only when asked: pass allow_urls=True, or download it and pass "
                         "the file")
    return fetch_url(image.strip())


def pipeline_call(model: MaterialClassifier, images: Any, top_k: int = 5, allow_urls: bool = False,
                  **kwargs: Any) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """``model(images, top_k=...)``: see the module docstring; ``kwargs`` go to ``model.predict``."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: ask for at least 1 class")
    model.class_indices(kwargs.get("classes"))  # checks the names before any work
    if isinstance(images, (list, tuple)):
        preds = model.predict([_resolve(im, allow_urls) for im in images], **kwargs)
        return [scores(p, top_k) for p in preds]
    return scores(model.predict(_resolve(images, allow_urls), **kwargs), top_k)
