"""Which precision the frozen backbone runs in: ``fp32``, ``bf16``, ``fp16``, or ``auto``.

``bf16``/``fp16`` cast the frozen backbone's weights (and its input) to that type, rather than autocasting
every op: matmuls then run natively on hardware that has them (CUDA; CPUs with AVX512-BF16 or AMX), with no
per-op casts. Pooling and everything after it stay in fp32. A backbone that is being fine-tuned
(``mode=full``) keeps fp32 weights under autocast instead, so the optimizer never updates bf16 weights.

``auto`` picks bf16 where the device has native bf16 (a CUDA GPU that supports it, a CPU whose flags show
``avx512_bf16`` or ``amx_bf16``) and fp32 elsewhere, and says why (:func:`resolve_dtype`). The resolved
dtype is part of the feature-cache key.

    >>> resolve_dtype("fp32", "cpu")
    ('fp32', 'asked for fp32')
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = (*DTYPES, "auto")


def cpu_bf16_flags() -> list[str]:
    """The CPU flags that mean native bf16 matmuls (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return []


def native_bf16(device: str | torch.device) -> tuple[bool, str]:
    """(True, why) when ``device`` runs bf16 matmuls natively."""
    dev = torch.device(device)
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, f"{torch.cuda.get_device_name(dev) if ok else 'this GPU'} {'has' if ok else 'lacks'} bf16"
    if dev.type == "cpu":
        flags = cpu_bf16_flags()
        return (True, f"CPU has {' and '.join(flags)}") if flags else (False, "CPU has no AVX512-BF16 / AMX")
    return False, f"no native bf16 known for {dev.type}"


def resolve_dtype(dtype: str, device: str | torch.device) -> tuple[str, str]:
    """(the dtype to run, why): ``auto`` becomes bf16 on native-bf16 hardware, else fp32."""
    if dtype not in CHOICES:
        raise ValueError(f"dtype {dtype!r}: choose one of {list(CHOICES)}")
    if dtype != "auto":
        return dtype, f"asked for {dtype}"
    ok, why = native_bf16(device)
    return ("bf16", f"auto: {why}") if ok else ("fp32", f"auto: {why}, so fp32")
