"""``expsoftmax.torch.ExpSoftmax``: the exponential softmax as a torch distribution over
labellings, in the style of torch-struct, computed by the core.

Differentiation: ``log_partition``'s gradient is the marginals (from the same core call).
With the exact method the marginals are differentiable too: their vector–Jacobian product
equals their Jacobian–vector product in the direction of the upstream gradient (the
Jacobian is the Hessian of log Z, which is symmetric), which the core computes in one
forward-mode sum-product pass on forests (``_core.marginals_jvp``) and by exact
conditioning on junction trees (``api._jvp_by_conditioning``). So
``gradgradcheck`` holds on ``log_partition`` and the loss, and ``entropy``, ``kl`` and
``cross_entropy`` are differentiable. Loopy and sampling methods are first order: a second
differentiation raises an error naming the method.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from . import api
from ._scores import WeightedEdges, prepare, sum_to_shape
from .api import _lengths
from .errors import ShapeError
from .graph import Graph
from .torch import _numpy as _np
from .torch import _Refuse


class _Model:
    """What the autograd functions need besides the tensors: the graph, the method, the
    options and the lengths, and the core's first answer (computed once, shared by
    ``log_partition`` and ``marginals``)."""

    def __init__(
        self, graph: Graph, method: str, lengths: Any, options: dict[str, Any], s_n: Tensor
    ) -> None:
        self.graph, self.method, self.lengths, self.options = graph, method, lengths, options
        self.device, self.dtype = s_n.device, s_n.dtype
        self.result: Any = None

    def out(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self.dtype)

    def infer(self, s_n: Tensor, s_e: Tensor) -> Any:
        if self.result is None:
            self.result = api.infer(
                self.graph, _np(s_n), _np(s_e), self.method, lengths=self.lengths, **self.options
            )
        return self.result

    @property
    def resolved(self) -> str:
        return self.result.method if self.result is not None else self.method

    def second_order(self, what: str) -> None:
        if self.resolved != "exact":
            raise RuntimeError(
                f"expsoftmax: {what} with method={self.resolved!r} is first-order only: "
                "differentiating the marginals (a second derivative of log Z) needs the exact "
                "method (forests, or graphs small enough for a junction tree). Differentiate "
                "log_partition or the loss once, or use method='exact'."
            )

    def jvp(self, s_n: Tensor, s_e: Tensor, t_n: Tensor, t_e: Tensor) -> tuple[Tensor, Tensor]:
        self.second_order("differentiating the marginals")
        _, dn, de = api._marginals_jvp(
            self.graph, _np(s_n), _np(s_e), _np(t_n), _np(t_e), self.lengths, self.options
        )
        return sum_to_shape(self.out(dn), s_n.shape), sum_to_shape(self.out(de), s_e.shape)


class _Marginals(torch.autograd.Function):
    """``(node (..., I, C), edge (..., E, C, C))`` marginals; backward = their exact
    Jacobian–vector product (see the module doc), an error for other methods."""

    @staticmethod
    def forward(ctx: Any, s_n: Tensor, s_e: Tensor, model: _Model) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        r = model.infer(s_n, s_e)
        ctx.model = model
        ctx.save_for_backward(s_n, s_e)
        ctx.set_materialize_grads(False)
        return model.out(r.node_marginals), model.out(r.edge_marginals)

    @staticmethod
    def backward(ctx: Any, g_n: Optional[Tensor], g_e: Optional[Tensor]) -> Any:  # type: ignore[override]
        s_n, s_e = ctx.saved_tensors
        model: _Model = ctx.model
        batch = torch.broadcast_shapes(s_n.shape[:-2], s_e.shape[:-3])
        n, c = s_n.shape[-2:]
        e = model.graph.num_edges
        t_n = g_n if g_n is not None else s_n.new_zeros(())
        t_e = g_e if g_e is not None else s_e.new_zeros(())
        t_n = t_n.expand(*batch, n, c)
        t_e = t_e.expand(*batch, e, c, c)
        gn, ge = model.jvp(s_n, s_e, t_n, t_e)
        if torch.is_grad_enabled():
            # create_graph: recorded, but differentiating again (a third derivative of
            # log Z) raises instead of contributing a silent zero.
            gn, ge = _Refuse.apply(
                "expsoftmax: third derivatives of log Z are not available (the marginals' "
                "derivative is computed by the core outside autograd); second derivatives are.",
                s_n,
                gn,
                ge,
            )
        return gn, ge, None


class _LogPartition(torch.autograd.Function):
    """log Z ``(...)``; gradient = marginals (differentiable again for the exact method)."""

    @staticmethod
    def forward(ctx: Any, s_n: Tensor, s_e: Tensor, model: _Model) -> Tensor:  # type: ignore[override]
        r = model.infer(s_n, s_e)
        ctx.model = model
        ctx.save_for_backward(s_n, s_e)
        return model.out(r.log_z)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Any:  # type: ignore[override]
        s_n, s_e = ctx.saved_tensors
        model: _Model = ctx.model
        if torch.is_grad_enabled():
            # create_graph: the marginals as a differentiable function of the scores.
            # (Differentiating these again raises for methods other than exact.)
            mu_n, mu_e = _Marginals.apply(s_n, s_e, model)
        else:
            r = model.result
            mu_n, mu_e = model.out(r.node_marginals), model.out(r.edge_marginals)
        gn = sum_to_shape(g[..., None, None] * mu_n, s_n.shape)
        ge = sum_to_shape(g[..., None, None, None] * mu_e, s_e.shape)
        return gn, ge, None


def _dot(mu: Tensor, theta: Tensor, dims: int) -> Tensor:
    """``Σ μ θ`` over the last ``dims`` axes, with ``0 · (−inf) = 0`` (a forbidden label
    has marginal 0) and ``μ > 0`` on ``θ = −inf`` giving ``−inf``."""
    safe = theta.masked_fill(torch.isneginf(theta), 0.0)
    total = (mu * safe).sum(tuple(range(-dims, 0)))
    bad = ((mu > 0) & torch.isneginf(theta)).flatten(-dims).any(-1)
    return torch.where(bad, torch.full_like(total, float("-inf")), total)


def _full_tables(weight: Tensor, table: Tensor) -> Tensor:
    """``weight[..., e] * table[..., a, b]`` as ``(..., E, C, C)``; a forbidden (``-inf``)
    pair stays forbidden whatever the weight, as in the numpy API."""
    w, t = weight[..., None, None], table[..., None, :, :]
    shape = torch.broadcast_shapes(w.shape, t.shape)
    return torch.where(torch.isneginf(t), t.expand(shape), w * t)


def _indicators(graph: Graph, y: Any, c: int, lengths: Any, like: Tensor) -> tuple[Tensor, Tensor]:
    """One-hot gold labels ``(..., I, C)`` and gold pairs ``(..., E, C, C)``, zero at padded
    chain positions."""
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).to(like.device).long()
    n = yt.shape[-1]
    real = torch.ones(yt.shape, dtype=torch.bool, device=yt.device)
    if lengths is not None:
        ln = torch.as_tensor(np.asarray(lengths), device=yt.device)
        real = (torch.arange(n, device=yt.device) < ln[..., None]).expand(
            torch.broadcast_shapes(ln.shape + (n,), yt.shape)
        )
        yt = yt.expand(real.shape)
    yc = yt.clamp(0, c - 1)
    gold_n = torch.nn.functional.one_hot(yc, c).to(like.dtype) * real[..., None]
    ends = torch.from_numpy(np.array(graph.edges, dtype=np.int64)).to(yt.device).reshape(-1, 2)
    live = real[..., ends[:, 0]] & real[..., ends[:, 1]]
    pair = yc[..., ends[:, 0]] * c + yc[..., ends[:, 1]]
    gold_e = torch.nn.functional.one_hot(pair, c * c).to(like.dtype) * live[..., None]
    return gold_n, gold_e.unflatten(-1, (c, c))


def loss_grads_twice_differentiable(
    s_n: Tensor,
    table: Tensor,
    weight: Optional[Tensor],
    y: Any,
    g: Tensor,
    graph: Graph,
    method: str,
    lengths: Any,
    options: dict[str, Any],
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """The loss's gradients ``g · (marginals − gold)`` as a differentiable function of the
    scores (exact method on forests): what the loss's backward returns under
    ``create_graph=True``. ``g`` is the upstream gradient per item ``(...)``."""
    full = table if weight is None else _full_tables(weight, table)
    model = _Model(graph, method, lengths, options, s_n)
    mu_n, mu_e = _Marginals.apply(s_n, full, model)
    gold_n, gold_e = _indicators(graph, y, s_n.shape[-1], lengths, s_n)
    gn = sum_to_shape(g[..., None, None] * (mu_n - gold_n), s_n.shape)
    de = g[..., None, None, None] * (mu_e - gold_e)
    if weight is None:
        return gn, sum_to_shape(de, table.shape), None
    safe = table.masked_fill(torch.isneginf(table), 0.0)
    gt = sum_to_shape((de * weight[..., None, None]).sum(-3), table.shape)
    gw = sum_to_shape((de * safe[..., None, :, :]).sum((-1, -2)), weight.shape)
    return gn, gt, gw


class ExpSoftmax:
    """The distribution ``P(y) = exp(s(y)) / Z`` over the labellings of ``graph``.

    Args:
        graph: the :class:`expsoftmax.Graph`.
        s_n: node scores ``(..., I, C)`` (float32/float64; float16 and bfloat16 are
            computed in float32 and answered in the input dtype).
        s_e: edge scores ``(..., E, C, C)`` (edge axis 1: one shared table; batch axes
            broadcast with ``s_n``'s), or a ``(weight (..., E), table (..., C, C))`` pair
            (:class:`expsoftmax.WeightedEdges`), which is expanded to per-edge tables.
        method: as in :func:`expsoftmax.infer` (``"auto"``: exact on forests and small
            junction trees, ``"bp"`` otherwise).
        lengths, mask: chains only: real lengths ``(...)`` or a prefix mask ``(..., I)``.
        **options: the method's options, as in :func:`expsoftmax.infer`.

    Properties ``log_partition`` ``(...)``, ``marginals`` ``(node (..., I, C), edge (...,
    E, C, C))``, ``argmax`` ``(..., I)`` long and ``entropy`` ``(...)``; methods
    ``log_prob``, ``sample``, ``topk``, ``kl`` and ``cross_entropy``. ``...`` is the batch
    shape (``batch_shape``). Everything is differentiable in the scores; with the exact
    method on forests to second order (marginals, entropy, KL included). Loopy methods
    give their estimates (Bethe log Z and beliefs for ``"bp"``; ``entropy`` is then the
    matching Bethe/TRW/mean-field estimate ``log Z − E_b[s]``).
    """

    def __init__(
        self,
        graph: Graph,
        s_n: Tensor,
        s_e: Any,
        method: str = "auto",
        *,
        lengths: Optional[Any] = None,
        mask: Optional[Any] = None,
        **options: Any,
    ) -> None:
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be an expsoftmax.Graph, got {type(graph).__name__}")
        if not isinstance(s_n, Tensor):
            raise TypeError(f"s_n must be a torch.Tensor, got {type(s_n).__name__}")
        if isinstance(s_e, tuple):
            if len(s_e) != 2 or not all(isinstance(t, Tensor) for t in s_e):
                raise TypeError("weighted edge scores must be a (weight, table) pair of tensors")
            s_e = _full_tables(*WeightedEdges(*s_e))
        if not isinstance(s_e, Tensor):
            raise TypeError(f"s_e must be a torch.Tensor, got {type(s_e).__name__}")
        if s_n.dim() < 2 or s_e.dim() < 3:
            raise ShapeError(
                f"s_n must be (..., I, C) and s_e (..., E, C, C); got {tuple(s_n.shape)} and "
                f"{tuple(s_e.shape)}"
            )
        if s_e.dtype != s_n.dtype:
            s_e = s_e.to(s_n.dtype)
        self.graph, self.method, self.options = graph, method, dict(options)
        self.s_n, self.s_e = s_n, s_e
        if torch.compiler.is_compiling():
            # Traced by dynamo: no numpy here; log_partition goes through a custom op.
            if mask is not None:
                lengths = mask.sum(-1)
            self.lengths = None if lengths is None else torch.as_tensor(lengths).long()
            ln_shape = () if self.lengths is None else tuple(self.lengths.shape)
            self.batch_shape = torch.broadcast_shapes(s_n.shape[:-2], s_e.shape[:-3], ln_shape)
            self._model = _Model(graph, method, None, self.options, s_n)
            return
        ll = _lengths(
            None if lengths is None else _np(torch.as_tensor(lengths)),
            None if mask is None else _np(torch.as_tensor(mask)),
        )
        self.lengths = ll
        self.batch_shape = torch.broadcast_shapes(
            s_n.shape[:-2], s_e.shape[:-3], tuple(np.shape(ll)) if ll is not None else ()
        )
        self._model = _Model(graph, method, ll, self.options, s_n)
        # Shapes and dtypes checked now, so a misuse fails at construction; inference runs
        # on first use (argmax, sample and topk need none).
        prepare(graph, _np(s_n), _np(s_e), lengths=ll)

    # -- exact quantities -------------------------------------------------------------

    @property
    def log_partition(self) -> Tensor:
        """log Z ``(...)`` (the method's estimate for loopy methods). Under
        ``torch.compile`` it is the ``expsoftmax::log_partition`` custom op (first order)."""
        if torch.compiler.is_compiling():
            from . import _ops

            key = _ops.config_key(self.graph, self.method, self.options)
            return _ops.log_partition(self.s_n, self.s_e, self.lengths, key, self.graph.num_edges)[
                0
            ]
        return _LogPartition.apply(self.s_n, self.s_e, self._model)

    @property
    def marginals(self) -> tuple[Tensor, Tensor]:
        """``(node (..., I, C), edge (..., E, C, C))`` marginals (beliefs for loopy
        methods); pair marginals ``[a, b]`` with ``a`` at the edge's first node."""
        return _Marginals.apply(self.s_n, self.s_e, self._model)

    @property
    def method_used(self) -> str:
        """The method that ran (``"exact"``, ``"bp"``, ...), ``"auto"`` resolved."""
        self._model.infer(self.s_n, self.s_e)
        return self._model.resolved

    @property
    def entropy(self) -> Tensor:
        """``H(P) = log Z − E_P[s(y)]`` ``(...)`` (exact; the method's estimate otherwise)."""
        mu_n, mu_e = self.marginals
        return self.log_partition - self._expected(mu_n, mu_e, self)

    @property
    def argmax(self) -> Tensor:
        """The MAP labelling ``(..., I)`` long (max-product; ``-1`` at padded positions)."""
        y = api.decode(
            self.graph,
            _np(self.s_n),
            _np(self.s_e),
            self.method,
            lengths=self.lengths,
            **self._decode_options(),
        )
        return torch.from_numpy(y).to(self.s_n.device)

    def _decode_options(self) -> dict[str, Any]:
        # infer's convergence options apply to max-product too; Gibbs' AIS options do not.
        skip = {"ais_steps", "ais_runs", "num_samples", "init"}
        return {k: v for k, v in self.options.items() if k not in skip}

    # -- scores of labellings ---------------------------------------------------------

    def score(self, y: Tensor) -> Tensor:
        """``s(y)`` of labellings ``y`` ``(..., I)`` (leading axes broadcast with the batch),
        differentiable in the scores; padded chain positions add nothing."""
        y = torch.as_tensor(y, device=self.s_n.device)
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got {y.dtype}")
        n, c = self.s_n.shape[-2:]
        if y.dim() < 1 or y.shape[-1] != n:
            raise ShapeError(f"labels must be (..., {n}), got {tuple(y.shape)}")
        y = y.long()
        real = torch.ones(y.shape, dtype=torch.bool, device=y.device)
        if self.lengths is not None:
            ln = torch.as_tensor(self.lengths, device=y.device)
            real = torch.arange(n, device=y.device) < ln[..., None]
            real = real.expand(torch.broadcast_shapes(real.shape, y.shape))
        if bool(((y < 0) | (y >= c))[real].any()):
            raise ValueError(f"labels must lie in [0, {c}) at real positions")
        yc = y.clamp(0, c - 1)
        shape = torch.broadcast_shapes(y.shape[:-1], self.batch_shape)
        yc = yc.expand(*shape, n)
        real = real.expand(*shape, n)
        sn = self.s_n.expand(*shape, n, c)
        node = sn.gather(-1, yc[..., None])[..., 0]
        total = torch.where(real, node, node.new_zeros(())).sum(-1)
        e = self.graph.num_edges
        if e:
            ends = torch.from_numpy(np.array(self.graph.edges, dtype=np.int64)).to(y.device)
            src, dst = yc[..., ends[:, 0]], yc[..., ends[:, 1]]
            se = self.s_e.expand(*shape, e, c, c).flatten(-2)
            pair = se.gather(-1, (src * c + dst)[..., None])[..., 0]
            live = real[..., ends[:, 0]] & real[..., ends[:, 1]]
            total = total + torch.where(live, pair, pair.new_zeros(())).sum(-1)
        return total

    def log_prob(self, y: Tensor) -> Tensor:
        """``log P(y) = s(y) − log Z`` ``(...)``; ``y`` ``(..., I)``, leading axes broadcast
        (e.g. ``(n, ..., I)`` samples)."""
        return self.score(y) - self.log_partition

    def sample(self, n: int, seed: Optional[int] = None) -> Tensor:
        """``n`` samples ``(n, ..., I)`` long: exact on forests and junction trees, Gibbs
        chains otherwise (``method="gibbs"``). ``seed`` makes them reproducible."""
        method = self.method if self.method in ("auto", "exact", "gibbs") else "auto"
        opts = {}
        if method == "gibbs":
            keep = ("burn_in", "thin", "num_chains", "init")
            opts = {k: v for k, v in self.options.items() if k in keep}
        y = api.sample(
            self.graph, _np(self.s_n), _np(self.s_e), n, seed, method, lengths=self.lengths, **opts
        )
        return torch.from_numpy(y).to(self.s_n.device)

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best labellings, best first, exactly (forests): ``(labels (k, ..., I)
        long, scores (k, ...))``, scores differentiable. Rows past the number of allowed
        labellings are ``-1`` with score ``-inf``."""
        labels, best = api.topk(self.graph, _np(self.s_n), _np(self.s_e), k, lengths=self.lengths)
        y = torch.from_numpy(labels).to(self.s_n.device)
        missing = torch.from_numpy(np.isneginf(best)).to(self.s_n.device)
        scores = self.score(y.clamp(min=0))
        return y, torch.where(missing, torch.full_like(scores, float("-inf")), scores)

    # -- between distributions --------------------------------------------------------

    def _expected(self, mu_n: Tensor, mu_e: Tensor, of: ExpSoftmax) -> Tensor:
        """``E[s_of(y)]`` under marginals ``(mu_n, mu_e)``."""
        return _dot(mu_n, of.s_n, 2) + _dot(mu_e, of.s_e, 3)

    def _same_space(self, other: ExpSoftmax) -> None:
        if not isinstance(other, ExpSoftmax):
            raise TypeError(f"other must be an ExpSoftmax, got {type(other).__name__}")
        same = other.graph is self.graph or (
            other.graph.num_nodes == self.graph.num_nodes
            and np.array_equal(other.graph.edges, self.graph.edges)
        )
        if not same or other.s_n.shape[-1] != self.s_n.shape[-1]:
            raise ValueError(
                "kl/cross_entropy need two distributions on the same graph and classes"
            )
        la, lb = self.lengths, other.lengths
        if (la is None) != (lb is None) or (la is not None and not np.array_equal(la, lb)):
            raise ValueError("kl/cross_entropy need the same lengths on both distributions")

    def cross_entropy(self, other: ExpSoftmax) -> Tensor:
        """``−E_self[log P_other(y)] = log Z_other − E_self[s_other]`` ``(...)``."""
        self._same_space(other)
        mu_n, mu_e = self.marginals
        return other.log_partition - self._expected(mu_n, mu_e, other)

    def kl(self, other: ExpSoftmax) -> Tensor:
        """``KL(self ‖ other) = E_self[s_self − s_other] − log Z_self + log Z_other``
        ``(...)`` (``+inf`` where ``other`` forbids a labelling ``self`` allows)."""
        self._same_space(other)
        return self.cross_entropy(other) - self.entropy

    def __repr__(self) -> str:
        return (
            f"ExpSoftmax(graph={self.graph!r}, classes={self.s_n.shape[-1]}, "
            f"batch_shape={tuple(self.batch_shape)}, method={self.method!r})"
        )
