"""Result objects: small frozen records with named fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class InferenceResult:
    """What :func:`expsoftmax.infer` returns. ``...`` is the batch shape.

    Attributes:
        log_z: ``(...)`` log partition function (exact, or the method's estimate).
        node_marginals: ``(..., I, C)`` marginals (beliefs for approximate methods).
        edge_marginals: ``(..., E, C, C)`` pair marginals, one table per edge even when the
            edge scores were shared.
        converged: ``(...)`` bool; always True for exact inference.
        iterations: ``(...)`` int; passes or iterations used (1 for exact inference).
        max_change: ``(...)`` final largest message change (0 for exact inference).
        method: the method that produced the result ("exact", ...).
    """

    log_z: np.ndarray
    node_marginals: np.ndarray
    edge_marginals: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    max_change: np.ndarray
    method: str
    node_stderr: Optional[np.ndarray] = None
    log_z_stderr: Optional[np.ndarray] = None
    rhat: Optional[np.ndarray] = None
