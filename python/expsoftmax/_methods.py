"""The inference methods and their options, as the core defines them."""

from __future__ import annotations

from typing import Any

from . import _core


class ConvergenceWarning(RuntimeWarning):
    """A loopy method stopped at ``max_iter`` before its messages settled below ``tol``, or
    Gibbs chains disagree (R-hat > 1.1)."""


#: Methods and the option names (with defaults) each accepts in :func:`expsoftmax.infer`
#: (``seed=None`` draws fresh entropy; ``edge_appearance=None`` is the spanning-tree
#: mixture). The table is the core's, so it lists exactly what the core accepts; other
#: entry points accept a subset (``expsoftmax._core.method_options(entry)``).
METHODS: dict[str, dict[str, Any]] = _core.method_options("infer")
