"""Type stubs for the Rust extension ``expsoftmax._core``.

Scores travel as flat C-contiguous arrays (float32 or float64, borrowed without a copy);
``dims`` gives their shapes. ``method`` is a method name (or ``"auto"``) and ``options``
the keyword options as the user gave them: the core checks both, once. Results come back
as dicts of named flat arrays, reshaped by ``expsoftmax.api``. Errors are the classes of
``expsoftmax.errors``, ``MemoryError`` for requests that cannot be allocated, and
``KeyboardInterrupt`` on Ctrl-C.
"""

from typing import Any, Optional

import numpy as np
import numpy.typing as npt

#: (batch, node_batch, edge_batch, edge_tables, classes, weight_batch)
Dims = tuple[int, int, int, int, int, int]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Floats = np.ndarray  # float32 or float64, the scores' dtype

__version__: str

class GraphCore:
    """A validated graph; ``edges`` is flat ``(2E,)`` int64."""

    def __init__(self, num_nodes: int, edges: I64) -> None: ...
    @property
    def is_forest(self) -> bool: ...
    @property
    def is_chain(self) -> bool: ...
    @property
    def num_components(self) -> int: ...
    def junction_tree(self) -> tuple[list[list[int]], list[int]]:
        """``(cliques, parents)``: node ids per clique (upward order), parent clique or -1."""
    def default_edge_appearance(self) -> F64:
        """TRW's default edge appearance probabilities ``(E,)``."""

def infer(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
    method: str = "auto",
    options: Optional[dict[str, Any]] = None,
    want_edges: bool = True,
) -> dict[str, Any]:
    """``method``, ``log_z``, ``node_marginals``, ``edge_marginals`` (None unless
    ``want_edges``), ``iterations``, ``converged``, ``max_change``; for Gibbs also
    ``node_stderr``, ``log_z_stderr``, ``rhat``. Flat arrays."""

def loss_and_grad(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    y: I64,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
    item_weights: Optional[F64] = None,
    method: str = "auto",
    options: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """``method``, ``loss``, ``grad_node``, ``grad_edge``, ``grad_weight`` (None unless
    weighted), ``iterations``, ``converged``, ``max_change``. Flat arrays."""

def decode(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
    method: str = "auto",
    options: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """``method``, ``labels`` (flat int64, -1 at padded nodes), ``iterations``,
    ``converged``, ``max_change``."""

def sample(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    num_samples: int,
    seed: Optional[int] = None,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
    method: str = "auto",
    options: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """``method``, ``samples`` (flat ``(num_samples * B * I,)`` int64, -1 at padded
    nodes)."""

def marginals_jvp(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    t_n: npt.NDArray[np.float64],
    t_e: npt.NDArray[np.float64],
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
) -> dict[str, Any]:
    """Forests only: derivatives of log Z and the marginals in the direction ``(t_n (B*I*C,),
    t_e (B*E*C*C,))``. ``log_z``, ``d_log_z`` ``(B,)``, ``d_node``, ``d_edge`` (flat
    float64)."""

def topk(
    graph: GraphCore,
    s_n: Floats,
    s_e: Floats,
    dims: Dims,
    k: int,
    weight: Optional[Floats] = None,
    lengths: Optional[I64] = None,
) -> dict[str, Any]:
    """Forests only: ``labels`` (flat ``(k * B * I,)`` int64, best first, -1 at padded nodes
    and past the last labelling) and ``scores`` (flat ``(k * B,)`` float64)."""

def method_options(entry: str = "infer") -> dict[str, dict[str, Any]]:
    """``{method: {option: default}}`` accepted by ``entry``."""

def set_num_threads(n: int) -> None:
    """Threads the core uses, in [0, 1024] (0: one per core, or ``RAYON_NUM_THREADS``)."""

def get_num_threads() -> int: ...
def build_info() -> dict[str, Any]:
    """``version``, ``build_profile``, ``target``, ``simd``, ``cpu_avx2``, ``simd_env``,
    ``threads``, ``thread_source``, ``spin_us``, ``available_cores``."""
