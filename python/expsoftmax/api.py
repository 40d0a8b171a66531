"""The numpy API: ``infer``, ``loss_and_grad``, ``decode`` and ``sample``.

Each validates and lays out its inputs (``_scores``), picks a method, calls the core once
(the GIL is released there) and shapes the flat results. No per-node Python loops.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core
from ._scores import Scores, labels, prepare, sum_to_shape
from .errors import NotForestError, OptionError
from .graph import Graph
from .result import InferenceResult

#: Methods and the option names each accepts (keyword arguments).
METHODS: dict[str, frozenset[str]] = {
    "exact": frozenset(),
}

LOOPY_METHODS = ("bp", "trw", "mean_field", "gibbs")


def _resolve(graph: Graph, method: str, options: dict[str, Any]) -> str:
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be an expsoftmax.Graph, got {type(graph).__name__}")
    if not isinstance(method, str):
        raise OptionError(f"method must be a string, got {type(method).__name__}")
    if method == "auto":
        if graph.is_forest:
            method = "exact"
        else:
            raise NotForestError(
                "the graph has a cycle and no loopy method is available in this build; "
                f"the loopy methods are {', '.join(LOOPY_METHODS)}"
            )
    if method not in METHODS:
        known = ", ".join(["auto", *METHODS])
        raise OptionError(f"unknown method {method!r}; known methods: {known}")
    unknown = sorted(set(options) - METHODS[method])
    if unknown:
        allowed = ", ".join(sorted(METHODS[method])) or "none"
        raise OptionError(
            f"unknown option(s) {', '.join(unknown)} for method {method!r} (accepted: {allowed})"
        )
    if method == "exact" and not graph.is_forest:
        raise NotForestError(
            "method='exact' needs a forest, but the graph has a cycle; use a loopy method: "
            + ", ".join(f"method={m!r}" for m in LOOPY_METHODS)
        )
    return method


def _shape_out(flat: np.ndarray, sc: Scores, tail: tuple[int, ...]) -> np.ndarray:
    return flat.reshape(sc.batch_shape + tail)


def infer(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    method: str = "auto",
    *,
    lengths: Any = None,
    **options: Any,
) -> InferenceResult:
    """log Z and marginals of ``P(y) ∝ exp(s(y))`` over all labellings of ``graph``.

    Args:
        graph: the graph.
        s_n: node scores ``(..., I, C)``, float32 or float64.
        s_e: edge scores ``(..., E, C, C)``; the edge axis may be 1 (one shared table) and
            batch axes broadcast with those of ``s_n``. ``-inf`` forbids a label pair.
        method: ``"auto"`` (exact on forests) or ``"exact"``.
        lengths: for chains, ``(...)`` number of real nodes per item; the rest is padding.

    Returns:
        :class:`InferenceResult`, arrays in the scores' dtype.
    """
    method = _resolve(graph, method, options)
    sc = prepare(graph, s_n, s_e, lengths=lengths)
    log_z, node, edge = _core.exact_marginals(
        graph._core, sc.s_n, sc.s_e, sc.dims, sc.lengths, True
    )
    c, e = sc.classes, graph.num_edges
    return InferenceResult(
        log_z=_shape_out(log_z, sc, ()),
        node_marginals=_shape_out(node, sc, (graph.num_nodes, c)),
        edge_marginals=_shape_out(edge, sc, (e, c, c)),
        converged=np.ones(sc.batch_shape, dtype=bool),
        iterations=np.ones(sc.batch_shape, dtype=np.int64),
        max_change=np.zeros(sc.batch_shape, dtype=sc.dtype),
        method=method,
    )


def loss_and_grad(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    y: Any,
    method: str = "auto",
    *,
    lengths: Any = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The loss ``log Z − s(y)`` per item and its gradients.

    Args:
        y: gold labels ``(..., I)``, integers in ``[0, C)`` (padded positions ignored).
        Other arguments as in :func:`infer`.

    Returns:
        ``(loss, grad_n, grad_e)``: ``loss`` ``(...)``; ``grad_n`` shaped like ``s_n`` and
        ``grad_e`` shaped like ``s_e`` (summed over axes that were broadcast), each equal to
        marginals − gold indicators, i.e. the gradient of ``loss.sum()``. A gold labelling
        the scores forbid has loss ``+inf``.
    """
    return _loss_and_grad(graph, s_n, s_e, y, method, lengths, options, None)


def _loss_and_grad(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    y: Any,
    method: str,
    lengths: Any,
    options: dict[str, Any],
    weights: Optional[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`loss_and_grad` with per-item weights on the gradient (``Σ w_b loss_b``)."""
    method = _resolve(graph, method, options)
    yl = labels(graph, y)
    sc = prepare(graph, s_n, s_e, extra_batch=(yl.shape[:-1],), lengths=lengths)
    yb = np.ascontiguousarray(
        np.broadcast_to(yl, sc.batch_shape + (graph.num_nodes,)), dtype=np.int64
    ).reshape(-1)
    if weights is not None:
        weights = np.ascontiguousarray(
            np.broadcast_to(weights, sc.batch_shape), dtype=np.float64
        ).reshape(-1)
    loss, gn, ge = _core.exact_loss_and_grad(
        graph._core, sc.s_n, sc.s_e, sc.dims, yb, sc.lengths, weights
    )
    c = sc.classes
    lead_n = (1,) if sc.node_batch == 1 else sc.batch_shape
    gn = gn.reshape(lead_n + (graph.num_nodes, c))
    gn = gn.reshape(sc.s_n_shape) if sc.node_batch == 1 else sum_to_shape(gn, sc.s_n_shape)
    eshape = (sc.edge_tables, c, c)
    ge = ge.reshape(((1,) if sc.edge_batch == 1 else sc.batch_shape) + eshape)
    ge = ge.reshape(sc.s_e_shape) if sc.edge_batch == 1 else sum_to_shape(ge, sc.s_e_shape)
    return loss.reshape(sc.batch_shape), gn, ge


def decode(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    method: str = "auto",
    *,
    lengths: Any = None,
    **options: Any,
) -> np.ndarray:
    """The MAP labelling ``argmax_y s(y)``, int64 ``(..., I)`` (ties: smallest labels;
    padded chain positions are -1)."""
    method = _resolve(graph, method, options)
    sc = prepare(graph, s_n, s_e, lengths=lengths)
    y = _core.exact_decode(graph._core, sc.s_n, sc.s_e, sc.dims, sc.lengths)
    return y.reshape(sc.batch_shape + (graph.num_nodes,))


def sample(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    num_samples: int,
    seed: Optional[int] = None,
    method: str = "auto",
    *,
    lengths: Any = None,
    **options: Any,
) -> np.ndarray:
    """Exact samples from ``P``: int64 ``(num_samples, ..., I)``.

    Sample ``s`` of batch item ``b`` depends only on ``(seed, b, s)``, so the same seed
    gives the same samples whatever the number of threads. ``seed=None`` draws fresh
    entropy. Padded chain positions are -1.
    """
    method = _resolve(graph, method, options)
    ns = int(num_samples)
    if ns < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    sc = prepare(graph, s_n, s_e, lengths=lengths)
    y = _core.exact_sample(graph._core, sc.s_n, sc.s_e, sc.dims, ns, seed % (1 << 64), sc.lengths)
    return y.reshape((ns,) + sc.batch_shape + (graph.num_nodes,))
