"""What this installation is and what it runs: :func:`config` and :func:`show_config`."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any, Optional

import numpy as np

from . import _core

#: Values ``EXPSOFTMAX_SIMD`` may take: ``auto`` (or unset) picks the best path the CPU has;
#: ``avx2`` stops at AVX2 (no AVX-512 kernels); ``baseline`` forces the portable kernels.
SIMD_CHOICES = ("auto", "avx2", "baseline")


#: The largest ``EXPSOFTMAX_SPIN_US`` accepted (one second).
SPIN_MAX_US = 1_000_000


def check_simd_env() -> None:
    """Refuses a value of ``EXPSOFTMAX_SIMD`` the core would not understand (it would
    otherwise be ignored)."""
    v = os.environ.get("EXPSOFTMAX_SIMD")
    if v is not None and v.strip().lower() not in ("",) + SIMD_CHOICES:
        raise ValueError(f"EXPSOFTMAX_SIMD must be one of {SIMD_CHOICES} or unset, got {v!r}")


def check_spin_env() -> None:
    """Refuses a value of ``EXPSOFTMAX_SPIN_US`` (how long, in microseconds, the pool's
    threads stay awake after they last found work; ``0``: they sleep almost at once) that is
    not an integer from 0 to :data:`SPIN_MAX_US` (the core would otherwise ignore it); empty
    means unset."""
    v = os.environ.get("EXPSOFTMAX_SPIN_US")
    if v is None:
        return
    t = v.strip()
    if t and not (t.isascii() and t.isdigit() and int(t) <= SPIN_MAX_US):
        raise ValueError(
            f"EXPSOFTMAX_SPIN_US must be an integer from 0 to {SPIN_MAX_US} (microseconds) "
            f"or unset, got {v!r}"
        )


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def config() -> dict[str, Any]:
    """The installation as a dict: ``version``, ``build_profile``, ``target``, ``simd``
    (the kernels' path chosen at run time: ``"avx512"``, ``"avx2"`` or ``"baseline"``),
    ``cpu_avx2``, ``simd_env`` (``EXPSOFTMAX_SIMD``), ``threads`` and ``thread_source``
    (``"set_num_threads"``, ``"RAYON_NUM_THREADS"`` or ``"available cores"``, which follows
    the process's CPU affinity and cgroup quota), ``spin_us`` (how long the pool's threads
    stay awake after they last found work: ``EXPSOFTMAX_SPIN_US``, default 1000),
    ``available_cores``, ``python``,
    ``numpy`` and ``torch`` (None when not installed; torch is not imported)."""
    info = dict(_core.build_info())
    info["python"] = platform.python_version()
    info["numpy"] = np.__version__
    info["torch"] = _version("torch")
    return info


def show_config(file: Any = None) -> None:
    """Prints :func:`config`, one ``name: value`` line each (to ``file``, default stdout)."""
    out = file if file is not None else sys.stdout
    info = config()
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}} : {v}", file=out)
