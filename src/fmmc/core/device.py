"""Which device a model runs on: one rule for every component (backbones, SAM, grounding, diffusion).

torch is imported only when a device is resolved, so the core stays torch-free at import.
"""

from __future__ import annotations


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when torch sees a GPU, else ``"mps"`` on Apple silicon, else
    ``"cpu"``; an explicit CUDA device on a machine without one is a clear error."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return device
