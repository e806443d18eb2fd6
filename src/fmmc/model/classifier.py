"""The trained classifier as one artifact: ``config.json`` + ``model.safetensors`` in a directory.

    >>> from fmmc import MaterialClassifier
    >>> model = MaterialClassifier.from_pretrained("runs/demo/model")      # or a hub id  # doctest: +SKIP
    >>> pred = model.predict("mug.jpg", box=(40, 30, 220, 260))                             # doctest: +SKIP
    >>> pred.top(3)                                                                        # doctest: +SKIP
    [('ceramic', 0.91), ('glass', 0.04), ('plastic', 0.02)]

Predictions choose among the classes the model was trained on (``config.trained_classes``; the whole
taxonomy for models saved before fmmc recorded them): ``classes="all"`` asks for the whole taxonomy, a list
of names for any subset of it (:meth:`MaterialClassifier.resolve_classes`).

The config names every component by spec (backbone, text encoder, describer) plus preprocessing and the
training config, so a model can be rebuilt and its results reproduced anywhere those weights load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from PIL import Image

from fmmc import __version__
from fmmc.data.records import Region
from fmmc.model.config import DATASET_DESCRIBERS, HeadConfig, ModelConfig, description_fix
from fmmc.model.head import MaterialHead
from fmmc.model.locate import CONFIG_NAME, model_dir
from fmmc.model.prediction import ALL_CLASSES, Classes, Prediction, RegionInput
from fmmc.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"
ImageArg = str | Path | bytes | Image.Image | np.ndarray  # what predict takes (fmmc.data.regions.ImageInput)
MaskArg = str | Path | bytes | np.ndarray
BoxArg = tuple[float, float, float, float]


class MaterialClassifier:
    def __init__(self, config: ModelConfig | dict[str, Any], head: MaterialHead, encoder: Any | None = None) -> None:
        self.config = config if isinstance(config, ModelConfig) else ModelConfig.from_json(config)
        self.taxonomy: Taxonomy = load_taxonomy(self.config.taxonomy)
        self._check_trained_classes()
        self.head = head.eval()
        self._encoder = encoder
        self._backbone_state: dict[str, torch.Tensor] | None = None
        self._device = "cpu"
        self._cache_dir: str | Path | None = None
        self._num_workers: int | None = None
        # region components (segmenter, grounder) built on first use by fmmc.grounding.prompts, or failed builds
        self.components: dict[str, Any] = {}

    # ----- construction -----
    @classmethod
    def from_parts(cls, cfg: Any, taxonomy: Taxonomy, encoder: Any, head: MaterialHead,
                   trained_classes: Iterable[str] | None = None) -> MaterialClassifier:
        """A classifier from a :class:`~fmmc.train.config.TrainConfig`, its encoder and a trained head;
        ``trained_classes``: the training regions' labels (recorded in taxonomy order; None: every class)."""
        from fmmc.data.regions import DECODE_RULE

        ex = encoder.extractor
        spec = cfg.feature_spec()
        if ex is None:
            spec.backbone = None
        config = ModelConfig(
            **asdict(spec), fmmc_version=__version__, taxonomy=taxonomy.to_dict(), streams=cfg.streams,
            preprocess=ex.pre.to_dict() if ex is not None else None, decode=DECODE_RULE,
            text_encoder=cfg.text_encoder if encoder.text_encoder is not None else None,
            describer=cfg.describer if encoder.text_encoder is not None else None,
            head=HeadConfig(head.vision_dim, head.text_dim, len(taxonomy), head.hidden, head.dropout,
                            head.standardize),
            mode=cfg.mode, train=asdict(cfg),
            trained_classes=None if trained_classes is None else _in_taxonomy_order(taxonomy, trained_classes))
        return cls(config, head, encoder)

    def save_pretrained(self, path: str | Path, include_backbone: bool = False, *, card: bool = True,
                        overwrite_card: bool = False, eval_results: Iterable[Any] = (), repo_id: str | None = None,
                        license: str | None = None, datasets: Iterable[str] = ()) -> Path:
        """Write ``config.json`` (with ``id2label``/``label2id``) + ``model.safetensors`` (the head; the backbone
        too for ``mode=full`` or ``include_backbone``, under the names of the backbone's own checkpoint) and,
        with ``card``, the model card ``README.md`` (:mod:`fmmc.model.card`: a README fmmc did not write is
        kept unless ``overwrite_card``). ``eval_results``: ``fmmc eval`` folders, their metrics.json or
        ``huggingface_hub.EvalResult``s, added to the card's model-index; ``repo_id``: the hub id the card's
        usage shows; ``license`` / ``datasets``: the card's (default apache-2.0 / none)."""
        from fmmc.core.io import save_safetensors, write_text_atomic
        from fmmc.vision.protocol import export_state

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        if include_backbone or self.config.mode == "full":
            bb = self._encoder.extractor.backbone if self._encoder is not None else None
            state = export_state(bb) if bb is not None else (self._backbone_state or {})
            tensors.update({f"backbone.{k}": v.detach().cpu().contiguous() for k, v in state.items()})
            self.config.backbone_weights_included = True
        save_safetensors(tensors, path / WEIGHTS_NAME, metadata={"format": "pt", "fmmc_version": __version__})
        if card:
            self.write_card(path, overwrite=overwrite_card, eval_results=eval_results, repo_id=repo_id,
                            license=license, datasets=datasets)
        # config.json last and atomically: a folder with one is a complete model
        labels = {"id2label": {str(i): n for i, n in enumerate(self.labels)},
                  "label2id": {n: i for i, n in enumerate(self.labels)}}  # derived: dropped again at load
        write_text_atomic(path / CONFIG_NAME, json.dumps({**self.config.to_json(), **labels}, indent=1, default=str))
        return path

    def write_card(self, path: str | Path, *, overwrite: bool = False, eval_results: Iterable[Any] = (),
                   repo_id: str | None = None, license: str | None = None, datasets: Iterable[str] = ()) -> bool:
        """Write this model's card into model folder ``path`` (see :meth:`save_pretrained`), keeping the
        model-index of the fmmc card already there; returns False when a README fmmc did not write was kept."""
        from fmmc.model import card

        path = Path(path)
        new: list[Any] = []
        for r in eval_results:  # an eval folder, its metrics.json or their content; or EvalResults as they are
            new += card.eval_results(r) if isinstance(r, (str, Path, dict)) else [r]
        merged = card.merge_results(card.previous_results(path), new)
        built = card.build_model_card(self.config, repo_id=repo_id, results=merged, license=license,
                                      datasets=datasets, summary=card.run_summary(path))
        return card.write_model_card(built, path, overwrite)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    token: str | None = None, commit_message: str | None = None, eval_results: Iterable[Any] = (),
                    license: str | None = None, datasets: Iterable[str] = ()) -> str:
        """Save this model (with its card) to a temporary folder and upload it to hub repo ``repo_id``
        (created if missing; ``private`` applies to a new repo), on branch ``revision`` (created if missing).
        Returns the commit URL. ``HF_HUB_OFFLINE=1`` refuses at once. See :func:`fmmc.model.hub_push.push_folder`."""
        import tempfile

        from fmmc.model.hub_push import check_can_push, push_folder

        check_can_push(f"the model to {repo_id}")
        with tempfile.TemporaryDirectory(prefix="fmmc-push-") as tmp:
            self.save_pretrained(tmp, include_backbone=self.config.backbone_weights_included,
                                 eval_results=eval_results, repo_id=repo_id, license=license, datasets=datasets)
            return push_folder(tmp, repo_id, private=private, revision=revision, token=token,
                               commit_message=commit_message or "Upload fmmc material classifier")

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str = "cpu", cache_dir: str | Path | None = None,
                        num_workers: int | None = None, **overrides: Any) -> MaterialClassifier:
        """Load from a directory written by ``save_pretrained`` or a hub repo id holding one.

        ``overrides`` replace config entries at load time, e.g. ``describer="openai:gpt-4o-mini"``.
        ``cache_dir`` is where the streams keep features and descriptions (as ``TrainConfig.cache_dir``;
        default ``~/.cache/fmmc`` or ``$FMMC_CACHE``). ``num_workers``: decoding processes for batch
        prediction (None: the device's default, :mod:`fmmc.vision.loading`). ``device``: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or
        ``auto``, resolved by :func:`fmmc.core.device.resolve_device` (one that is not there: ValueError).
        """
        from safetensors.torch import load_file

        from fmmc.core.device import resolve_device

        device = resolve_device(device)  # before any file is read: a wrong device fails first, in one line
        path = model_dir(source)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise ValueError(f"{path} is not an fmmc model: no {CONFIG_NAME} (train one with `fmmc train`)")
        try:
            data = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file}: not valid JSON: {e}") from e
        if isinstance(data, dict):  # derived from the taxonomy when saved (transformers' names), not config
            data = {k: v for k, v in data.items() if k not in ("id2label", "label2id")}
        config = ModelConfig.from_json(data, where=str(cfg_file))
        config.override(**overrides)
        h = config.head
        head = MaterialHead(h.vision_dim, h.text_dim, h.num_classes, h.hidden, h.dropout, config.streams, h.standardize)
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise ValueError(f"{path}: missing {WEIGHTS_NAME}")
        state = load_file(str(weights))
        try:
            head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        except RuntimeError as e:
            raise ValueError(f"{weights}: the head weights do not match {cfg_file} ({str(e).splitlines()[0]}); "
                             "the two files come from different models") from e
        model = cls(config, head)
        model._backbone_state = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")} or None
        model._device = device
        model._cache_dir = cache_dir
        model._num_workers = num_workers
        return model

    def fingerprint(self) -> str:
        """A hash of what decides this model's predictions: its config, its head's weights and, with a vision
        stream, the feature settings (which hold a fingerprint of the backbone's weights). Journals of
        interrupted batch runs are keyed by it, so a retrained model never resumes another's predictions."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.config.to_json(), sort_keys=True, default=str).encode())
        for k, v in sorted(self.head.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        extractor = self.encoder.extractor
        if extractor is not None:
            h.update(json.dumps(extractor.settings(), sort_keys=True, default=str).encode())
        return h.hexdigest()[:20]

    # ----- the streams (built lazily, so loading a model is cheap) -----
    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from fmmc.model.encoder import build_encoder

            c = self.config
            self._encoder = build_encoder(
                c.streams, c.feature_spec() if c.backbone else None, c.text_encoder, c.describer,
                device=self._device, cache_dir=self._cache_dir, backbone_state=self._backbone_state,
                preprocess=c.preprocess, num_workers=self._num_workers)
        return self._encoder

    @property
    def device(self) -> str:
        """The device this model's streams (and its region components) run on."""
        return self._device

    @property
    def built_encoder(self) -> Any | None:
        """The encoder if it is built already, else None (asking never builds it, unlike :attr:`encoder`)."""
        return self._encoder

    @property
    def labels(self) -> tuple[str, ...]:
        return self.taxonomy.names

    @property
    def trained_classes(self) -> tuple[str, ...]:
        """The classes the model was trained on (the whole taxonomy for models saved before fmmc recorded them)."""
        tc = self.config.trained_classes
        return self.labels if tc is None else tuple(tc)

    def resolve_classes(self, classes: Classes) -> list[str] | None:
        """The names a prediction chooses among: None -> the trained classes, ``"all"`` -> None (the whole
        taxonomy), a list -> itself (names outside the trained classes allowed: the caller's choice)."""
        if classes is None:
            tc = self.config.trained_classes
            return None if tc is None else list(tc)
        if isinstance(classes, str):
            if classes.strip().lower() == ALL_CLASSES:
                return None
            raise ValueError(f"classes={classes!r}: give a list of class names, 'all' (the whole taxonomy) or "
                             "None (the classes the model was trained on)")
        return list(classes)

    def _candidates(self, classes: Classes) -> tuple[int, ...] | None:
        idx = self.class_indices(classes)
        return None if idx is None or len(idx) == len(self.labels) else tuple(idx)

    def class_indices(self, classes: Classes) -> list[int] | None:
        """Taxonomy indices of ``classes`` (see :meth:`resolve_classes`; None = every class); unknown names
        raise ValueError."""
        names = self.resolve_classes(classes)
        if names is None:
            return None
        idx = self.taxonomy.subset(names)
        if not idx:
            raise ValueError("classes= is empty: give at least one class name, or 'all' for the whole taxonomy")
        return idx

    def _check_trained_classes(self) -> None:
        tc = self.config.trained_classes
        if tc is None:
            return
        unknown = [c for c in tc if c not in self.taxonomy]
        if unknown or not tc:
            raise ValueError(f"model config: trained_classes {unknown or tc} are not classes of taxonomy "
                             f"{self.taxonomy.name!r}; the config is damaged: retrain, or set trained_classes "
                             "to null to use the whole taxonomy")

    # ----- can it classify a new photo? -----
    def check_ready(self, description: str | None = None, fix: str | None = None) -> None:
        """Raise ValueError with the fix (one line) when a region without ``description`` cannot be classified:
        a two-stream model whose describer reads dataset descriptions (``config.needs_description``). Called
        before any image is decoded; ``fix``: the message to raise (default: :func:`description_fix`)."""
        if description is None and self.config.needs_description:
            raise ValueError(fix or description_fix())

    def region_texts(self, regions: list[Region], description: str | None = None) -> list[str | None]:
        """The language-stream text per region: a region's own ``description`` when the model's describer
        reads it (``metadata``), else ``description`` (None: the describer writes it)."""
        own = (self.config.describer or "none") in DATASET_DESCRIBERS
        return [r.description if own and r.description is not None else description for r in regions]

    # ----- the one forward: features -> calibrated probabilities -----
    def logits(self, vis: torch.Tensor | None, txt: torch.Tensor | None) -> torch.Tensor:
        """Calibrated logits (divided by the fitted temperature) ``[N, K]`` of pooled features."""
        with torch.inference_mode():
            return self.head(vis, txt) / self.head.temperature

    def probabilities(self, vis: torch.Tensor | None, txt: torch.Tensor | None,
                      classes: Classes = None) -> np.ndarray:
        """Class probabilities ``[N, K]`` of pooled features over the classes of ``classes`` (others 0; see
        :meth:`resolve_classes`: None = the trained classes, ``"all"`` = the whole taxonomy)."""
        with torch.inference_mode():
            return self.head.probs(self.head(vis, txt), self.class_indices(classes)).float().cpu().numpy()

    def classify(self, items: list[RegionInput]) -> list[Prediction]:
        """The one path from in-memory regions to predictions (``predict``, the service and material maps
        use it). Regions of one image object share one backbone pass; each item may ask its own class
        subset (None: the trained classes). Masks are ignored by a model trained with ``null_mask``."""
        if not items:
            return []
        for it in items:
            self.check_ready(it.description)
        masks = [None if self.config.null_mask else it.mask for it in items]
        images = [it.image for it in items]
        enc = self.encoder.encode_arrays(images, masks, [it.description for it in items])
        out = []
        for k, it in enumerate(items):
            vis = None if enc.vis is None else enc.vis[k : k + 1]
            txt = None if enc.txt is None else enc.txt[k : k + 1]
            probs = self.probabilities(vis, txt, it.classes)[0]
            out.append(Prediction(probs, self.labels, description=enc.descriptions[k], mask=it.mask,
                                  candidates=self._candidates(it.classes)))
        return out

    # ----- inference -----
    def predict_regions(self, regions: list[Region], classes: Classes = None, progress: bool = True,
                        description: str | None = None) -> tuple[list[Prediction | None], list[tuple[str, str]]]:
        """Predictions aligned with ``regions`` (None where a region failed), and the failures. ``classes``:
        None = the trained classes, ``"all"`` = the whole taxonomy, or a list of names. ``description``: the
        language-stream text of every region without its own (see :meth:`region_texts`); a model that
        needs one (``config.needs_description``) refuses before any work when no region has one, and skips
        the regions without."""
        if self.config.null_mask:
            from dataclasses import replace

            regions = [replace(r, mask=None, box=None) for r in regions]
        texts = self.region_texts(regions, description)
        keep = [i for i, t in enumerate(texts) if t is not None or not self.config.needs_description]
        if regions and not keep:
            self.check_ready(fix=description_fix("--description TEXT (Python: predict_regions(..., description="
                                                 "'...')) or a 'description' on each dataset line"))
        skipped = [(regions[i].id, "no 'description' on its line: add one, or pass --description TEXT")
                   for i in sorted(set(range(len(regions))) - set(keep))]
        enc = self.encoder.encode_regions([regions[i] for i in keep], progress=progress,
                                          descriptions=[texts[i] for i in keep])
        probs = self.probabilities(enc.vis, enc.txt, classes) if enc.index else []
        out: list[Prediction | None] = [None] * len(regions)
        candidates = self._candidates(classes)
        for j, p, d in zip(enc.index, probs, enc.descriptions):
            out[keep[j]] = Prediction(p, self.labels, id=regions[keep[j]].id, description=d, candidates=candidates)
        return out, skipped + enc.failures

    @overload
    def predict(self, image: ImageArg, mask: MaskArg | None = None, box: BoxArg | None = None,
                description: str | None = None, classes: Classes = None, mask_threshold: int | None = None, *,
                masks: None = None, boxes: None = None, descriptions: None = None, **prompts: Any) -> Prediction: ...

    @overload
    def predict(self, image: list[ImageArg] | tuple[ImageArg, ...], mask: None = None, box: None = None,
                description: None = None, classes: Classes = None, mask_threshold: int | None = None, *,
                masks: Sequence[MaskArg | None] | None = None, boxes: Sequence[BoxArg | None] | None = None,
                descriptions: Sequence[str | None] | None = None) -> list[Prediction]: ...

    def predict(self, image: Any, mask: Any = None, box: Any = None, description: str | None = None,
                classes: Classes = None, mask_threshold: int | None = None, *, masks: Any = None,
                boxes: Any = None, descriptions: Any = None, **prompts: Any) -> Prediction | list[Prediction]:
        """Classify one region of one image: ``mask`` (path or array), ``box`` (x0, y0, x1, y1), or the
        whole image. ``classes``: the names to choose among (None: the classes the model was trained on;
        ``"all"``: the whole taxonomy). Pixels and masks follow
        the one region rule (:mod:`fmmc.data.regions`; ``mask_threshold`` for non-binary masks).

        A list (or tuple) of images (paths, PIL images, arrays, mixed) returns a list of Predictions from one
        batched :meth:`classify` call, the same as one ``predict`` per image (bit for bit on one torch thread;
        with more, a batched backbone pass may differ from single ones in the last float bits, about 1e-6);
        ``masks=``, ``boxes=`` and ``descriptions=`` are then optional lists with one entry per image (None:
        whole image / the describer's text).

        Region prompts (:mod:`fmmc.grounding.prompts`): ``point=(x, y)`` or ``object="the mug"`` ask SAM (and
        the grounder) for the mask; ``refine=True`` turns ``box`` into a SAM prompt too. The mask used is
        returned as ``Prediction.mask``."""
        from fmmc.data.regions import as_image, resolve_region

        if isinstance(image, (list, tuple)):
            _single_args_unused(mask=mask, box=box, description=description, prompts=prompts)
            return self._predict_many(list(image), masks, boxes, descriptions, classes, mask_threshold)
        if masks is not None or boxes is not None or descriptions is not None:
            raise ValueError("masks=, boxes= and descriptions= go with a list of images; for one image pass "
                             "mask=, box=, description=")
        self.check_ready(description)  # before decoding the image or asking SAM
        region = None
        if prompts:
            from fmmc.grounding.prompts import (
                resolve_prompt,  # point= / object= / refine= prompts (SAM, grounding)
            )

            if mask is not None:
                raise ValueError("give mask= or a region prompt (point=, object=, refine=), not both")
            img = as_image(image)
            region = resolve_prompt(self, img, box=box, **prompts)
            m = region.mask
        else:
            img, m = resolve_region(image, mask, box, mask_threshold=mask_threshold)
        pred = self.classify([RegionInput(img, m, description, classes)])[0]
        pred.id = str(image) if isinstance(image, (str, Path)) else ""
        pred.mask = m
        if region is not None:
            pred.extra["region"] = region.to_json()
        return pred

    def _predict_many(self, images: list[Any], masks: Any, boxes: Any, descriptions: Any, classes: Classes,
                      mask_threshold: int | None) -> list[Prediction]:
        """``predict`` over a list: every image decoded once (repeats share one backbone pass), one classify."""
        from fmmc.data.regions import as_image, resolve_region

        n = len(images)
        masks, boxes, descriptions = (_per_image(v, name, n) for v, name in
                                      ((masks, "masks"), (boxes, "boxes"), (descriptions, "descriptions")))
        for d in descriptions:
            self.check_ready(d)  # before any image is decoded
        decoded: dict[Any, Image.Image] = {}
        items = []
        for image, m, b, d in zip(images, masks, boxes, descriptions):
            key = str(image) if isinstance(image, (str, Path)) else id(image)
            if key not in decoded:
                decoded[key] = as_image(image)
            img, region_mask = resolve_region(decoded[key], m, b, mask_threshold=mask_threshold)
            items.append(RegionInput(img, region_mask, d, classes))
        preds = self.classify(items)
        for image, pred in zip(images, preds):
            pred.id = str(image) if isinstance(image, (str, Path)) else ""
        return preds

    def __call__(self, images: Any, top_k: int = 5, *, allow_urls: bool = False,
                 **kwargs: Any) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """The pipeline convention: ``[{"label": ..., "score": ...}, ...]`` sorted, per image (a list of images:
        a list of them), through :meth:`predict` (its region keywords pass through); URLs only with
        ``allow_urls=True``. See :mod:`fmmc.model.pipeline`."""
        from fmmc.model.pipeline import pipeline_call

        return pipeline_call(self, images, top_k=top_k, allow_urls=allow_urls, **kwargs)

    def segment(self, image: str | Path | Image.Image | np.ndarray, mode: str = "sam", **kwargs: Any) -> Any:
        """A material map of the whole image (:class:`fmmc.model.maps.MaterialMap`): ``mode="sam"`` classifies
        SAM's automatic regions, ``mode="grid"`` every backbone patch (fast, no SAM). See
        :func:`fmmc.model.maps.segment_image`."""
        from fmmc.data.regions import as_image
        from fmmc.model.maps import segment_image

        self.check_ready(kwargs.get("description"))  # before decoding the image or running SAM
        return segment_image(self, as_image(image), mode=mode, **kwargs)


def _single_args_unused(mask: Any, box: Any, description: Any, prompts: dict[str, Any]) -> None:
    """``predict([...])`` takes per-image lists; the one-image arguments would be ambiguous there."""
    given = [name for name, v in (("mask", mask), ("box", box), ("description", description)) if v is not None]
    if given:
        plural = {"mask": "masks", "box": "boxes", "description": "descriptions"}
        raise ValueError(f"predict([...]) with a list of images takes {', '.join(plural[g] + '=' for g in given)} "
                         f"(one entry per image), not {', '.join(g + '=' for g in given)}")
    if prompts:
        raise ValueError(f"region prompts ({', '.join(sorted(prompts))}=) take one image: call "
                         "predict(image, ...) for each image")


def _per_image(values: Any, name: str, n: int) -> list[Any]:
    """A ``masks=`` / ``boxes=`` / ``descriptions=`` list checked against ``n`` images (None: n Nones)."""
    if values is None:
        return [None] * n
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"predict: {name}= must be a list with one entry per image (None for none), "
                         f"got {type(values).__name__}")
    if len(values) != n:
        raise ValueError(f"predict: {name}= has {len(values)} entries for {n} images; give one per image "
                         "(None where an image has none)")
    return list(values)


def _in_taxonomy_order(taxonomy: Taxonomy, names: Iterable[str]) -> list[str]:
    return [taxonomy.names[i] for i in sorted(set(taxonomy.subset(list(names))))]
