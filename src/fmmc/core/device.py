"""Which device a model runs on: one rule for every component (backbones, SAM, grounding, diffusion).

torch is imported only when a device is resolved, so the core stays torch-free at import.
"""

from __future__ import annotations

from typing import Any

FIX = "use --device cpu or --device auto (device='cpu' or 'auto' in Python)"


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when torch sees a GPU, else ``"mps"`` on Apple silicon, else
    ``"cpu"``. An explicit device this torch cannot use (``cuda`` on a CPU-only build or without a GPU, a
    missing ``cuda:N``, ``mps`` without MPS, a name torch does not know) is a one-line ValueError naming the fix."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available(torch) else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a torch device: use cpu, cuda, cuda:N, mps or auto") from e
    if parsed.type == "cuda":
        _check_cuda(torch, device, parsed.index)
    elif parsed.type == "mps" and not _mps_available(torch):
        raise ValueError(f"device {device!r} requested but MPS (the Apple-silicon GPU) is not available here; {FIX}")
    return device


def _check_cuda(torch: Any, device: str, index: int | None) -> None:
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise ValueError(f"device {device!r} requested but {why}; {FIX}")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ValueError(f"device {device!r} requested but torch sees {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}); "
                         "pick one of those, or use --device auto")


def _mps_available(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()
