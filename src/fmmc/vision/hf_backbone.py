"""Any transformers vision model as an fmmc backbone: ``hf:facebook/dinov2-base``, ``hf:/local/dir``.

ViT-style models (DINOv2, ViT, CLIP/SigLIP vision towers) give tokens: the prefix tokens (CLS,
registers) are split off and the patch tokens reshaped to the grid. Conv nets (ResNet, ConvNeXt) give
a feature map directly; their output stride is measured once with a probe forward. Images are resized to
``image_size`` with no centre crop (448 for DINOv2-B/14 -> a 32x32x768 grid, as in the paper).

Normalisation and the resize filter come from the checkpoint's ``preprocessor_config.json`` (read as
JSON); a checkpoint without one gets ImageNet mean/std and bicubic, with a warning, and
``Preprocess.source`` says which it was. The global feature (``pooling="cls"``) is the CLS token of the
last hidden state, except for CLIP/SigLIP towers, where it is the model's ``pooler_output``
(post-layernorm CLS for CLIP, the attention-pool head for SigLIP).
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmmc.core.hub import WeightsUnavailableError, is_local, load_pretrained, resolve_weights
from fmmc.vision import families
from fmmc.vision.protocol import IMAGENET_MEAN, IMAGENET_STD, BackboneOutput, Preprocess

log = logging.getLogger(__name__)

PREPROCESSOR_FILE = "preprocessor_config.json"
# model types whose pooler_output is the image's global feature (not an extra trained head like ViT's)
_POOLED_CLS = frozenset({"clip", "clip_vision_model", "siglip", "siglip_vision_model",
                         "siglip2", "siglip2_vision_model"})
# PIL resample codes as stored in preprocessor_config.json -> fmmc.vision.extractor resample names
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_SUPPORTED_RESAMPLE = tuple(_PIL_RESAMPLE.values())
_PROBE_MULTIPLE = 64  # conv-net stride probe runs at a multiple of this, so ceil/floor rounding cannot bias it


class HFBackbone(nn.Module):
    """A transformers vision model -> :class:`BackboneOutput` (feature map ``[B, C, h, w]`` + global feature).

    ``state_dict()`` keeps runtime names (``model.<key>``); :meth:`checkpoint_state_dict` and
    :meth:`load_checkpoint_state` use the checkpoint's own names (``vision_model.<key>`` for a full CLIP).
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess, feature_dim: int, prefix_tokens: int | None,
                 pooled_cls: bool = False, checkpoint_names: dict[str, str] | None = None,
                 model_prefix: str = "") -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.feature_dim = feature_dim
        self._prefix = prefix_tokens
        self._pooled_cls = pooled_cls
        # model.state_dict() key -> the checkpoint's key (identity when not given)
        self._ckpt_names = dict(checkpoint_names or {})
        self._model_prefix = model_prefix  # where ``model`` sits in the loaded transformers model ("vision_model.")
        self._interp = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        self._patches = families.takes_patches(model)  # SigLIP 2 NaFlex: pre-cut patches + spatial_shapes

    def forward(self, pixel_values: torch.Tensor, layers: int = 1) -> BackboneOutput:
        """``layers=N``: also the N-1 blocks (conv nets: stages) before the last, in ``earlier`` (:meth:`_earlier`)."""
        kwargs: dict[str, Any] = {"pixel_values": pixel_values}
        if self._patches:
            kwargs = families.naflex_inputs(pixel_values, self.preprocess.patch_size)
        if self._interp:
            kwargs["interpolate_pos_encoding"] = True
        if layers > 1:
            kwargs["output_hidden_states"] = True
        out = self.model(**kwargs)
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        if hidden.dim() == 4:  # conv net: [B, C, h, w]
            main = BackboneOutput(hidden, pooled.flatten(1) if isinstance(pooled, torch.Tensor) else None)
            return main if layers == 1 else main._replace(earlier=self._earlier(out, layers, pixel_values.shape[-2:]))
        fmap, cls = self._split_tokens(hidden, pixel_values.shape[-2:])
        if self._pooled_cls:
            if not isinstance(pooled, torch.Tensor):
                raise RuntimeError(f"{type(self.model).__name__} returned no pooler_output for the cls feature")
            cls = pooled
        main = BackboneOutput(fmap, cls)
        return main if layers == 1 else main._replace(earlier=self._earlier(out, layers, pixel_values.shape[-2:]))

    def _earlier(self, out: Any, layers: int, size: torch.Size) -> tuple[BackboneOutput, ...]:
        """The ``layers - 1`` hidden states before the last, oldest first. Conv nets: the stage outputs as
        they are. Token models: each block's tokens through the model's final norm where its
        ``last_hidden_state`` has one (DINOv2's linear evaluation: ``get_intermediate_layers(norm=True)``),
        split into the patch grid and token 0 (the cls part) as the last layer is."""
        states = out.hidden_states
        if states is None or len(states) - 1 < layers:
            have = 0 if states is None else len(states) - 1
            raise ValueError(f"layers={layers}: {type(self.model).__name__} gives {have} layers; use layers<={have}")
        picked = states[-layers:-1]
        if out.last_hidden_state.dim() == 4:
            return tuple(BackboneOutput(s, None) for s in picked)
        norm = self._final_norm(states[-1], out.last_hidden_state)
        return tuple(BackboneOutput(*self._split_tokens(norm(s) if norm is not None else s, size)) for s in picked)

    def _final_norm(self, last_block: torch.Tensor, last_hidden: torch.Tensor) -> nn.Module | None:
        """The module that turns the last block's tokens into ``last_hidden_state`` (None: they are equal)."""
        if getattr(self, "_norm_name", None) is None:
            name = ""
            if not torch.equal(last_block, last_hidden):
                name = next((n for n in ("layernorm", "post_layernorm", "norm")
                             if isinstance(getattr(self.model, n, None), nn.Module)
                             and torch.allclose(getattr(self.model, n)(last_block), last_hidden, rtol=1e-3, atol=1e-3)),
                            None)
                if name is None:
                    raise RuntimeError(f"layers>1: cannot tell how {type(self.model).__name__} derives its "
                                       "last_hidden_state from the last block's tokens; use layers=1")
            self._norm_name = name
        return getattr(self.model, self._norm_name) if self._norm_name else None

    def layer_dims(self, layers: int) -> list[int]:
        """Widths of the last ``layers`` feature maps, oldest first (conv nets: ``config.hidden_sizes``)."""
        cfg = getattr(self.model, "config", None)
        sizes = list(getattr(cfg, "hidden_sizes", None) or [])
        total = len(sizes) if sizes else int(getattr(cfg, "num_hidden_layers", 0) or 0)
        if layers < 1 or layers > total:
            raise ValueError(f"layers={layers}: {type(self.model).__name__} has {total} "
                             f"{'stages' if sizes else 'blocks'}; use 1 to {total}")
        return [int(v) for v in sizes[-layers:]] if sizes else [self.feature_dim] * layers

    def _split_tokens(self, hidden: torch.Tensor, size: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, N, C] tokens -> (patch grid [B, C, h, w], token 0 when there are prefix tokens)."""
        b, n, c = hidden.shape
        gh, gw = size[0] // self.preprocess.patch_size, size[1] // self.preprocess.patch_size
        prefix = n - gh * gw if self._prefix is None else self._prefix
        if prefix < 0 or n - prefix != gh * gw:
            raise RuntimeError(f"backbone gave {n} tokens; expected {gh}x{gw} patches + prefix tokens")
        cls = hidden[:, 0] if prefix > 0 else None
        return hidden[:, prefix:].transpose(1, 2).reshape(b, c, gh, gw), cls

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights named as in its checkpoint's model.safetensors (what ``save_pretrained`` writes).

        A full CLIP/SigLIP checkpoint's vision tower keeps its ``vision_model.`` prefix.
        """
        return {self._ckpt_names.get(k, k): v for k, v in self.model.state_dict().items()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights named as in :meth:`checkpoint_state_dict`, strictly.

        Also accepted: the loaded transformers model's own ``state_dict()`` names and, for old artifacts,
        this module's runtime names (``model.<key>``).
        """
        own = set(self.model.state_dict())
        table = {f"model.{k}": k for k in own} | {self._model_prefix + k: k for k in own}
        table |= {self._ckpt_names.get(k, k): k for k in own}  # checkpoint names win
        mapped: dict[str, torch.Tensor] = {}
        unexpected: list[str] = []
        for key, value in state.items():
            inner = table.get(key)
            if inner is None or inner in mapped:
                unexpected.append(key)
            else:
                mapped[inner] = value
        missing = sorted(own - set(mapped))
        if missing or unexpected:
            raise ValueError(
                f"backbone weights do not match {type(self.model).__name__}: {len(missing)} missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected or repeated (e.g. {unexpected[:3]}). Pass the "
                f"state from checkpoint_state_dict() of the same architecture (keys like "
                f"{sorted(self.checkpoint_state_dict())[:2]})."
            )
        self.model.load_state_dict(mapped, strict=True)


def _vision_part(model: nn.Module) -> tuple[nn.Module, str]:
    """Full CLIP/SigLIP models: keep the vision tower only -> (module, its key prefix in the checkpoint)."""
    if hasattr(model, "text_model") and hasattr(model, "vision_model"):
        return model.vision_model, "vision_model."
    return model, ""


def build_hf_backbone(source: str, image_size: int | None = None, dtype: str | None = None, **kwargs: Any) -> HFBackbone:
    """Load ``source`` (hub id or local dir) through transformers ``AutoModel``."""
    from transformers import AutoConfig, AutoModel

    if not source:
        raise ValueError("hf backbone needs a hub id or a local dir, e.g. hf:facebook/dinov2-base")
    if dtype is not None or kwargs:
        log.warning("hf backbone %s ignores %s: set the compute dtype with FeatureExtractor(dtype=...)",
                    source, sorted([*kwargs, *(["dtype"] if dtype is not None else [])]))
    config = load_pretrained(AutoConfig.from_pretrained, source, "backbone config")
    full = load_pretrained(AutoModel.from_pretrained, source, "backbone")
    model, ckpt_prefix = _vision_part(full)
    model = model.eval()
    vcfg = getattr(config, "vision_config", config)
    types = {getattr(config, "model_type", ""), getattr(vcfg, "model_type", "")}
    model_type = getattr(config, "model_type", "")
    size = int(image_size or families.default_size(model_type, vcfg))
    token_conv = families.token_conv_stride(model_type, vcfg)  # DINOv3 ConvNeXt: a conv net giving tokens
    if token_conv is not None:
        stride, hidden = token_conv
    elif _is_conv(vcfg):
        stride, hidden = conv_stride(model, size)
    else:
        stride, hidden = _token_patch(vcfg, source), getattr(vcfg, "hidden_size", None)
    if not isinstance(hidden, int):
        raise ValueError(f"cannot tell the feature width of {source!r} (no hidden_size/hidden_sizes in its config)")
    size = _round_size(size, stride)
    pre = Preprocess(image_size=(size, size), patch_size=stride, **preprocess_from_checkpoint(source))
    names = checkpoint_names(full, model, ckpt_prefix)
    prefix = families.prefix_tokens(model_type, vcfg)
    pooled_cls = bool(types & _POOLED_CLS) and getattr(vcfg, "vision_use_head", True) is not False
    log.info("backbone %s: %s, %dx%d input, %dx%d grid, %d-d, cls=%s, preprocessing from %s", source, model_type,
             size, size, *pre.grid, hidden, "pooler_output" if pooled_cls else "token 0", pre.source)
    return HFBackbone(model, pre, int(hidden), prefix, pooled_cls=pooled_cls, checkpoint_names=names,
                      model_prefix=ckpt_prefix)


def checkpoint_names(full: nn.Module, part: nn.Module, prefix: str) -> dict[str, str]:
    """``part.state_dict()`` key -> its name in ``full``'s checkpoint file.

    transformers v5 renames some checkpoint keys on load (DINOv2/ViT ``attention.attention.query`` ->
    ``attention.q_proj``) and reverts that on save; the same revert gives the checkpoint's names here.
    """
    own = {prefix + k: (k, v) for k, v in part.state_dict().items()}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers v4: state_dict names are the checkpoint's names
        return {k: name for name, (k, _) in own.items()}
    reverted = revert_weight_conversion(full, {name: v for name, (_, v) in own.items()})
    by_tensor = {id(v): k for k, v in own.values()}
    names = {by_tensor.get(id(v)): name for name, v in reverted.items()}
    if None in names or len(names) != len(own):
        log.warning("%s: its checkpoint layout is not a plain renaming of the model's weights; backbone weights "
                    "are exported under the model's runtime names", type(full).__name__)
        return {k: name for name, (k, _) in own.items()}
    return names  # type: ignore[return-value]


def _is_conv(vcfg: Any) -> bool:
    """Conv nets (ResNet, ConvNeXt, RegNet, ...) list per-stage widths, or have no patch size at all."""
    return bool(getattr(vcfg, "hidden_sizes", None)) or not getattr(vcfg, "patch_size", None)


def _token_patch(vcfg: Any, source: str) -> int:
    patch = getattr(vcfg, "patch_size", None)
    if isinstance(patch, (list, tuple)):
        patch = patch[0] if len(set(patch)) == 1 else None
    if not isinstance(patch, int) or patch <= 0:
        raise ValueError(f"cannot tell the patch size of {source!r} (config patch_size={patch!r}); "
                         "use a model with square patches or a user backbone (package.module:factory)")
    return patch


def _round_size(size: int, stride: int) -> int:
    if size % stride == 0:
        return size
    rounded = max(stride, round(size / stride) * stride)
    log.warning("image_size %d rounded to %d, a multiple of the feature stride %d", size, rounded, stride)
    return rounded


@torch.no_grad()
def conv_stride(model: nn.Module, size: int) -> tuple[int, int]:
    """(output stride, channels) of a conv net's ``last_hidden_state``, from one forward on zeros.

    The probe input is a multiple of 64 pixels at least ``size``, so a net that pads (ceil) or crops
    (floor) odd sizes still gives the exact stride.
    """
    probe = max(_PROBE_MULTIPLE, -(-size // _PROBE_MULTIPLE) * _PROBE_MULTIPLE)
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, 3, probe, probe, device=param.device if param is not None else None,
                        dtype=param.dtype if param is not None and param.is_floating_point() else None)
        hidden = model(pixel_values=x).last_hidden_state
    finally:
        model.train(was_training)
    if hidden.dim() != 4:
        raise ValueError(f"{type(model).__name__} has no patch_size in its config but gave a "
                         f"{hidden.dim()}-D last_hidden_state, not a [B, C, h, w] feature map")
    h, w = hidden.shape[-2:]
    if h != w or probe % h:
        raise ValueError(f"cannot tell the output stride of {type(model).__name__}: a {probe}x{probe} input gave "
                         f"a {h}x{w} grid. Wrap it as a user backbone with an explicit preprocess.patch_size.")
    return probe // h, int(hidden.shape[1])


# --- preprocessing from preprocessor_config.json ---

def read_preprocessor_config(source: str) -> tuple[dict[str, Any] | None, str]:
    """(the checkpoint's preprocessor_config.json as a dict, or None with the reason)."""
    resolved = resolve_weights(source)
    try:
        if is_local(resolved):
            path = Path(resolved).expanduser() / PREPROCESSOR_FILE
            if not path.is_file():
                return None, f"no {PREPROCESSOR_FILE} in {resolved}"
        else:
            path = Path(_fetch_preprocessor_config(source))
        data = json.loads(path.read_text(encoding="utf-8"))
    except (WeightsUnavailableError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if _is_remote_missing(e):
            return None, f"no {PREPROCESSOR_FILE} in hub repo {source}"
        return None, f"{PREPROCESSOR_FILE} of {source} unreadable: {type(e).__name__}: {str(e)[:200]}"
    if not isinstance(data, dict):
        return None, f"{PREPROCESSOR_FILE} of {source} is not a JSON object"
    return data, PREPROCESSOR_FILE


def _is_remote_missing(e: BaseException) -> bool:
    """The hub answered that the repo has no such file (not: offline, not cached, unreachable)."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    return isinstance(e, RemoteEntryNotFoundError) or isinstance(e.__cause__, RemoteEntryNotFoundError)


def _fetch_preprocessor_config(repo: str) -> str:
    from huggingface_hub import hf_hub_download

    def fetch(repo_id: str, **kwargs: Any) -> str:
        return hf_hub_download(repo_id, PREPROCESSOR_FILE, **kwargs)

    return load_pretrained(fetch, repo, f"{PREPROCESSOR_FILE} of")


def preprocess_from_checkpoint(source: str) -> dict[str, Any]:
    """``mean``, ``std``, ``resample`` and ``source`` for :class:`Preprocess`, from the checkpoint or defaults."""
    data, where = read_preprocessor_config(source)
    if data is None:
        log.warning("backbone %s: %s; using defaults: ImageNet mean %s, std %s, bicubic resize",
                    source, where, IMAGENET_MEAN, IMAGENET_STD)
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "resample": "bicubic",
                "source": f"defaults ({where})"}
    _check_rescale(data, source)
    if data.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = _triple(data.get("image_mean"), "image_mean", source, IMAGENET_MEAN)
        std = _triple(data.get("image_std"), "image_std", source, IMAGENET_STD)
    return {"mean": mean, "std": std, "resample": _resample_name(data.get("resample"), source),
            "source": PREPROCESSOR_FILE}


def _check_rescale(data: dict[str, Any], source: str) -> None:
    factor = data.get("rescale_factor", 1 / 255)
    if data.get("do_rescale", True) is False or not isinstance(factor, (int, float)) \
            or abs(float(factor) * 255 - 1) > 1e-6:
        raise ValueError(
            f"{PREPROCESSOR_FILE} of {source} asks do_rescale={data.get('do_rescale', True)}, "
            f"rescale_factor={factor!r}; fmmc only supports pixels scaled by 1/255 before normalising. "
            "Fix the file or wrap the model as a user backbone (package.module:factory) with its own scaling."
        )


def _triple(value: Any, name: str, source: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if value is None:
        log.warning("%s of %s has no %s; using ImageNet's %s", PREPROCESSOR_FILE, source, name, default)
        return default
    values = [value] if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{PREPROCESSOR_FILE} of {source}: {name}={value!r} must be 3 numbers (RGB)")
    return float(values[0]), float(values[1]), float(values[2])


def _resample_name(value: Any, source: str) -> str:
    """PIL resample code (or name) -> the extractor's filter of that name."""
    if value is None:
        log.warning("%s of %s has no resample; using bicubic", PREPROCESSOR_FILE, source)
        return "bicubic"
    name = _PIL_RESAMPLE.get(value) if isinstance(value, int) else str(value).lower().rpartition(".")[2]
    if name not in _SUPPORTED_RESAMPLE:
        raise ValueError(f"{PREPROCESSOR_FILE} of {source}: unknown resample {value!r}; expected a PIL code 0-5 "
                         f"or one of {_SUPPORTED_RESAMPLE}")
    return name
