"""The model card (``README.md``) of a saved classifier, written with ``huggingface_hub.ModelCard``.

    >>> card = build_model_card(model.config, name="mugs", eval_results=eval_results("runs/eval-fmd"))  # doctest: +SKIP
    >>> write_model_card(card, Path("runs/a/model"))                                                   # doctest: +SKIP

The front matter is what the hub indexes: ``library_name: fmmc``, ``pipeline_tag: image-classification``,
``license``, ``base_model`` (the hub ids of the vision backbone and the text encoder; local paths and fmmc's
embedded weights without a hub twin are left out), ``datasets`` (hub ids, when given), ``tags`` and a
``model-index`` with the metrics of ``fmmc eval`` runs (their ``metrics.json``). The body says how to use the
model, its taxonomy, its training data and recipe, and its limitations.

A card fmmc wrote carries :data:`CARD_MARK`; :func:`write_model_card` replaces only such a card (or none),
so a README a user wrote in a model folder is kept unless ``overwrite`` asks otherwise.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard

    from fmmc.model.config import ModelConfig

log = logging.getLogger(__name__)
CARD_NAME = "README.md"
CARD_MARK = ("<!-- fmmc model card: written by fmmc's save_pretrained, rewritten when the model is saved again; "
             "delete this line to keep your edits -->")
DEFAULT_LICENSE = "apache-2.0"  # fmmc's own; the base models' licences still apply to their weights
TASK = "image-classification"
# fmmc's embedded offline weights that are a copy of a hub repo (the others have no hub twin)
BUILTIN_HUB_IDS = {"builtin:minilm": "sentence-transformers/all-MiniLM-L6-v2"}
# metrics.json key -> (model-index metric type, pretty name)
EVAL_METRICS = {"acc": ("accuracy", "Accuracy"), "macc": ("mean_class_accuracy", "Mean class accuracy"),
                "miou": ("mean_iou", "Mean IoU"), "top3": ("top_3_accuracy", "Top-3 accuracy"),
                "ece": ("ece", "Expected calibration error")}


def hub_id(kind: str, spec: str | None) -> str | None:
    """The hub repo id a component spec loads (``hf:facebook/dinov2-base`` -> ``facebook/dinov2-base``), or
    None for a local directory, an API model or embedded weights without a hub copy."""
    if not spec:
        return None
    if spec in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[spec]
    from fmmc.core.hub import is_local, looks_like_repo_id
    from fmmc.core.registry import registry

    try:
        entry, arg = registry(kind).parse(spec)
    except ValueError:
        return None
    if entry is None or entry.prefix not in ("hf", "st"):
        return None
    if is_local(arg) or arg.startswith((".", "/", "~")) or "/" not in arg or not looks_like_repo_id(arg):
        return None
    return arg


def eval_results(source: str | Path | dict[str, Any]) -> list[EvalResult]:
    """Model-index entries of one ``fmmc eval`` result: its folder, its ``metrics.json`` or that file's
    content. Only finite numbers are kept; the dataset is named by the test set's kind and folder name."""
    from huggingface_hub import EvalResult

    data = _read_metrics(source)
    ts = data.get("test_set") or {}
    kind = str(ts.get("kind") or "fmmc")
    spec = str(ts.get("spec") or kind)
    where = spec.split(":", 1)[-1].split("?", 1)[0].rstrip("/")
    name = f"{kind}: {Path(where).name}" if Path(where).name and Path(where).name != kind else kind
    split = str((data.get("eval") or {}).get("split") or "test")
    out = []
    for key, (metric, pretty) in EVAL_METRICS.items():
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append(EvalResult(task_type=TASK, task_name="Material classification", dataset_type=kind,
                                  dataset_name=name, dataset_split=split, metric_type=metric,
                                  metric_name=pretty, metric_value=round(float(value), 6)))
    if not out:
        raise ValueError(f"{source}: no metric (acc, macc, miou) in it; give the folder `fmmc eval --out` wrote")
    return out


def _read_metrics(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"{path}: no such file; give an `fmmc eval --out` folder (it holds metrics.json)") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    return data


def run_summary(model_dir: Path) -> dict[str, Any]:
    """The training summary of a model folder ``fmmc train`` wrote (``RUN/summary.json`` beside ``RUN/model``),
    once that run is complete (while it runs, the summary there is an earlier run's); else ``{}``."""
    from fmmc.core.outputs import read_marker

    model_dir = Path(model_dir)
    marker = read_marker(model_dir.parent)
    if model_dir.name != "model" or not marker or marker.get("kind") != "train" or not marker.get("complete"):
        return {}
    try:
        data = json.loads((model_dir.parent / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def build_model_card(config: ModelConfig, *, name: str | None = None, repo_id: str | None = None,
                     results: Iterable[EvalResult] = (), license: str | None = None,
                     datasets: Iterable[str] = (), summary: dict[str, Any] | None = None) -> ModelCard:
    """The card of a model with ``config`` (see the module docstring); ``repo_id``: how the usage example
    loads it (default: a placeholder), ``summary``: the training run's ``summary.json``."""
    from huggingface_hub import ModelCard, ModelCardData

    results = list(results)
    bases = [b for b in (hub_id("backbone", config.backbone if config.streams != "language" else None),
                         hub_id("text-encoder", config.text_encoder if config.streams != "vision" else None)) if b]
    tags = ["fmmc", "material-classification", "materials", *(["synthetic-data"] if _synthetic(config) else [])]
    name = name or config.name or (repo_id.split("/")[-1] if repo_id else "fmmc-material-classifier")
    data = ModelCardData(library_name="fmmc", pipeline_tag=TASK, license=license or DEFAULT_LICENSE,
                         base_model=bases or None, datasets=list(datasets) or None, tags=tags,
                         # the hub's name for "runs on the base models' own weights": a head on frozen backbones
                         # is an adapter of them; a fine-tuned backbone saved with the head is a fine-tune
                         base_model_relation=(None if not bases else "finetune" if config.mode == "full" else "adapter"),
                         model_name=name if results else None, eval_results=results or None)
    body = _body(config, name, repo_id, results, summary or {})
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{CARD_MARK}\n\n{body}")


def _synthetic(config: ModelConfig) -> bool:
    return "synth" in str((config.train or {}).get("data", "")).lower()


def _body(config: ModelConfig, name: str, repo_id: str | None, results: list[EvalResult],
          summary: dict[str, Any]) -> str:
    from fmmc.taxonomy import load_taxonomy

    tax = load_taxonomy(config.taxonomy)
    trained = set(config.trained_classes or tax.names)
    source = repo_id or "ORG/REPO"
    desc = ', description="glossy white glaze"' if config.needs_description else ""
    lines = [
        f"# {name}", "",
        f"A material classifier made with fmmc: given a photo and a region (mask, box, point or the whole image) it "
        f"says what the region is made of, with calibrated probabilities over {len(trained)} classes. Streams: "
        f"`{config.streams}` ({_streams(config)}).", "",
        "## Usage", "", "```python", "from fmmc import MaterialClassifier", "",
        f'model = MaterialClassifier.from_pretrained("{source}")',
        f'model("photo.jpg", top_k=3{desc})                         # [{{"label": ..., "score": ...}}, ...]',
        f'model("photo.jpg", box=(40, 30, 220, 260){desc})          # a region: box=, mask=, point=',
        f'model(["a.jpg", "b.jpg"]{", descriptions=[...]" if desc else ""})  # a list: one list of labels per image',
        "```", "",
        f"Command line: `fmmc predict {source} photo.jpg --box 40,30,220,260 --json`.", "",
    ]
    if config.needs_description:
        lines += ["This model's language stream was trained on the dataset's own descriptions (describer "
                  "`metadata`): give each new photo's `description=`, or load it with `describer=` (an image "
                  "describer such as `openai:gpt-4o-mini`, or `none`).", ""]
    lines += ["## Taxonomy", "", f"Taxonomy `{tax.name}`; predictions choose among the trained classes (pass "
              "`classes=\"all\"` for every class).", "", "| class | trained | description |", "| --- | --- | --- |"]
    lines += [f"| {c} | {'yes' if c in trained else 'no'} | {tax.describe(c)} |" for c in tax.names]
    lines += ["", *_data_section(config, summary), *_recipe(config, summary), *_results(results), *_limits(config)]
    return "\n".join(lines).rstrip() + "\n"


def _streams(config: ModelConfig) -> str:
    parts = []
    if config.streams != "language":
        parts.append(f"vision: `{config.backbone}`, {config.pooling}-pooled inside the region")
    if config.streams != "vision":
        parts.append(f"language: describer `{config.describer}` -> text encoder `{config.text_encoder}`")
    return "; ".join(parts)


def _data_section(config: ModelConfig, summary: dict[str, Any]) -> list[str]:
    train = config.train or {}
    data = str(train.get("data") or "unknown")
    shown = Path(data.split(":", 1)[-1]).name or data
    counts = (f"{summary['n_train']} training and {summary.get('n_val', 0)} validation regions"
              if "n_train" in summary else "the regions of that dataset")
    return ["## Training data", "",
            f"`{shown}` ({'fmmc synthetic data engine' if _synthetic(config) else 'an fmmc dataset'}): {counts}, "
            f"one label per masked region. Trained classes: {', '.join(config.trained_classes or ['all'])}.", ""]


def _recipe(config: ModelConfig, summary: dict[str, Any]) -> list[str]:
    t = config.train or {}
    h = config.head
    rows = [("mode", f"`{config.mode}` ({'frozen backbones, head trained' if config.mode == 'head' else 'fine-tuned'})"),
            ("backbone", f"`{config.backbone}` at {config.image_size or 'its default size'} px, pooling "
                         f"`{config.pooling}`, layers {config.layers}, scales {config.scales}"),
            ("text", f"`{config.text_encoder}` on `{config.describer}` descriptions" if config.streams != "vision"
             else "none"),
            ("head", (f"MLP {h.vision_dim}+{h.text_dim} -> {h.hidden} -> {h.num_classes}" if h.hidden else
                      f"linear {h.vision_dim}+{h.text_dim} -> {h.num_classes}") + f", dropout {h.dropout}")]
    rows += [(k, f"`{t[k]}`") for k in ("epochs", "lr", "batch_size", "weight_decay", "seed") if k in t]
    if "val_acc" in summary:
        rows.append(("validation accuracy", f"{summary['val_acc']:.4f} (the split used for early stopping)"))
    if "temperature" in summary:
        rows.append(("temperature", f"{summary['temperature']:.4f} (fitted on validation)"))
    return ["## Training recipe", "", "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows),
            "", f"fmmc {config.fmmc_version}; the whole configuration is in `config.json`.", ""]


def _results(results: list[EvalResult]) -> list[str]:
    if not results:
        return ["## Evaluation", "", "No `fmmc eval` result was attached to this card (`fmmc push MODEL REPO "
                "--eval DIR` adds one).", ""]
    rows = [f"| {r.dataset_name} | {r.dataset_split} | {r.metric_name} | {r.metric_value:.4f} |" for r in results]
    return ["## Evaluation", "", "| test set | split | metric | value |", "| --- | --- | --- | --- |", *rows, ""]


def _limits(config: ModelConfig) -> list[str]:
    lines = ["## Limitations", "",
             "- The label is for the region, not the whole image: give the mask or box of the object you mean.",
             "- It only knows the classes it was trained on; materials outside them are mapped to the nearest one.",
             "- Probabilities are calibrated on the validation split; other photo domains may be less reliable."]
    if _synthetic(config):
        lines.append("- Trained on synthetic images: expect a gap to real photos.")
    if config.needs_description:
        lines.append("- Without a description the language stream has no input: see Usage.")
    return [*lines, ""]


def is_fmmc_card(path: Path) -> bool:
    """Whether ``path`` is a card fmmc wrote (it carries :data:`CARD_MARK`)."""
    try:
        return CARD_MARK in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def previous_results(folder: Path) -> list[EvalResult]:
    """The model-index of the fmmc card already in ``folder`` (kept when the model is saved again)."""
    from huggingface_hub import ModelCard

    path = Path(folder) / CARD_NAME
    if not is_fmmc_card(path):
        return []
    try:
        return list(ModelCard.load(path, ignore_metadata_errors=True).data.eval_results or [])
    except (OSError, ValueError) as e:
        log.warning("%s: its model-index could not be read (%s); it is rewritten without it", path, e)
        return []


def merge_results(old: Iterable[EvalResult], new: Iterable[EvalResult]) -> list[EvalResult]:
    """``old`` with each metric of ``new`` added or replacing the same metric of the same test set."""
    new = list(new)
    kept = [o for o in old if not any(o.unique_identifier == n.unique_identifier and o.metric_type == n.metric_type
                                      for n in new)]
    return kept + new


def write_model_card(card: ModelCard, folder: str | Path, overwrite: bool = False) -> bool:
    """Write ``card`` as ``folder/README.md`` unless a README that fmmc did not write is there (kept, unless
    ``overwrite``). Returns whether it was written."""
    from fmmc.core.io import write_text_atomic

    path = Path(folder) / CARD_NAME
    if path.exists() and not overwrite and not is_fmmc_card(path):
        log.info("%s: kept (a README fmmc did not write); pass overwrite_card=True to replace it", path)
        return False
    write_text_atomic(path, str(card))
    return True
