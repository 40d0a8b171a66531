"""Type stubs for the Rust extension ``expsoftmax._core``.

Scores travel as flat C-contiguous arrays (float32 or float64, borrowed without a copy);
``dims`` gives their shapes. Results come back flat and are reshaped by ``expsoftmax.api``.
"""

from typing import Optional

import numpy as np
import numpy.typing as npt

#: (batch, node_batch, edge_batch, edge_tables, classes, weight_batch)
Dims = tuple[int, int, int, int, int, int]
#: (method, max_iter, tol, damping, schedule, edge_appearance (E,) float64 or None)
LoopyArgs = tuple[str, int, float, float, str, Optional[npt.NDArray[np.float64]]]
#: (num_samples, burn_in, thin, num_chains, seed, init_gold, ais_steps, ais_runs)
GibbsArgs = tuple[int, int, int, int, int, bool, int, int]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Floats = np.ndarray  # float32 or float64, the scores' dtype

class ShapeError(ValueError): ...
class NotForestError(ValueError): ...
class InfeasibleError(ValueError): ...

class GraphCore:
    """A validated graph; ``edges`` is flat ``(2E,)`` int64."""

    def __init__(self, num_nodes: int, edges: I64) -> None: ...
    @property
    def is_forest(self) -> bool: ...
    @property
    def is_chain(self) -> bool: ...
    @property
    def num_components(self) -> int: ...

def marginals(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
    want_edges: bool = True,
    options: Optional[LoopyArgs] = None,
) -> tuple[Floats, Floats, Optional[Floats], npt.NDArray[np.uint32], npt.NDArray[np.bool_], F64]:
    """Exact (``options=None``) or loopy: ``(log_z, node, edge or None, iterations,
    converged, max_change)``, flat."""

def loss_and_grad(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    y: I64,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
    item_weights: Optional[F64] = None,
    options: Optional[LoopyArgs] = None,
) -> tuple[
    Floats, Floats, Floats, Optional[Floats], npt.NDArray[np.uint32], npt.NDArray[np.bool_], F64
]:
    """``(loss, grad_n, grad_e, grad_weight or None, iterations, converged, max_change)``;
    gradients of ``Σ_b item_weights[b] * loss_b``, summed over broadcast axes."""

def decode(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
    options: Optional[LoopyArgs] = None,
) -> tuple[I64, npt.NDArray[np.uint32], npt.NDArray[np.bool_], F64]:
    """``(labels (B*I,), iterations, converged, max_change)``; −1 at padded nodes."""

def exact_sample(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    num_samples: int,
    seed: int,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
) -> I64:
    """Exact samples, flat ``(num_samples * B * I,)``; −1 at padded nodes."""

def gibbs_infer(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    options: GibbsArgs,
    weight: Optional[Floats] = None,
) -> tuple[F64, F64, F64, F64, F64, F64]:
    """``(log_z, log_z_stderr, node, node_stderr, edge, rhat)``, flat float64."""

def gibbs_loss_and_grad(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    y: I64,
    options: GibbsArgs,
    weight: Optional[Floats] = None,
    item_weights: Optional[F64] = None,
) -> tuple[Floats, Floats, Floats, Optional[Floats], F64]:
    """``(loss, grad_n, grad_e, grad_weight or None, rhat)``."""

def gibbs_labels(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    options: GibbsArgs,
    num_samples: int,
    weight: Optional[Floats] = None,
) -> I64:
    """``num_samples = 0``: the best sample per item (decode); else samples, flat."""

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
