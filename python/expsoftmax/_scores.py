"""Validating score arrays and laying them out for the core (flat, C-contiguous).

The core takes node scores as ``(B_n, I, C)`` and edge scores as ``(B_e, E_e, C, C)``
where ``B_n``, ``B_e`` are 1 or the broadcast batch size ``B`` and ``E_e`` is 1 or ``E``.
Inputs that are already contiguous are passed without copying; a batch axis that
broadcasts only partially (e.g. ``(4, 1)`` against ``(4, 3)``) is materialised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import numpy as np

from .errors import DTypeError, ShapeError
from .graph import Graph

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class WeightedEdges(NamedTuple):
    """Edge scores ``weight[..., e] * table[..., a, b]``: one ``(C, C)`` table scaled per
    edge (the contrast-sensitive Potts form of segmentation CRFs), never materialised as
    ``(E, C, C)``. Pass it (or a plain ``(weight, table)`` tuple) as ``s_e``; gradients come
    back in the same form. A ``-inf`` table entry stays forbidden whatever the weight."""

    weight: Any
    table: Any


@dataclass(frozen=True)
class Scores:
    """Scores ready for the core, plus what is needed to shape results."""

    batch_shape: tuple[int, ...]
    batch: int
    dtype: np.dtype
    s_n: np.ndarray  # flat
    s_e: np.ndarray  # flat
    node_batch: int
    edge_batch: int
    edge_tables: int
    classes: int
    s_n_shape: tuple[int, ...]  # as given
    s_e_shape: tuple[int, ...]  # as given
    lengths: Optional[np.ndarray]
    weight: Optional[np.ndarray] = None  # flat (weight_batch * E,) for WeightedEdges
    weight_batch: int = 1
    weight_shape: Optional[tuple[int, ...]] = None

    @property
    def dims(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.batch,
            self.node_batch,
            self.edge_batch,
            self.edge_tables,
            self.classes,
            self.weight_batch,
        )

    @property
    def weighted(self) -> bool:
        return self.weight is not None


def _float_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor given to the numpy API
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype not in _FLOATS:
        raise DTypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    return a


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy's broadcasting rule for shapes (``ValueError`` when they do not broadcast),
    in plain Python: a few microseconds instead of ``np.broadcast_shapes``' twenty, which
    counts on every call of a sub-millisecond training step."""
    nd = max((len(s) for s in shapes), default=0)
    out = [1] * nd
    for s in shapes:
        off = nd - len(s)
        for i, d in enumerate(s):
            o = out[off + i]
            if d == o or d == 1:
                continue
            if o != 1:
                raise ValueError(f"shapes {shapes} do not broadcast")
            out[off + i] = d
    return tuple(out)


def _batch_layout(
    a: np.ndarray, core_ndim: int, batch_shape: tuple[int, ...], batch: int
) -> tuple[np.ndarray, int]:
    """Flattens ``a`` (batch dims + ``core_ndim`` dims) to a contiguous buffer whose batch
    axis is 1 (shared by all items) or ``batch``."""
    own = a.shape[: a.ndim - core_ndim]
    core = a.shape[a.ndim - core_ndim :]
    if math.prod(own) == 1 and batch != 1:
        return np.ascontiguousarray(a).reshape(-1), 1
    if tuple(own) != tuple(batch_shape):
        a = np.broadcast_to(a, tuple(batch_shape) + tuple(core))
    return np.ascontiguousarray(a).reshape(-1), batch


def prepare(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    *,
    extra_batch: tuple[tuple[int, ...], ...] = (),
    lengths: Any = None,
) -> Scores:
    """Checks ``s_n`` (..., I, C) and ``s_e`` (..., E or 1, C, C) against ``graph``."""
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be an expsoftmax.Graph, got {type(graph).__name__}")
    sn = _float_array(s_n, "s_n")
    wt = None
    if isinstance(s_e, tuple):
        if len(s_e) != 2:
            raise ShapeError("weighted edge scores must be a (weight, table) pair")
        wt = _float_array(s_e[0], "edge weight")
        se = _float_array(s_e[1], "edge table")
        if wt.ndim < 1 or wt.shape[-1] != graph.num_edges:
            raise ShapeError(
                f"edge weight must have shape (..., E) with E = {graph.num_edges}, got {wt.shape}"
            )
        if se.ndim < 2:
            raise ShapeError(f"edge table must have shape (..., C, C), got {se.shape}")
        se = se[..., None, :, :]  # one table, shared by every edge
    else:
        se = _float_array(s_e, "s_e")
    if sn.ndim < 2:
        raise ShapeError(f"s_n must have shape (..., I, C), got {sn.shape}")
    if se.ndim < 2:
        raise ShapeError(f"s_e must have shape (..., E, C, C), got {se.shape}")
    if se.ndim == 2:  # a single (C, C) table shared by every edge
        se = se[None]
    n, c = sn.shape[-2:]
    if n != graph.num_nodes:
        raise ShapeError(
            f"s_n has {n} nodes (shape {sn.shape}) but the graph has {graph.num_nodes}"
        )
    if c == 0:
        raise ShapeError("s_n has C = 0 classes; need at least one")
    if se.shape[-2:] != (c, c):
        raise ShapeError(f"s_e must end in (C, C) = ({c}, {c}) to match s_n, got {se.shape}")
    e_tables = se.shape[-3]
    if e_tables not in (1, graph.num_edges):
        raise ShapeError(
            f"s_e has {e_tables} edge tables (shape {se.shape}); the graph has "
            f"{graph.num_edges} edges: give {graph.num_edges}, or 1 table shared by all"
        )
    shapes = [sn.shape[:-2], se.shape[:-3], *extra_batch]
    if wt is not None:
        shapes.append(wt.shape[:-1])
    lens = None
    if lengths is not None:
        lens = np.asarray(lengths)
        if lens.dtype == np.bool_ or not np.issubdtype(lens.dtype, np.integer):
            raise DTypeError(f"lengths must be integers, got dtype {lens.dtype}")
        shapes.append(lens.shape)
    try:
        batch_shape = broadcast_shapes(*shapes)
    except ValueError:
        raise ShapeError(
            "batch shapes do not broadcast: s_n "
            + str(sn.shape[:-2])
            + ", s_e "
            + str(se.shape[:-3])
            + "".join(f", {s}" for s in shapes[2:])
        ) from None
    batch = math.prod(batch_shape)
    dtype = np.result_type(sn.dtype, se.dtype, *(() if wt is None else (wt.dtype,)))
    sn_flat, nb = _batch_layout(sn.astype(dtype, copy=False), 2, batch_shape, batch)
    se_flat, eb = _batch_layout(se.astype(dtype, copy=False), 3, batch_shape, batch)
    if lens is not None:
        # Values (range, chain graph) are checked by the core.
        lens = np.ascontiguousarray(np.broadcast_to(lens, batch_shape), dtype=np.int64).reshape(-1)
    w_flat, wb = (None, 1)
    if wt is not None:
        w_flat, wb = _batch_layout(wt.astype(dtype, copy=False), 1, batch_shape, batch)
    return Scores(
        weight=w_flat,
        weight_batch=wb,
        weight_shape=None if wt is None else tuple(np.shape(s_e[0])),
        batch_shape=batch_shape,
        batch=batch,
        dtype=np.dtype(dtype),
        s_n=sn_flat,
        s_e=se_flat,
        node_batch=nb,
        edge_batch=eb,
        edge_tables=e_tables,
        classes=c,
        s_n_shape=tuple(np.shape(s_n)),
        s_e_shape=tuple(np.shape(s_e[1] if wt is not None else s_e)),
        lengths=lens,
    )


def labels(graph: Graph, y: Any) -> np.ndarray:
    """Checks gold labels ``y`` (..., I): integers (range is checked by the core)."""
    if hasattr(y, "detach") and hasattr(y, "cpu"):
        y = y.detach().cpu().numpy()
    a = np.asarray(y)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise DTypeError(f"labels y must be integers, got dtype {a.dtype}")
    if a.ndim < 1 or a.shape[-1] != graph.num_nodes:
        raise ShapeError(f"y must have shape (..., I) with I = {graph.num_nodes}, got {a.shape}")
    return a


def sum_to_shape(g: Any, shape: Any) -> Any:
    """Sums a gradient over the axes along which its input was broadcast (a numpy array
    or a torch tensor: both take ``sum(axis=, keepdims=)``)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead > 0 else g
    axes = tuple(k for k, (a, b) in enumerate(zip(shape, g.shape)) if a == 1 and b != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)
