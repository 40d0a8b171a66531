"""The graph whose labellings the exponential softmax ranges over."""

from __future__ import annotations

import itertools
import operator
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from .errors import DTypeError, ShapeError

_KEYS = itertools.count()
#: Live graphs by key (weak: a graph is not kept alive by being named).
_LIVE: weakref.WeakValueDictionary[int, Graph] = weakref.WeakValueDictionary()


def _as_int_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise DTypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    return a


@dataclass(frozen=True)
class JunctionTree:
    """A graph's junction tree for a number of classes (see :meth:`Graph.junction_tree`).

    Attributes:
        width: largest clique size minus one.
        max_states: entries of the largest clique table, ``C ** (width + 1)``; exact
            inference runs when it is at most the ``max_states`` option (default 2**22).
        cliques: node ids (int64 arrays) of each clique, children before parents.
        parents: ``(K,)`` int64, the parent clique of each clique, -1 for a root.
    """

    width: int
    max_states: int
    cliques: list
    parents: np.ndarray


class Graph:
    """A graph of ``num_nodes`` nodes and directed edges ``edges`` (int array ``(E, 2)``).

    Edge ``e`` joins ``edges[e, 0]`` to ``edges[e, 1]``; its score table ``s_e[e, a, b]``
    scores label ``a`` at ``edges[e, 0]`` and ``b`` at ``edges[e, 1]``.
    Graphs are immutable and picklable; derived structures (the rooted forest used by exact
    inference) are built once, on first use.
    """

    __slots__ = ("_num_nodes", "_edges", "_core", "_grid", "_cache", "_key", "__weakref__")

    def __init__(self, num_nodes: int, edges: Any) -> None:
        if isinstance(num_nodes, (bool, np.bool_)):
            raise DTypeError(f"num_nodes must be an integer, got {num_nodes!r}")
        try:
            n = operator.index(num_nodes)
        except TypeError:
            raise DTypeError(
                f"num_nodes must be an integer, got {type(num_nodes).__name__}"
            ) from None
        if n <= 0:
            raise ValueError(f"a graph needs at least one node, got num_nodes = {n}")
        e = _as_int_array(edges, "edges")
        if e.size == 0:
            e = np.zeros((0, 2), dtype=np.int64)
        if e.ndim != 2 or e.shape[1] != 2:
            raise ShapeError(f"edges must have shape (E, 2), got {e.shape}")
        e = np.array(e, dtype=np.int64, order="C", copy=True)
        e.setflags(write=False)
        core = _core.GraphCore(n, e.reshape(-1))
        object.__setattr__(self, "_num_nodes", n)
        object.__setattr__(self, "_edges", e)
        object.__setattr__(self, "_core", core)
        object.__setattr__(self, "_grid", None)
        # Derived data (e.g. TRW edge appearance probabilities), computed on demand.
        object.__setattr__(self, "_cache", {})
        # A process-wide number naming this graph to the torch custom operators (which
        # take only tensors, numbers and strings); see expsoftmax._ops.
        key = next(_KEYS)
        object.__setattr__(self, "_key", key)
        _LIVE[key] = self

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def chain(cls, n: int) -> Graph:
        """The chain ``0 - 1 - ... - (n-1)`` with edges ``(i, i+1)``."""
        n = operator.index(n)
        if n <= 0:
            raise ValueError(f"a chain needs at least one node, got n = {n}")
        i = np.arange(n - 1, dtype=np.int64)
        return cls(n, np.stack([i, i + 1], axis=1))

    @classmethod
    def grid(cls, height: int, width: int) -> Graph:
        """The 4-neighbour grid; node ``r * width + c``. Edges: first every horizontal
        edge ``(r, c) -> (r, c+1)`` in row-major order, then every vertical edge
        ``(r, c) -> (r+1, c)`` in row-major order."""
        h, w = operator.index(height), operator.index(width)
        if h <= 0 or w <= 0:
            raise ValueError(f"a grid needs positive height and width, got {h} x {w}")
        idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
        horiz = np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], axis=1)
        vert = np.stack([idx[:-1, :].ravel(), idx[1:, :].ravel()], axis=1)
        g = cls(h * w, np.concatenate([horiz, vert]))
        object.__setattr__(g, "_grid", (h, w))
        return g

    @classmethod
    def tree(cls, parents: Any) -> Graph:
        """A forest from a parent array: ``parents[i] = -1`` for a root, otherwise the
        edge ``(parents[i], i)``."""
        p = _as_int_array(parents, "parents")
        if p.ndim != 1 or p.size == 0:
            raise ShapeError(f"parents must be a non-empty 1-D array, got shape {p.shape}")
        n = p.shape[0]
        bad = np.flatnonzero((p < -1) | (p >= n))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"parents[{i}] = {int(p[i])} is not -1 or a node in [0, {n})")
        child = np.flatnonzero(p >= 0)
        g = cls(n, np.stack([p[child].astype(np.int64), child], axis=1))
        if not g.is_forest:
            raise ValueError("parents describe a cycle, not a tree or forest")
        return g

    # ---- attributes -----------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    @property
    def num_edges(self) -> int:
        return int(self._edges.shape[0])

    @property
    def edges(self) -> np.ndarray:
        """Read-only int64 array ``(E, 2)``."""
        return self._edges

    @property
    def is_forest(self) -> bool:
        """True when the graph has no cycle, so exact inference applies."""
        return bool(self._core.is_forest)

    @property
    def is_chain(self) -> bool:
        """True for the canonical chain (edges ``(i, i+1)``), which accepts ``lengths``."""
        return bool(self._core.is_chain)

    def default_edge_appearance(self) -> np.ndarray:
        """Edge appearance probabilities of a mixture of spanning trees (float64, ``(E,)``):
        every edge in ``(0, 1]`` and inside the spanning-tree polytope, so TRW's log Z is an
        upper bound. Grids use the two "combs" (all rows plus the first column, all columns
        plus the first row), each with weight 1/2; other graphs use spanning forests chosen
        greedily to cover every edge (Kruskal on coverage counts, ties broken by a fixed
        stream), averaged. Computed by the core, which uses the same default."""
        if "rho" not in self._cache:
            rho = self._core.default_edge_appearance()
            rho.setflags(write=False)
            self._cache["rho"] = rho
        return self._cache["rho"]

    def junction_tree(self, num_classes: int) -> JunctionTree:
        """What exact inference on this graph costs with ``num_classes`` labels: the
        junction tree ``method="exact"`` uses (a forest's is its edges). Raises
        :class:`NotForestError` when no elimination order tried keeps cliques storable."""
        c = operator.index(num_classes)
        if c < 1:
            raise ValueError(f"num_classes must be >= 1, got {c}")
        if "junction" not in self._cache:
            self._cache["junction"] = self._core.junction_tree()
        cliques, parents = self._cache["junction"]
        width = max(len(k) for k in cliques) - 1
        return JunctionTree(
            width=width,
            max_states=c ** (width + 1),
            cliques=[np.array(k, dtype=np.int64) for k in cliques],
            parents=np.array(parents, dtype=np.int64),
        )

    @property
    def grid_shape(self) -> tuple[int, int] | None:
        """``(height, width)`` for graphs made by :meth:`grid`, else ``None``."""
        return self._grid

    # ---- immutability, pickling, comparison ---------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Graph is immutable")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        if self._grid is not None:
            return (Graph.grid, self._grid)
        return (Graph, (self._num_nodes, np.array(self._edges)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self._num_nodes == other._num_nodes and np.array_equal(self._edges, other._edges)

    def __hash__(self) -> int:
        return hash((self._num_nodes, self._edges.tobytes()))

    def __repr__(self) -> str:
        kind = f", grid {self._grid[0]}x{self._grid[1]}" if self._grid else ""
        return f"Graph(num_nodes={self._num_nodes}, num_edges={self.num_edges}{kind})"
