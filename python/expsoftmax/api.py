"""The numpy API: ``infer``, ``loss_and_grad``, ``decode`` and ``sample``.

Each lays out its inputs (``_scores``: dtypes, shapes, broadcasting), hands the method name
and keyword options to the core as they are (the core checks them, once), calls it once
(the GIL is released there) and shapes the flat results. No per-node Python loops.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any, Optional

import numpy as np

from . import _core
from ._methods import METHODS, ConvergenceWarning
from ._scores import Scores, WeightedEdges, labels, prepare, sum_to_shape
from .graph import Graph
from .result import InferenceResult


def _warn_unconverged(out: dict[str, Any], options: dict[str, Any]) -> None:
    # The text depends only on the method and its limits, never on this call's numbers:
    # Python shows a warning once per distinct text and place, so a training loop that
    # hits max_iter every step gets one line (not one per step, each kept in the
    # warnings registry forever). `infer`'s result has the numbers, item by item.
    if out["converged"].all():
        return
    if out["method"] == "gibbs":
        warnings.warn(
            "Gibbs chains disagree: R-hat > 1.1 on some item(s) (between-chain diagnostic; "
            "`infer`'s result has each item's `rhat`); raise burn_in or num_samples.",
            ConvergenceWarning,
            stacklevel=3,
        )
        return
    # (The defaults are fixed per option name: the table made at import, not a new one.)
    defaults = METHODS[out["method"]]
    max_iter = options.get("max_iter", defaults.get("max_iter"))
    tol = options.get("tol", defaults.get("tol"))
    warnings.warn(
        f"method={out['method']!r} did not converge for some item(s) within "
        f"max_iter={max_iter} (final change > tol={tol}); results are from the last "
        "iteration (`infer`'s result has each item's `converged` and `max_change`). Raise "
        "max_iter, add damping, or try another schedule.",
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


def _graph(graph: Any) -> Graph:
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be an expsoftmax.Graph, got {type(graph).__name__}")
    return graph


def _method(method: Any) -> str:
    if not isinstance(method, str):
        from .errors import OptionError

        raise OptionError(f"method must be a string, got {type(method).__name__}")
    return method


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
        method: ``"auto"`` (exact on forests and on graphs whose junction tree fits
            ``max_states``, ``"bp"`` otherwise; ``result.method`` says which ran),
            ``"exact"`` (sum-product on the forest or junction tree), ``"bp"``
            (loopy BP, Bethe log Z), ``"trw"`` (tree-reweighted BP, upper bound on log Z),
            ``"mean_field"`` (lower bound) or ``"gibbs"`` (sampling; AIS log Z).
        lengths: for chains with exact inference, ``(...)`` real lengths (rest is padding);
            or ``mask`` ``(..., I)`` bool, True on the real prefix. Other methods refuse
            them.
        **options: for ``"exact"`` (and ``"auto"``) ``max_states`` (2**22: the largest
            clique table a junction tree may use, entries per item); for the loopy methods
            ``max_iter`` (100), ``tol`` (1e-6), ``damping``
            (0.0), ``schedule`` (``"checkerboard"`` or ``"parallel"``); for ``"trw"`` also
            ``edge_appearance`` (float or ``(E,)``; default from spanning trees). For
            ``"gibbs"``: ``num_samples`` (1000 kept sweeps *per chain*), ``burn_in`` (100),
            ``thin`` (1), ``num_chains`` (4), ``seed``, ``init`` (``"random"``; ``"gold"`` in
            ``loss_and_grad``), ``ais_steps`` (100; log Z by annealed importance sampling,
            0 skips it) and ``ais_runs`` (16). Gibbs results also carry ``node_stderr``
            (batch means), ``log_z_stderr`` and ``rhat`` (Gelman-Rubin, max over nodes).
            ``expsoftmax.METHODS`` lists every method's options and defaults.

    Returns:
        :class:`InferenceResult`, arrays in the scores' dtype. Loopy methods that do not
        converge (Gibbs chains that disagree) emit a :class:`ConvergenceWarning` and report
        ``converged=False``.
    """
    graph, method = _graph(graph), _method(method)
    sc = prepare(graph, s_n, s_e, lengths=_lengths(lengths, mask))
    out = _core.infer(graph._core, sc.s_n, sc.s_e, sc.dims, sc.weight, sc.lengths, method, options)
    _warn_unconverged(out, options)
    n, c, dt = graph.num_nodes, sc.classes, sc.dtype
    extra = {}
    if out["method"] == "gibbs":
        extra = dict(
            node_stderr=_shape(out["node_stderr"].astype(dt), sc, (n, c)),
            log_z_stderr=_shape(out["log_z_stderr"].astype(dt), sc),
            rhat=_shape(out["rhat"], sc),
        )
        # Gibbs has no message change: R-hat is its diagnostic.
        out["max_change"] = np.full(out["max_change"].shape, np.nan)
    return InferenceResult(
        log_z=_shape(out["log_z"], sc),
        node_marginals=_shape(out["node_marginals"], sc, (n, c)),
        edge_marginals=_shape(out["edge_marginals"], sc, (graph.num_edges, c, c)),
        converged=_shape(out["converged"], sc),
        iterations=_shape(out["iterations"].astype(np.int64), sc),
        max_change=_shape(out["max_change"].astype(dt), sc),
        method=out["method"],
        **extra,
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
        (Bethe, TRW bound, mean-field bound, AIS for Gibbs) and the gradient uses its
        beliefs (sampled marginals for Gibbs).

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
    graph, method = _graph(graph), _method(method)
    yl = labels(graph, y)
    sc = prepare(graph, s_n, s_e, extra_batch=(yl.shape[:-1],), lengths=lengths)
    full = sc.batch_shape + (graph.num_nodes,)
    # (Labels already of the batch's shape, and one weight for every item, are the usual
    # case: no broadcast view to build.)
    yb = np.ascontiguousarray(
        yl if yl.shape == full else np.broadcast_to(yl, full), dtype=np.int64
    ).reshape(-1)
    if weights is not None:
        if np.ndim(weights) == 0:
            weights = np.full(sc.batch, weights, dtype=np.float64)
        else:
            weights = np.ascontiguousarray(
                np.broadcast_to(weights, sc.batch_shape), dtype=np.float64
            ).reshape(-1)
    out = _core.loss_and_grad(
        graph._core, sc.s_n, sc.s_e, sc.dims, yb, sc.weight, sc.lengths, weights, method, options
    )
    _warn_unconverged(out, options)
    c = sc.classes
    gn = _fold(out["grad_node"], sc.node_batch, sc, (graph.num_nodes, c), sc.s_n_shape)
    loss = _shape(out["loss"], sc)
    if sc.weighted:
        gt = _fold(out["grad_edge"], sc.edge_batch, sc, (c, c), sc.s_e_shape)
        gw = _fold(out["grad_weight"], sc.weight_batch, sc, (graph.num_edges,), sc.weight_shape)
        return loss, gn, WeightedEdges(gw, gt)
    ge = _fold(out["grad_edge"], sc.edge_batch, sc, (sc.edge_tables, c, c), sc.s_e_shape)
    return loss, gn, ge


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
    ``"gibbs"`` returns the best-scoring labelling its chains visited (options
    ``num_samples``, ``burn_in``, ``thin``, ``num_chains``, ``seed``). Ties go to the
    smallest label; padded chain positions are -1 (``lengths``/``mask``: exact only).
    """
    graph, method = _graph(graph), _method(method)
    sc = prepare(graph, s_n, s_e, lengths=_lengths(lengths, mask))
    out = _core.decode(graph._core, sc.s_n, sc.s_e, sc.dims, sc.weight, sc.lengths, method, options)
    if out["method"] != "gibbs":
        _warn_unconverged(out, options)
    return out["labels"].reshape(sc.batch_shape + (graph.num_nodes,))


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
    """Samples from ``P``: int64 ``(num_samples, ..., I)``.

    Exact on forests and junction trees that fit ``max_states`` (``"auto"`` there); with
    ``method="gibbs"`` (``"auto"`` on other graphs) the kept sweeps of ``num_chains``
    chains, interleaved: sample ``s`` comes from chain ``s % num_chains``. Here
    ``num_samples`` is the *total* number of samples per item; each chain keeps
    ``ceil(num_samples / num_chains)`` sweeps (the Gibbs option ``num_samples`` of
    :func:`infer` counts kept sweeps *per chain*, so it is not an option here). Gibbs
    options: ``burn_in`` (100), ``thin`` (1), ``num_chains`` (4), ``init``
    (``"random"``).

    Sample ``s`` of batch item ``b`` depends only on ``(seed, b, s)``, so the same seed
    gives the same samples whatever the number of threads. ``seed=None`` draws fresh
    entropy. Padded chain positions are -1.
    """
    graph, method = _graph(graph), _method(method)
    ns = _count(num_samples, "num_samples")
    if seed is not None:
        seed = _count(seed, "seed")
    sc = prepare(graph, s_n, s_e, lengths=_lengths(lengths, mask))
    out = _core.sample(
        graph._core, sc.s_n, sc.s_e, sc.dims, ns, seed, sc.weight, sc.lengths, method, options
    )
    return out["samples"].reshape((ns,) + sc.batch_shape + (graph.num_nodes,))


def _count(v: Any, name: str) -> int:
    """A non-negative integer argument below 2**64 (no bools, floats or strings)."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    try:
        n = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}") from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    if n >= 1 << 64:
        raise OverflowError(f"{name} = {n} does not fit in 64 bits")
    return n


def topk(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    k: int,
    *,
    lengths: Any = None,
    mask: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring labellings of a forest, best first, exactly.

    Args:
        graph: a forest (chains, trees); other graphs raise :class:`NotForestError`.
        s_n, s_e, lengths, mask: as in :func:`infer`.
        k: how many labellings (``k >= 1``).

    Returns:
        ``(labels, scores)``: int64 ``(k, ..., I)`` and float64 ``(k, ...)`` (the exact
        score ``s(y)`` of each). When fewer than ``k`` labellings are allowed (``C**I < k``,
        or ``-inf`` scores forbid them), the rows past the last one are ``-1`` and ``-inf``.
        Padded chain positions are ``-1``. Ties keep the order in which they were found.
    """
    graph = _graph(graph)
    kk = _count(k, "k")
    if kk == 0:
        raise ValueError("k must be >= 1")
    sc = prepare(graph, s_n, s_e, lengths=_lengths(lengths, mask))
    out = _core.topk(graph._core, sc.s_n, sc.s_e, sc.dims, kk, sc.weight, sc.lengths)
    labels = out["labels"].reshape((kk,) + sc.batch_shape + (graph.num_nodes,))
    return labels, out["scores"].reshape((kk,) + sc.batch_shape)


def _marginals_jvp(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    t_n: np.ndarray,
    t_e: np.ndarray,
    lengths: Any = None,
    options: Optional[dict[str, Any]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact second order: the derivatives of log Z and of the node and pair marginals
    when the scores move along ``(t_n (..., I, C), t_e (..., E, C, C))`` (broadcast to the
    batch). By the symmetry of the Hessian of log Z this is also the vector–Jacobian
    product of the marginals with ``(t_n, t_e)``. Forests: one forward-mode pass in the
    core. Other graphs (junction trees): by conditioning (see :func:`_jvp_by_conditioning`).
    Returns float64 ``(d_log_z (...), d_node (..., I, C), d_edge (..., E, C, C))``."""
    graph = _graph(graph)
    if not graph.is_forest:
        return _jvp_by_conditioning(graph, s_n, s_e, t_n, t_e, options or {})
    sc = prepare(graph, s_n, s_e, lengths=lengths)
    n, e, c = graph.num_nodes, graph.num_edges, sc.classes

    def dense(t: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), sc.batch_shape + tail)
        return np.ascontiguousarray(t).reshape(-1)

    out = _core.marginals_jvp(
        graph._core,
        sc.s_n,
        sc.s_e,
        sc.dims,
        dense(t_n, (n, c)),
        dense(t_e, (e, c, c)),
        sc.weight,
        sc.lengths,
    )
    return (
        _shape(out["d_log_z"], sc),
        _shape(out["d_node"], sc, (n, c)),
        _shape(out["d_edge"], sc, (e, c, c)),
    )


#: Largest number of score entries the conditioning pass may lay out (clamped copies).
_CONDITIONING_LIMIT = 50_000_000


def _jvp_by_conditioning(
    graph: Graph,
    s_n: Any,
    s_e: Any,
    t_n: np.ndarray,
    t_e: np.ndarray,
    options: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact second order on any graph the exact method handles (junction trees).

    With ``U(y) = t · φ(y)`` (the tangent's score of ``y``), the derivative of a marginal
    ``μ_k = P(φ_k = 1)`` along ``t`` is ``Cov(φ_k, U) = μ_k (E[U | φ_k = 1] − E[U])``, and
    ``E[U | φ_k = 1]`` is ``U``'s expectation under the marginals of the model with that
    label (or pair of labels) clamped: one exact inference per node label and per edge
    label pair, all in one batched call. Exact (no differencing); its cost is
    ``I·C + E·C²`` inferences, so it is for the small loopy graphs junction trees serve."""
    sn = np.asarray(s_n)
    r = infer(graph, sn, s_e, "exact", **options)
    mu_n, mu_e = r.node_marginals.astype(np.float64), r.edge_marginals.astype(np.float64)
    batch = mu_n.shape[:-2]
    n, c = mu_n.shape[-2:]
    e = graph.num_edges
    k1, k2 = n * c, e * c * c
    if (k1 + k2) * max(int(np.prod(batch)), 1) * (n * c + e * c * c) > _CONDITIONING_LIMIT:
        raise MemoryError(
            f"exact second derivatives on this loopy graph ({n} nodes, {e} edges, C = {c}) "
            f"need {k1 + k2} clamped inferences per item, too many to lay out; they are "
            "exact on forests at the cost of one pass"
        )
    tn = np.broadcast_to(np.asarray(t_n, dtype=np.float64), mu_n.shape)
    te = np.broadcast_to(np.asarray(t_e, dtype=np.float64), mu_e.shape)
    eu = (mu_n * tn).sum((-1, -2)) + (mu_e * te).sum((-1, -2, -3))
    base = np.broadcast_to(sn, batch + (n, c))
    # Clamp k: node i to label a (k < k1), or edge (i, j) to labels (a, b). A clamp the
    # model forbids (marginal 0) is left unclamped: its term is multiplied by 0.
    keep = np.zeros((k1 + k2, n, c), dtype=bool)
    idx = np.arange(k1)
    keep[idx, idx // c, idx % c] = True
    ends = np.asarray(graph.edges)
    kk = np.arange(k2)
    ee, ab = kk // (c * c), kk % (c * c)
    keep[k1 + kk, ends[ee, 0], ab // c] = True
    keep[k1 + kk, ends[ee, 1], ab % c] = True
    clamped_nodes = keep.any(-1)  # (K, I): which nodes each clamp fixes
    forbid = clamped_nodes[..., None] & ~keep  # (K, I, C)
    feasible = np.concatenate([mu_n.reshape(batch + (k1,)), mu_e.reshape(batch + (k2,))], -1) > 0
    feasible = np.moveaxis(feasible, -1, 0)  # (K, ...)
    mask = forbid.reshape((k1 + k2,) + (1,) * len(batch) + (n, c)) & feasible[..., None, None]
    clamped = np.where(mask, np.array(-np.inf, dtype=sn.dtype), base)
    rc = infer(graph, clamped, s_e, "exact", **options)
    euc = (rc.node_marginals * tn).sum((-1, -2)) + (rc.edge_marginals * te).sum((-1, -2, -3))
    diff = np.moveaxis(euc - eu, 0, -1)  # (..., K)
    d_node = mu_n * diff[..., :k1].reshape(batch + (n, c))
    d_edge = mu_e * diff[..., k1:].reshape(batch + (e, c, c))
    d_log_z = eu
    return d_log_z, d_node, d_edge
