"""The fmmc web service and page (extra ``fmmc[serve]``: fastapi, uvicorn, python-multipart).

    $ fmmc serve runs/demo/model --port 8000            # then open http://127.0.0.1:8000/
    $ curl -F image=@mug.jpg -F point=320,240 http://127.0.0.1:8000/v1/classify

    >>> from fmmc.serve import ServeSettings, create_app
    >>> app = create_app("runs/demo/model", ServeSettings())     # doctest: +SKIP

Importing this package is cheap; FastAPI is imported by :func:`create_app`. See ``docs/serving.md``.
"""

from __future__ import annotations

from typing import Any

from fmmc.serve.settings import ServeSettings


def create_app(model_or_path: Any, settings: ServeSettings | None = None, name: str | None = None) -> Any:
    """Build the FastAPI app (see :func:`fmmc.serve.app.create_app`)."""
    try:
        from fmmc.serve.app import create_app as _create
    except ImportError as e:
        raise ImportError(f"the service needs the serve extra: pip install 'fmmc[serve]' ({e})") from e
    return _create(model_or_path, settings, name)


__all__ = ["ServeSettings", "create_app"]
