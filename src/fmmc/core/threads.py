"""How many CPU threads torch uses: one rule for every command that runs a model.

``fmmc --threads N`` (or ``--threads N`` after the subcommand) wins; else ``$FMMC_THREADS``; else torch's
own default (``OMP_NUM_THREADS`` or one per core), capped at the CPUs this process may actually run on
(``os.sched_getaffinity``: a container's or ``taskset``'s share, not the whole machine), so a shared
machine is not oversubscribed. Nothing here runs at import; torch is imported only when threads are applied.

    >>> from fmmc.core.threads import configure_threads
    >>> configure_threads(2)  # doctest: +SKIP
    2
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)
THREADS_ENV = "FMMC_THREADS"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else every CPU)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def requested_threads(threads: int | None = None) -> int | None:
    """The thread count asked for: ``threads``, else ``$FMMC_THREADS``; None when neither is set."""
    if threads is not None:
        return _positive(threads, "--threads")
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        return _positive(int(text), f"${THREADS_ENV}")
    except ValueError as e:
        raise ValueError(f"${THREADS_ENV}={text!r}: expected a whole number of threads >= 1 (or unset it)") from e


def _positive(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} {n!r}: expected a whole number of threads >= 1")
    return n


def configure_threads(threads: int | None = None) -> int:
    """Apply the thread rule (module docstring) with ``torch.set_num_threads``; returns the count set.

    Inter-op threads are lowered to match too where torch still allows it (only before its first parallel
    work in a process; later it keeps its pool, which is harmless)."""
    import torch

    n = requested_threads(threads)
    if n is None:
        n = min(torch.get_num_threads(), available_cpus())
    elif n > available_cpus():
        log.warning("%d threads requested but this process may use %d CPU(s): expect oversubscription",
                    n, available_cpus())
    torch.set_num_threads(n)
    _lower_interop(torch, n)
    log.debug("torch threads: %d (interop %d)", n, torch.get_num_interop_threads())
    return n


def _lower_interop(torch: Any, n: int) -> None:
    try:
        if torch.get_num_interop_threads() > n:
            torch.set_num_interop_threads(n)
    except RuntimeError:  # parallel work already started (a library caller, a test): keep torch's pool
        pass
