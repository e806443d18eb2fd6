"""The ``torchvision-gpu`` decoder: JPEGs decoded by ``torchvision.io.decode_jpeg`` on the model's device.

On a CUDA device that is nvJPEG, a batch of files in one call, so decoding leaves the CPU cores (which
feed a fast GPU only a few percent of the time at full PIL decode: issue 12). On a CPU device the same code
runs torchvision's libjpeg-turbo decoder, which is how CI checks it without a GPU.

What differs from the one decode rule (:mod:`fmmc.data.regions`), and is therefore a decode rule of its
own in the feature-cache key (``torchvision``):

* the workers read a JPEG's bytes only (its mask, or box, is still read by the mask rule, at the image's
  upright size from its header); anything that is not a JPEG decodes by the one rule, in the worker;
* the resize runs on the device: ``torch.nn.functional.interpolate(..., antialias=True)``, rounded to
  8-bit as PIL's is; torch's antialiased kernels follow PIL's, so pixels differ from the ``pil`` decoder
  by a few levels at most (``tests/test_tv_decoder.py`` bounds it: mean |diff| under 1 level, pooled
  features at cosine >= 0.999); bicubic, bilinear and nearest only.

torchvision is an optional dependency: it does not import beside this project's torch pin (see the
README's second environment); asking for this decoder without it is a clear error, before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fmmc.vision.protocol import Preprocess

JPEG_MAGIC = b"\xff\xd8\xff"
MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}  # PIL filter -> interpolate mode


def check_available(pre: Preprocess) -> None:
    """Raise a one-line error when this decoder cannot run here (no torchvision, or an unsupported resample)."""
    try:
        import torchvision.io  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a torchvision built for another torch
        raise RuntimeError(f"decoder 'torchvision-gpu' needs torchvision ({type(e).__name__}: {e}); install a "
                           "torch + torchvision pair (e.g. pip install torch==2.14.1 torchvision==0.29.1), or "
                           "use --decoder pil") from e
    if pre.resample not in MODES:
        raise ValueError(f"decoder 'torchvision-gpu' resizes with {sorted(MODES)}, but this backbone's "
                         f"preprocessing asks for {pre.resample!r}: use --decoder pil")


def read_jpeg(path: str | Path) -> torch.Tensor | None:
    """The file's bytes as a 1-D uint8 tensor when it is a JPEG, else None (it decodes by the one rule)."""
    data = Path(path).read_bytes()
    if not data.startswith(JPEG_MAGIC):
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode(encoded: Sequence[torch.Tensor], pre: Preprocess, device: torch.device) -> list[torch.Tensor | str]:
    """JPEG bytes -> normalised ``[3, H, W]`` float32 pixels on ``device``, or an error message per file
    (a batch that fails is decoded one file at a time, so one bad file fails alone)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def one_call(items: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = decode_jpeg(list(items), mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    try:
        images: list[torch.Tensor | str] = list(one_call(encoded))
    except RuntimeError:
        images = []
        for item in encoded:
            try:
                images.append(one_call([item])[0])
            except RuntimeError as e:
                images.append(f"torchvision could not decode this JPEG ({str(e).splitlines()[0]}); "
                              "use --decoder pil")
    return [im if isinstance(im, str) else resize_normalise(im, pre) for im in images]


def resize_normalise(image: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 ``[3, h, w]`` -> the model's input: resized (no crop) like PIL, 8-bit rounded, normalised."""
    h, w = pre.image_size
    x = image.float()[None]
    if tuple(x.shape[-2:]) != (h, w):
        mode = MODES[pre.resample]
        x = F.interpolate(x, size=(h, w), mode=mode, antialias=mode != "nearest",
                          **({} if mode == "nearest" else {"align_corners": False}))
        x = x.round_().clamp_(0, 255)
    mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)[0]
