"""The numpy API: ``infer``, ``loss_and_grad``, ``decode`` and ``sample``.

Each validates and lays out its inputs (``_scores``), resolves the method and its options
(``_methods``), calls the core once (the GIL is released there) and shapes the flat
results. No per-node Python loops.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np

from . import _core
from ._methods import ConvergenceWarning, Resolved, resolve
from ._scores import Scores, WeightedEdges, labels, prepare, sum_to_shape
from .graph import Graph
from .result import InferenceResult


def _warn_unconverged(r: Resolved, converged: np.ndarray, max_change: np.ndarray) -> None:
    if r.method == "gibbs":
        if not bool(np.all(converged)):
            warnings.warn(
                f"Gibbs chains disagree: R-hat up to {float(np.max(max_change)):.3g} > 1.1 "
                "(between-chain diagnostic); raise burn_in or num_samples.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return
    if r.loopy and not bool(np.all(converged)):
        bad = int(np.size(converged) - np.count_nonzero(converged))
        warnings.warn(
            f"method={r.method!r} did not converge for {bad} of {np.size(converged)} item(s) "
            f"within max_iter={r.options['max_iter']} (largest final change "
            f"{float(np.max(max_change)):.3g} > tol={r.options['tol']}); results are from the "
            "last iteration. Raise max_iter, add damping, or try another schedule.",
            ConvergenceWarning,
            stacklevel=3,
        )


def _lengths(lengths: Any, mask: Any) -> Any:
    """``mask`` (..., I) bool, True on real positions, as lengths: chains pad at the end,
    so each row must be a run of True followed by False."""
    if mask is None:
        return lengths
    if lengths is not None:
        raise ValueError("give lengths or mask, not both")
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
    n = m.sum(-1)
    if m.ndim < 1 or not np.array_equal(m, np.arange(m.shape[-1]) < n[..., None]):
        raise ValueError("mask must be True on a prefix of each chain and False after it")
    return n


def _shape(flat: np.ndarray, sc: Scores, tail: tuple[int, ...] = ()) -> np.ndarray:
    return flat.reshape(sc.batch_shape + tail)


def infer(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    method: str = "auto",
    *,
    lengths: Any = None,
    mask: Any = None,
    **options: Any,
) -> InferenceResult:
    """log Z and marginals of ``P(y) ∝ exp(s(y))`` over all labellings of ``graph``.

    Args:
        graph: the graph.
        s_n: node scores ``(..., I, C)``, float32 or float64.
        s_e: edge scores ``(..., E, C, C)``; the edge axis may be 1 (one shared table) and
            batch axes broadcast with those of ``s_n``. Or :class:`WeightedEdges`
            ``(weight (..., E), table (..., C, C))``. ``-inf`` forbids a label or pair.
        method: ``"auto"`` (exact on forests, ``"bp"`` otherwise), ``"exact"``, ``"bp"``
            (loopy BP, Bethe log Z), ``"trw"`` (tree-reweighted BP, upper bound on log Z)
            or ``"mean_field"`` (lower bound).
        lengths: for chains with exact inference, ``(...)`` real lengths (rest is padding);
            or ``mask`` ``(..., I)`` bool, True on the real prefix.
        **options: for the loopy methods ``max_iter`` (100), ``tol`` (1e-6), ``damping``
            (0.0), ``schedule`` (``"checkerboard"`` or ``"parallel"``); for ``"trw"`` also
            ``edge_appearance`` (float or ``(E,)``; default from spanning trees). For
            ``"gibbs"``: ``num_samples`` (1000 kept sweeps per chain), ``burn_in`` (100),
            ``thin`` (1), ``num_chains`` (4), ``seed``, ``init`` (``"random"``; ``"gold"`` in
            ``loss_and_grad``), ``ais_steps`` (100; log Z by annealed importance sampling,
            0 skips it) and ``ais_runs`` (16). Gibbs results also carry ``node_stderr``
            (batch means), ``log_z_stderr`` and ``rhat`` (Gelman-Rubin, max over nodes).

    Returns:
        :class:`InferenceResult`, arrays in the scores' dtype. Loopy methods that do not
        converge emit a :class:`ConvergenceWarning` and report ``converged=False``.
    """
    r = resolve(graph, method, options, "infer")
    lengths = _lengths(lengths, mask)
    sc = prepare(graph, s_n, s_e, lengths=lengths)
    if r.method == "gibbs":
        return _gibbs_infer(graph, sc, r)
    log_z, node, edge, iters, conv, change = _core.marginals(
        graph._core, sc.s_n, sc.s_e, sc.dims, sc.weight, sc.lengths, True, r.core_args(graph)
    )
    _warn_unconverged(r, conv, change)
    c = sc.classes
    return InferenceResult(
        log_z=_shape(log_z, sc),
        node_marginals=_shape(node, sc, (graph.num_nodes, c)),
        edge_marginals=_shape(edge, sc, (graph.num_edges, c, c)),
        converged=_shape(conv, sc),
        iterations=_shape(iters.astype(np.int64), sc),
        max_change=_shape(change.astype(sc.dtype), sc),
        method=r.method,
    )


def _gibbs_infer(graph: Graph, sc: Scores, r: Resolved) -> InferenceResult:
    args = r.core_args(graph)
    log_z, lz_se, node, node_se, edge, rhat = _core.gibbs_infer(
        graph._core, sc.s_n, sc.s_e, sc.dims, args, sc.weight
    )
    conv = rhat < 1.1
    _warn_unconverged(r, conv, rhat)
    c, dt = sc.classes, sc.dtype
    o = r.options
    return InferenceResult(
        log_z=_shape(log_z.astype(dt), sc),
        node_marginals=_shape(node.astype(dt), sc, (graph.num_nodes, c)),
        edge_marginals=_shape(edge.astype(dt), sc, (graph.num_edges, c, c)),
        converged=_shape(conv, sc),
        iterations=np.full(sc.batch_shape, o["burn_in"] + o["num_samples"] * o["thin"]),
        max_change=np.full(sc.batch_shape, np.nan, dtype=dt),
        method="gibbs",
        node_stderr=_shape(node_se.astype(dt), sc, (graph.num_nodes, c)),
        log_z_stderr=_shape(lz_se.astype(dt), sc),
        rhat=_shape(rhat, sc),
    )


def loss_and_grad(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    y: Any,
    method: str = "auto",
    *,
    lengths: Any = None,
    mask: Any = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """The loss ``log Z − s(y)`` per item and its gradients.

    Args:
        y: gold labels ``(..., I)``, integers in ``[0, C)`` (padded positions ignored).
        Other arguments as in :func:`infer`; with a loopy method log Z is its estimate
        (Bethe, TRW bound, mean-field bound) and the gradient uses its beliefs.

    Returns:
        ``(loss, grad_n, grad_e)``: ``loss`` ``(...)``; ``grad_n`` shaped like ``s_n`` and
        ``grad_e`` shaped like ``s_e`` (summed over axes that were broadcast; a
        :class:`WeightedEdges` for weighted scores), each equal to marginals − gold
        indicators, i.e. the gradient of ``loss.sum()``. A gold labelling the scores forbid
        has loss ``+inf``.
    """
    return _loss_and_grad(graph, s_n, s_e, y, method, _lengths(lengths, mask), options, None)


def _loss_and_grad(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    y: Any,
    method: str,
    lengths: Any,
    options: dict[str, Any],
    weights: Optional[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, Any]:
    """:func:`loss_and_grad` with per-item weights on the gradient (``Σ w_b loss_b``)."""
    r = resolve(graph, method, options, "loss_and_grad")
    yl = labels(graph, y)
    sc = prepare(graph, s_n, s_e, extra_batch=(yl.shape[:-1],), lengths=lengths)
    yb = np.ascontiguousarray(
        np.broadcast_to(yl, sc.batch_shape + (graph.num_nodes,)), dtype=np.int64
    ).reshape(-1)
    if weights is not None:
        weights = np.ascontiguousarray(
            np.broadcast_to(weights, sc.batch_shape), dtype=np.float64
        ).reshape(-1)
    if r.method == "gibbs":
        loss, gn, ge, gw, rhat = _core.gibbs_loss_and_grad(
            graph._core, sc.s_n, sc.s_e, sc.dims, yb, r.core_args(graph), sc.weight, weights
        )
        _warn_unconverged(r, rhat < 1.1, rhat)
    else:
        loss, gn, ge, gw, _, conv, change = _core.loss_and_grad(
            graph._core,
            sc.s_n,
            sc.s_e,
            sc.dims,
            yb,
            sc.weight,
            sc.lengths,
            weights,
            r.core_args(graph),
        )
        _warn_unconverged(r, conv, change)
    c = sc.classes
    gn = _fold(gn, sc.node_batch, sc, (graph.num_nodes, c), sc.s_n_shape)
    if sc.weighted:
        gt = _fold(ge, sc.edge_batch, sc, (c, c), sc.s_e_shape)
        gw = _fold(gw, sc.weight_batch, sc, (graph.num_edges,), sc.weight_shape)
        return _shape(loss, sc), gn, WeightedEdges(gw, gt)
    ge = _fold(ge, sc.edge_batch, sc, (sc.edge_tables, c, c), sc.s_e_shape)
    return _shape(loss, sc), gn, ge


def _fold(g: np.ndarray, own_batch: int, sc: Scores, tail: tuple, shape: Any) -> np.ndarray:
    """Shapes a flat gradient like its input: the core already summed over a batch axis the
    input did not have (``own_batch == 1``); other broadcast axes are summed here."""
    if own_batch == 1:
        return g.reshape(shape)
    return sum_to_shape(g.reshape(sc.batch_shape + tail), shape)


def decode(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    method: str = "auto",
    *,
    lengths: Any = None,
    mask: Any = None,
    **options: Any,
) -> np.ndarray:
    """The MAP labelling ``argmax_y s(y)``, int64 ``(..., I)``.

    Exact (max-product) on forests; ``method="bp"`` (the default on loopy graphs) runs
    max-product BP and takes each node's best label, an approximation on loopy graphs.
    ``"trw"`` and ``"mean_field"`` take the argmax of their approximate marginals;
    ``"gibbs"`` returns the best-scoring labelling its chains visited. Ties go to the
    smallest label; padded chain positions are -1.
    """
    r = resolve(graph, method, options, "decode")
    lengths = _lengths(lengths, mask)
    sc = prepare(graph, s_n, s_e, lengths=lengths)
    if r.method == "gibbs":
        y = _core.gibbs_labels(
            graph._core, sc.s_n, sc.s_e, sc.dims, r.core_args(graph), 0, sc.weight
        )
        return y.reshape(sc.batch_shape + (graph.num_nodes,))
    if r.method in ("trw", "mean_field"):
        _, node, _, _, conv, change = _core.marginals(
            graph._core, sc.s_n, sc.s_e, sc.dims, sc.weight, None, False, r.core_args(graph)
        )
        _warn_unconverged(r, conv, change)
        y = np.argmax(node.reshape(-1, graph.num_nodes, sc.classes), axis=-1).astype(np.int64)
        return y.reshape(sc.batch_shape + (graph.num_nodes,))
    y, _, conv, change = _core.decode(
        graph._core, sc.s_n, sc.s_e, sc.dims, sc.weight, sc.lengths, r.core_args(graph)
    )
    _warn_unconverged(r, conv, change)
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
    mask: Any = None,
    **options: Any,
) -> np.ndarray:
    """Samples from ``P``: int64 ``(num_samples, ..., I)``: exact on forests; with
    ``method="gibbs"`` (any graph) the kept sweeps of ``num_chains`` chains, interleaved.

    Sample ``s`` of batch item ``b`` depends only on ``(seed, b, s)``, so the same seed
    gives the same samples whatever the number of threads. ``seed=None`` draws fresh
    entropy. Padded chain positions are -1.
    """
    r = resolve(graph, method, options, "sample")
    ns = int(num_samples)
    if ns < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    sc = prepare(graph, s_n, s_e, lengths=_lengths(lengths, mask))
    if r.method == "gibbs" and ns > 0:
        args = list(r.core_args(graph))
        args[4] = seed % (1 << 64)
        y = _core.gibbs_labels(graph._core, sc.s_n, sc.s_e, sc.dims, tuple(args), ns, sc.weight)
        return y.reshape((ns,) + sc.batch_shape + (graph.num_nodes,))
    y = _core.exact_sample(
        graph._core, sc.s_n, sc.s_e, sc.dims, ns, seed % (1 << 64), sc.weight, sc.lengths
    )
    return y.reshape((ns,) + sc.batch_shape + (graph.num_nodes,))
