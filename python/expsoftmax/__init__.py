"""expsoftmax: the exponential softmax over every labelling of a graph.

``P(y) = exp(s(y)) / Z`` with ``s(y) = Σ_i s_n[i, y_i] + Σ_(i,j) s_e[(i,j), y_i, y_j]``.
Exact on forests (chains, trees); loopy BP, tree-reweighted BP and mean field on graphs
with cycles (pixel grids); see :func:`infer`, :func:`loss_and_grad`,
:func:`decode`, :func:`sample`, :func:`topk`. The PyTorch loss lives in :mod:`expsoftmax.torch`
(imported on demand, so this package works without torch).
"""

from __future__ import annotations

from ._config import check_simd_env, check_spin_env, config, show_config
from ._core import __version__, get_num_threads, set_num_threads
from ._methods import METHODS, ConvergenceWarning
from ._scores import WeightedEdges
from .api import decode, infer, loss_and_grad, sample, topk
from .errors import DTypeError, InfeasibleError, NotForestError, OptionError, ShapeError
from .graph import Graph, JunctionTree
from .result import InferenceResult

check_simd_env()
check_spin_env()

__all__ = [
    "METHODS",
    "ConvergenceWarning",
    "WeightedEdges",
    "__version__",
    "config",
    "show_config",
    "DTypeError",
    "Graph",
    "InferenceResult",
    "InfeasibleError",
    "JunctionTree",
    "NotForestError",
    "OptionError",
    "ShapeError",
    "decode",
    "get_num_threads",
    "set_num_threads",
    "infer",
    "loss_and_grad",
    "sample",
    "topk",
]
