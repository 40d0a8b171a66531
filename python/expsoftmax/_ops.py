"""The core calls as torch custom operators, for ``torch.compile``.

Eager code calls the core through :mod:`expsoftmax.torch`'s autograd functions (gradients
handed over without copies). Under ``torch.compile`` those Python functions would break the
graph, so the same calls are registered with ``torch.library``: each op has a fake (shape)
implementation for tracing and an autograd registration, so ``fullgraph=True`` compiles.

Ops take tensors and a string naming the (graph, method, options) configuration: the
graph's process-wide key (``Graph._key``, assigned when it is built) and the options'
``repr``, read back (and cached) when the op runs.
"""

from __future__ import annotations

import ast
import functools
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from . import api
from ._scores import WeightedEdges, sum_to_shape
from .graph import _LIVE, Graph
from .torch import _numpy as _np


def config_key(graph: Graph, method: str, options: dict[str, Any]) -> str:
    """The configuration as a string op argument: the graph's process-wide key, the method
    and the options (plain numbers and strings; dynamo traces this)."""
    return repr((graph._key, method, tuple(sorted(options.items()))))


@functools.lru_cache(maxsize=256)
def _config(key: str) -> tuple[Graph, str, dict[str, Any]]:
    try:
        gk, method, items = ast.literal_eval(key)
    except (ValueError, SyntaxError):
        raise TypeError(
            f"under torch.compile, method options must be numbers, strings or booleans (got {key})"
        ) from None
    graph = _LIVE.get(gk)
    if graph is None:
        raise RuntimeError("expsoftmax: the graph of this compiled call no longer exists")
    return graph, method, dict(items)


def _out(a: Any, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(like.device, like.dtype)


def _batch(s_n: Tensor, s_e: Tensor, s_w: Optional[Tensor], *more: tuple[int, ...]) -> Any:
    edge = [s_e.shape[:-2], s_w.shape[:-1]] if s_w is not None else [s_e.shape[:-3]]
    return torch.broadcast_shapes(s_n.shape[:-2], *edge, *more)


@torch.library.custom_op("expsoftmax::loss_and_grad", mutates_args=())
def loss_and_grad(
    s_n: Tensor,
    s_e: Tensor,
    s_w: Optional[Tensor],
    y: Tensor,
    lengths: Optional[Tensor],
    key: str,
    item_weights: Optional[Tensor],
) -> list[Tensor]:
    """``[loss (...), grad_n, grad_e, grad_w]`` (``grad_w`` empty unless weighted); with
    ``item_weights`` the gradients are those of ``Σ w_b loss_b``."""
    graph, method, options = _config(key)
    edges = _np(s_e) if s_w is None else WeightedEdges(_np(s_w), _np(s_e))
    iw = None if item_weights is None else _np(item_weights).astype(np.float64)
    loss, gn, ge = api._loss_and_grad(
        graph, _np(s_n), edges, _np(y), method, _np(lengths), options, iw
    )
    if s_w is None:
        return [_out(loss, s_n), _out(gn, s_n), _out(ge, s_e), s_n.new_empty(0)]
    return [_out(loss, s_n), _out(gn, s_n), _out(ge.table, s_e), _out(ge.weight, s_w)]


@loss_and_grad.register_fake
def _(s_n, s_e, s_w, y, lengths, key, item_weights):  # type: ignore[no-untyped-def]
    more = [y.shape[:-1]] + ([lengths.shape] if lengths is not None else [])
    batch = _batch(s_n, s_e, s_w, *more)
    gw = torch.empty_like(s_w) if s_w is not None else s_n.new_empty(0)
    return [s_n.new_empty(batch), torch.empty_like(s_n), torch.empty_like(s_e), gw]


def _loss_setup(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    s_n, s_e, s_w, y, lengths, key, _ = inputs
    ctx.key, ctx.weighted = key, s_w is not None
    ctx.save_for_backward(s_n, s_e, s_w, y, lengths, *output[1:])


def _loss_backward(ctx: Any, grads: list[Tensor]) -> Any:
    g = grads[0]  # the gradients' outputs are not differentiated (first order)
    s_n, s_e, s_w, y, lengths, gn, ge, gw = ctx.saved_tensors
    n = g.dim()
    per_item = gn.shape[:-2] == g.shape and (
        (ge.shape[:-2] == g.shape and gw.shape[:-1] == g.shape)
        if ctx.weighted
        else ge.shape[:-3] == g.shape
    )
    if per_item:
        # Nothing was summed over items: each item's rows times its upstream gradient.
        out_n = gn * g.reshape(g.shape + (1, 1))
        out_e = ge * g.reshape(g.shape + (1,) * (ge.dim() - n))
        out_w = gw * g.reshape(g.shape + (1,) * (gw.dim() - n)) if ctx.weighted else None
    else:
        # A score tensor shared by the items: the weighted sum needs the per-item terms.
        _, out_n, out_e, w = loss_and_grad(s_n, s_e, s_w, y, lengths, ctx.key, g)
        out_w = w if ctx.weighted else None
    return out_n, out_e, out_w, None, None, None, None


loss_and_grad.register_autograd(_loss_backward, setup_context=_loss_setup)


@torch.library.custom_op("expsoftmax::log_partition", mutates_args=())
def log_partition(
    s_n: Tensor, s_e: Tensor, lengths: Optional[Tensor], key: str, num_edges: int
) -> list[Tensor]:
    """``[log Z (...), node marginals (..., I, C), edge marginals (..., E, C, C)]``
    (``num_edges`` = E, for the fake implementation: a key registered while tracing is
    only in the registry once the traced code has run)."""
    graph, method, options = _config(key)
    r = api.infer(graph, _np(s_n), _np(s_e), method, lengths=_np(lengths), **options)
    return [_out(r.log_z, s_n), _out(r.node_marginals, s_n), _out(r.edge_marginals, s_n)]


@log_partition.register_fake
def _(s_n, s_e, lengths, key, num_edges):  # type: ignore[no-untyped-def]
    more = [lengths.shape] if lengths is not None else []
    batch = _batch(s_n, s_e, None, *more)
    c = s_n.shape[-1]
    return [
        s_n.new_empty(batch),
        s_n.new_empty((*batch, s_n.shape[-2], c)),
        s_n.new_empty((*batch, num_edges, c, c)),
    ]


def _lz_setup(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    s_n, s_e = inputs[:2]
    ctx.shapes = (s_n.shape, s_e.shape)
    ctx.save_for_backward(output[1], output[2])


def _lz_backward(ctx: Any, grads: list[Tensor]) -> Any:
    g = grads[0]
    mu_n, mu_e = ctx.saved_tensors
    sn_shape, se_shape = ctx.shapes
    gn = sum_to_shape(g[..., None, None] * mu_n, sn_shape)
    ge = sum_to_shape(g[..., None, None, None] * mu_e, se_shape)
    return gn, ge, None, None, None


log_partition.register_autograd(_lz_backward, setup_context=_lz_setup)
