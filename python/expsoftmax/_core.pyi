"""Type stubs for the Rust extension ``expsoftmax._core`` (flat arrays in and out)."""

from typing import Optional

import numpy as np
import numpy.typing as npt

Dims = tuple[int, int, int, int, int]  # (batch, node_batch, edge_batch, edge_tables, classes)

class ShapeError(ValueError): ...
class NotForestError(ValueError): ...
class InfeasibleError(ValueError): ...

class GraphCore:
    def __init__(self, num_nodes: int, edges: npt.NDArray[np.int64]) -> None: ...
    @property
    def is_forest(self) -> bool: ...
    @property
    def is_chain(self) -> bool: ...
    @property
    def num_components(self) -> int: ...

def exact_marginals(
    graph: GraphCore,
    s_n: np.ndarray,
    s_e: np.ndarray,
    dims: Dims,
    lengths: Optional[npt.NDArray[np.int64]] = None,
    want_edges: bool = True,
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]: ...
def exact_loss_and_grad(
    graph: GraphCore,
    s_n: np.ndarray,
    s_e: np.ndarray,
    dims: Dims,
    y: npt.NDArray[np.int64],
    lengths: Optional[npt.NDArray[np.int64]] = None,
    weights: Optional[npt.NDArray[np.float64]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def exact_decode(
    graph: GraphCore,
    s_n: np.ndarray,
    s_e: np.ndarray,
    dims: Dims,
    lengths: Optional[npt.NDArray[np.int64]] = None,
) -> npt.NDArray[np.int64]: ...
def exact_sample(
    graph: GraphCore,
    s_n: np.ndarray,
    s_e: np.ndarray,
    dims: Dims,
    num_samples: int,
    seed: int,
    lengths: Optional[npt.NDArray[np.int64]] = None,
) -> npt.NDArray[np.int64]: ...
