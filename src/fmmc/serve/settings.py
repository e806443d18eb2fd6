"""``ServeSettings``: every knob of the HTTP service, with safe defaults (loopback, no CORS, bounded work).

    >>> s = ServeSettings(token="secret", max_upload_mb=5)
    >>> s.max_upload_bytes
    5242880
    >>> s.max_pixels_in_flight     # 2 x max_pixels unless set
    80000000
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token required on /v1/* when set
    max_upload_mb: float = 20.0  # whole request body; larger -> 413
    max_pixels: int = 40_000_000  # decoded image width x height; larger -> 413
    max_pixels_in_flight: int | None = None  # decoded pixels of all requests at once (None: 2 x max_pixels)
    queue_timeout: float = 10.0  # seconds a request may wait for that pixel budget; then 503 "busy"
    read_timeout: float = 10.0  # seconds to send the request headers / longest pause in a body; then 408
    timeout: float = 60.0  # seconds per request; slower -> 504
    max_concurrency: int = 4  # requests worked on at once (decode, SAM, describer) in a thread pool
    max_queue: int = 32  # requests allowed to wait beyond those; more -> 503 "busy"
    batch_window_ms: float = 5.0  # micro-batching: classify requests arriving this close share one forward
    max_batch: int = 8  # 1 disables micro-batching
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are listed
    box_threshold: float = 0.35  # grounder defaults for object= prompts (a request may override)
    text_threshold: float = 0.25
    segment_mode: str = "sam"  # default /v1/segment mode: sam | grid
    points_per_side: int = 16  # SAM automatic-mask point grid
    max_points_per_side: int = 48
    pred_iou_thresh: float = 0.86  # SAM automatic-mask filters
    stability_thresh: float = 0.9
    preload: bool = False  # build the segmenter/grounder at start-up instead of on first use
    model_overrides: dict[str, Any] = field(default_factory=dict)  # passed to from_pretrained (segmenter=...)
    description: str | None = None  # language-stream text of requests that send no `description` field

    def __post_init__(self) -> None:
        if min(self.max_upload_mb, self.max_pixels, self.timeout, self.queue_timeout, self.read_timeout) <= 0:
            raise ValueError("max_upload_mb, max_pixels, timeout, queue_timeout and read_timeout must be positive")
        if self.max_pixels_in_flight is None:
            self.max_pixels_in_flight = 2 * self.max_pixels
        if self.max_pixels_in_flight < self.max_pixels:
            raise ValueError(f"max_pixels_in_flight={self.max_pixels_in_flight:,} is below max_pixels="
                             f"{self.max_pixels:,}: an image at the limit could never be decoded; raise it")
        if self.max_concurrency < 1 or self.max_queue < 0 or self.max_batch < 1:
            raise ValueError("max_concurrency and max_batch must be >= 1, max_queue >= 0")
        if self.segment_mode not in ("sam", "grid"):
            raise ValueError(f"segment_mode={self.segment_mode!r}: choose sam or grid")
        self.cors_origins = tuple(self.cors_origins)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def public(self) -> dict[str, Any]:
        """The limits a client may want to know (no token)."""
        return {"max_upload_mb": self.max_upload_mb, "max_pixels": self.max_pixels,
                "max_pixels_in_flight": self.max_pixels_in_flight, "timeout_s": self.timeout,
                "max_concurrency": self.max_concurrency, "max_queue": self.max_queue,
                "auth": self.token is not None, "segment_mode": self.segment_mode,
                "points_per_side": self.points_per_side, "max_points_per_side": self.max_points_per_side,
                "box_threshold": self.box_threshold}
