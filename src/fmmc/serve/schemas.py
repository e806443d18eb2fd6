"""Response models of the HTTP API (they document the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. bad_image, not_found, busy")
    message: str = Field(description="what went wrong and how to fix it")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class TopClass(BaseModel):
    label: str
    prob: float


class MaskInfo(BaseModel):
    bbox: list[int] | None = Field(description="[x0, y0, x1, y1] in image pixels, right/bottom exclusive")
    area: int = Field(description="pixels inside the region")
    png_base64: str | None = Field(None, description="the mask as a 1-bit PNG (mask_format=png)")
    rle: dict[str, Any] | None = Field(None, description="uncompressed COCO RLE (mask_format=rle)")


class DetectionInfo(BaseModel):
    box: list[float]
    score: float
    phrase: str


class RegionInfo(BaseModel):
    source: str = Field(description="how the region was found: point, box, box+point, object, rectangle, mask, image")
    mask_score: float | None = Field(None, description="SAM's predicted IoU of the mask")
    detection: DetectionInfo | None = Field(None, description="the grounder's box for object prompts")


class ClassifyResponse(BaseModel):
    label: str
    confidence: float
    top: list[TopClass]
    mask: MaskInfo | None = Field(None, description="the region classified; null for the whole image")
    region: RegionInfo
    description: str | None = None
    timing_ms: float


class MapRegionInfo(BaseModel):
    id: int
    bbox: list[int]
    area: int
    visible_area: int
    label: str
    confidence: float
    top: list[TopClass]
    score: float | None = None


class LegendEntry(BaseModel):
    index: int = Field(description="value in the label map (255 = unlabelled)")
    label: str
    color: str
    fraction: float


class SegmentResponse(BaseModel):
    mode: str
    width: int
    height: int
    unlabelled_value: int
    classes: list[str]
    legend: list[LegendEntry]
    regions: list[MapRegionInfo]
    overlay_png_base64: str = Field(description="the photo with material colours, outlines (and a legend)")
    label_map_png_base64: str = Field(description="8-bit grey PNG: class index per pixel, 255 = unlabelled")
    confidence_png_base64: str = Field(description="8-bit grey PNG: probability of the shown class x 255")
    timing_ms: float


class TaxonomyClass(BaseModel):
    index: int
    name: str
    description: str
    color: str


class TaxonomyInfo(BaseModel):
    name: str
    classes: list[TaxonomyClass]


class ComponentAvailability(BaseModel):
    spec: str | None = Field(description="the component's spec, e.g. hf:facebook/sam-vit-base")
    available: bool = Field(description="whether it can load here (decided without building or downloading it)")
    reason: str = Field(description="why (not): loaded, local directory, in the local Hugging Face cache, "
                                    "needs download from the hub, or what is missing and how to fix it")


class ModelInfo(BaseModel):
    name: str
    fmmc_version: str
    streams: str
    taxonomy: TaxonomyInfo
    components: dict[str, str | None]
    availability: dict[str, ComponentAvailability] = Field(
        description="per component (segmenter, grounder; text_encoder, describer for language models): can it load?")
    segment_modes: list[str]
    limits: dict[str, Any]
    config: dict[str, Any]


class Health(BaseModel):
    status: str
    in_flight: int
