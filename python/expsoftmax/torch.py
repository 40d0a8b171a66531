"""PyTorch loss: ``loss = log Z − s(y)`` whose backward is ``marginals − gold``.

Import this module explicitly (``import expsoftmax.torch``); the rest of the package
works without torch. Tensors on any device are computed on the CPU by the Rust core and
their gradients are returned on the tensors' own device.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ._scores import WeightedEdges, broadcast_shapes
from .api import _lengths, _loss_and_grad
from .errors import DTypeError, OptionError
from .graph import Graph

_REDUCTIONS = ("none", "sum", "mean")
# Half precision is computed in float32 (numpy has no bfloat16, and the core works in
# float32/float64); gradients go back in the input's dtype.
_HALF = (torch.float16, torch.bfloat16)
_TORCH_FLOATS = (torch.float32, torch.float64, *_HALF)


def _numpy(t: Any) -> Any:
    if isinstance(t, Tensor):
        t = t.detach()
        if t.dtype in _HALF:
            t = t.float()
        return t.cpu().numpy()
    return t


class _Refuse(torch.autograd.Function):
    """Passes ``tensors`` through unchanged; differentiating them raises ``message``
    instead of silently contributing zero (for derivatives computed by the core outside
    autograd). ``anchor`` is any input that requires grad, so the mark is recorded."""

    @staticmethod
    def forward(ctx: Any, message: str, anchor: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.message = message
        return tuple(t.clone() for t in tensors)

    @staticmethod
    def backward(ctx: Any, *_: Any) -> Any:  # type: ignore[override]
        raise RuntimeError(ctx.message)


def _second_order_message(method: str) -> str:
    return (
        "expsoftmax: second derivatives of the exponential-softmax loss are not "
        f"available with method={method!r}: its gradient (beliefs - gold) is "
        "first-order only. Exact second derivatives need method='exact' (or 'auto') on "
        "a forest; otherwise differentiate the loss once (no create_graph)."
    )


class _ExpSoftmaxLossFn(torch.autograd.Function):
    """Per-item loss; gradients computed together with the loss in the forward pass.

    ``s_e`` is the edge-table tensor; ``s_w`` the per-edge weights for the weighted form
    ``s_w[..., e] * s_e[..., a, b]``, or None."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        s_n: Tensor,
        s_e: Tensor,
        s_w: Optional[Tensor],
        y: Any,
        graph: Graph,
        method: str,
        lengths: Any,
        options: dict[str, Any],
        prescale: float,
        reduction: str,
    ) -> Tensor:
        sn, se, yy, ll = _numpy(s_n), _numpy(s_e), _numpy(y), _numpy(lengths)
        edge_arg = se if s_w is None else WeightedEdges(_numpy(s_w), se)
        # The gradients come out of the core already times the upstream gradient the
        # reduction will send (1/n for "mean"), so the usual backward scales nothing.
        pre = None if prescale == 1.0 else np.float64(prescale)
        loss, gn, ge = _loss_and_grad(graph, sn, edge_arg, yy, method, ll, options, pre)
        ctx.args = (graph, sn, edge_arg, yy, method, ll, options)
        ctx.prescale = prescale
        # The core's outputs (or numpy sums of them) are fresh, contiguous and writable:
        # the backward scales them in place and hands them to autograd without a copy.
        # (Code that runs right after a core call runs from cold caches, tens of µs for a
        # torch op, so nothing is converted or checked here that need not be.)
        ctx.grads = (gn, ge.table, ge.weight) if s_w is not None else (gn, ge)
        ctx.meta = (s_n, s_e, s_w, loss.shape)
        ctx.reduction = reduction
        out = torch.from_numpy(loss)
        if out.dtype != s_n.dtype or s_n.device.type != "cpu":
            out = out.to(device=s_n.device, dtype=s_n.dtype)
        # The reduction inside the function (torch's own sum/mean of the same tensor, so
        # the same value): one autograd node instead of two, and a scalar upstream
        # gradient in the backward.
        if reduction == "sum":
            return out.sum()
        if reduction == "mean":
            return out.mean()
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        # With create_graph=True autograd records this backward: exact on forests, the
        # gradients are differentiable functions of the scores; otherwise they are marked
        # so that a second differentiation raises (never a silent zero).
        ctx.create_graph = torch.is_grad_enabled()
        return _ExpSoftmaxLossFn._backward(ctx, g)

    @staticmethod
    def _backward(ctx: Any, g: Tensor) -> tuple[Optional[Tensor], ...]:
        s_n, s_e, s_w, shape = ctx.meta
        method = ctx.args[4]
        if ctx.create_graph and method in ("auto", "exact"):
            # Exact second order: the gradients as a differentiable function of the scores
            # (the marginals' backward is the core's forward-mode pass on forests, exact
            # conditioning on junction trees; "auto" that chose BP raises, naming it, if
            # differentiated again).
            from ._dist import loss_grads_twice_differentiable

            y, lengths, options = ctx.args[3], ctx.args[5], ctx.args[6]
            gn, ge, gw = loss_grads_twice_differentiable(
                s_n,
                s_e,
                s_w,
                y,
                _per_item(g, ctx.reduction, shape),
                ctx.args[0],
                method,
                lengths,
                options,
            )
            needs = ctx.needs_input_grad[:3]
            grads = [t if need else None for t, need in zip((gn, ge, gw), needs)]
            return (*grads, None, None, None, None, None, None, None)

        def fresh(weights: Optional[np.ndarray]) -> tuple[np.ndarray, ...]:
            gn, ge = _loss_and_grad(*ctx.args, weights=weights)[1:]
            return (gn, ge.table, ge.weight) if s_w is not None else (gn, ge)

        parts = ctx.grads
        ctx.grads = None
        if parts is None:
            # A second backward through the same graph (retain_graph=True): the first one
            # handed the forward's arrays to autograd, so they are computed again, as the
            # forward did (deterministic: the same bits, then the same scaling below).
            parts = fresh(None if ctx.prescale == 1.0 else np.float64(ctx.prescale))
        if ctx.reduction != "none":
            # One upstream gradient for every item ("sum"/"mean": the scalar, or the
            # scalar divided by the item count in the loss's dtype, exactly as their own
            # backward sends it): the forward pass's gradients, scaled in place (no copy;
            # a factor 1, the usual case, is skipped). No per-item tensor is built.
            item = g.item()
            if ctx.reduction == "mean":
                item = _divide(item, math.prod(shape), g.dtype)
            _scale(parts, item / ctx.prescale)
        else:
            gw = g.detach().to("cpu", torch.float64).numpy().reshape(shape)
            if gw.size and (all(st == 0 for st in g.stride()) or (gw == gw.flat[0]).all()):
                _scale(parts, float(gw.flat[0]) / ctx.prescale)
            elif all(
                a.ndim == len(shape) + tail and a.shape[: len(shape)] == shape
                for a, tail in zip(parts, (2, 2, 1) if s_w is not None else (2, 3))
            ):
                # Every gradient has the items' batch axes (nothing was summed over items):
                # each item's rows scaled by its upstream gradient, in place.
                for arr in parts:
                    k = gw.reshape(shape + (1,) * (arr.ndim - len(shape))) / ctx.prescale
                    arr *= k.astype(arr.dtype)
            else:
                # A table shared by the items was summed over them in the forward pass: the
                # weighted sum needs the per-item terms, computed again.
                parts = fresh(gw)
        out = []
        for arr, like, need in zip(parts, (s_n, s_e, s_w), ctx.needs_input_grad[:3]):
            if not need:
                out.append(None)
                continue
            grad = torch.from_numpy(arr)
            if like.dtype != grad.dtype or like.device.type != "cpu":
                grad = grad.to(like.device, like.dtype)
            if ctx.create_graph:
                (grad,) = _Refuse.apply(_second_order_message(method), like, grad)
            out.append(grad)
        out += [None] * (3 - len(out))
        return (*out, None, None, None, None, None, None, None)


def _per_item(g: Tensor, reduction: str, shape: tuple[int, ...]) -> Tensor:
    """The per-item upstream gradient, exactly as sum's and mean's backward make it (mean:
    the scalar divided by the item count in the loss's dtype)."""
    if reduction == "none":
        return g.reshape(shape)
    return g.expand(shape) if reduction == "sum" else g.div(math.prod(shape)).expand(shape)


def _scale(parts: tuple[np.ndarray, ...], scale: float) -> None:
    if scale != 1.0:
        for arr in parts:
            arr *= scale


def _divide(x: float, n: int, dtype: torch.dtype) -> float:
    """``x / n`` rounded to ``dtype`` exactly as torch's ``mean`` backward computes it (a
    correctly rounded division in that precision): numpy scalars for float32/float64 (a
    microsecond, where a torch op on a wrapped Python number costs tens), a torch op for
    the half types numpy lacks."""
    if dtype == torch.float32:
        return float(np.float32(x) / np.float32(n))
    if dtype == torch.float64:
        return x / n
    return torch.tensor(x, dtype=dtype).div(n).item()


def _check(reduction: str, s_n: Any, s_e: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise OptionError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    parts = [("s_n", s_n)]
    if isinstance(s_e, tuple):
        if len(s_e) != 2:
            raise TypeError("weighted edge scores must be a (weight, table) pair of tensors")
        parts += [("edge weight", s_e[0]), ("edge table", s_e[1])]
    else:
        parts.append(("s_e", s_e))
    for name, t in parts:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _TORCH_FLOATS:
            raise DTypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def exp_softmax_loss(
    s_n: Tensor,
    s_e: Any,
    y: Tensor,
    graph: Graph,
    method: str = "auto",
    reduction: str = "mean",
    *,
    lengths: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    **options: Any,
) -> Tensor:
    """Exponential-softmax loss ``log Z − s(y)``.

    Args:
        s_n: node scores ``(..., I, C)``, float32 or float64; float16 and bfloat16 are
            computed in float32 (the loss and gradients come back in the input dtype).
        s_e: edge scores ``(..., E, C, C)`` (edge axis 1 = one shared table); batch axes
            broadcast with ``s_n``'s. Or a ``(weight (..., E), table (..., C, C))`` pair of
            tensors (:class:`expsoftmax.WeightedEdges`): both get gradients.
        y: gold labels ``(..., I)``, integer tensor or array.
        graph: the :class:`expsoftmax.Graph`.
        method: inference method (``"auto"``: exact on forests and junction trees that fit
            ``max_states``, ``"bp"`` otherwise;
            ``"trw"``, ``"mean_field"``, ``"gibbs"``); ``**options`` as in
            :func:`expsoftmax.infer`.
        reduction: ``"none"`` (per item, shape ``(...)``), ``"sum"`` or ``"mean"`` over items.
        lengths: for chains with exact inference, ``(...)`` real lengths; padded positions
            add nothing. Or ``mask`` ``(..., I)`` bool, True on the real prefix of each chain
            (not both). Other methods refuse them.

    Returns:
        The loss; its backward gives ``marginals − gold`` to ``s_n`` and ``s_e``.
    """
    _check(reduction, s_n, s_e)
    table, weight = (s_e[1], s_e[0]) if isinstance(s_e, tuple) else (s_e, None)
    if torch.compiler.is_compiling():
        return _compiled_loss(
            s_n, table, weight, y, graph, method, reduction, lengths, mask, options
        )
    lengths = _lengths(_numpy(lengths), _numpy(mask))
    prescale = 1.0
    if reduction == "mean":
        # The upstream gradient "mean" will send to every item, exactly as torch computes
        # it (1 / n in the loss's dtype), so the forward can fold it into the gradients.
        edge_batch = [table.shape[:-2]] if weight is not None else [table.shape[:-3]]
        if weight is not None:
            edge_batch.append(weight.shape[:-1])
        try:
            ys = tuple(np.shape(y))[:-1]
            n = math.prod(broadcast_shapes(tuple(s_n.shape[:-2]), ys, *map(tuple, edge_batch)))
        except ValueError:
            n = 0  # the core names the mismatch
        if n > 0:
            prescale = _divide(1.0, n, s_n.dtype)
    return _ExpSoftmaxLossFn.apply(
        s_n, table, weight, y, graph, method, lengths, options, prescale, reduction
    )


def _compiled_loss(
    s_n: Tensor,
    table: Tensor,
    weight: Optional[Tensor],
    y: Any,
    graph: Graph,
    method: str,
    reduction: str,
    lengths: Optional[Tensor],
    mask: Optional[Tensor],
    options: dict[str, Any],
) -> Tensor:
    """The loss through the ``expsoftmax::loss_and_grad`` custom op (no graph break under
    ``torch.compile``); same values and gradients as the eager path."""
    from . import _ops

    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    if mask is not None:
        # (The core checks that the lengths fit the chain; a mask must be a prefix.)
        lengths = mask.sum(-1)
    ll = None if lengths is None else torch.as_tensor(lengths).long()
    key = _ops.config_key(graph, method, options)
    loss = _ops.loss_and_grad(s_n, table, weight, torch.as_tensor(y), ll, key, None)[0]
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


class ExpSoftmaxLoss(nn.Module):
    """Module form of :func:`exp_softmax_loss` for a fixed graph and method.

    ``forward(s_n, s_e, y, lengths=None, mask=None)`` returns the reduced loss.
    """

    def __init__(
        self, graph: Graph, method: str = "auto", reduction: str = "mean", **options: Any
    ) -> None:
        super().__init__()
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be an expsoftmax.Graph, got {type(graph).__name__}")
        if reduction not in _REDUCTIONS:
            raise OptionError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.graph = graph
        self.method = method
        self.reduction = reduction
        self.options = dict(options)

    def forward(
        self,
        s_n: Tensor,
        s_e: Any,
        y: Tensor,
        lengths: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        return exp_softmax_loss(
            s_n,
            s_e,
            y,
            self.graph,
            self.method,
            self.reduction,
            lengths=lengths,
            mask=mask,
            **self.options,
        )

    def extra_repr(self) -> str:
        return f"graph={self.graph!r}, method={self.method!r}, reduction={self.reduction!r}"


def grid_scores(
    node: Tensor, horizontal: Tensor, vertical: Tensor, table: Optional[Tensor] = None
) -> tuple[Tensor, Any]:
    """Image-shaped scores to the flat form of :meth:`expsoftmax.Graph.grid`.

    Args:
        node: ``(B, C, H, W)`` node scores, as a segmentation network writes them.
        horizontal: scores of the edges ``(r, c) -> (r, c+1)``: tables ``(B, H, W-1, C, C)``
            or, with ``table``, weights ``(B, H, W-1)``.
        vertical: scores of the edges ``(r, c) -> (r+1, c)``: ``(B, H-1, W, C, C)`` or
            weights ``(B, H-1, W)``.
        table: ``(C, C)`` (or ``(B, C, C)``) shared table for the weighted form.

    Returns:
        ``(s_n (B, H*W, C), s_e)`` with ``s_e`` ``(B, E, C, C)`` or a ``(weight (B, E),
        table)`` pair, edges in ``Graph.grid`` order. Differentiable (plain reshapes).
    """
    b, c, h, w = node.shape
    s_n = node.permute(0, 2, 3, 1).reshape(b, h * w, c)
    if table is None:
        s_e = torch.cat(
            [horizontal.reshape(b, h * (w - 1), c, c), vertical.reshape(b, (h - 1) * w, c, c)],
            dim=1,
        )
        return s_n, s_e
    weight = torch.cat([horizontal.reshape(b, -1), vertical.reshape(b, -1)], dim=1)
    return s_n, (weight, table)


class GridCRFLoss(nn.Module):
    """Exponential-softmax loss on an ``height x width`` pixel grid with image-shaped inputs:
    ``forward(node (B, C, H, W), horizontal, vertical, y (B, H, W), table=None)``; see
    :func:`grid_scores` for the edge-score shapes. Loopy methods by default (``"bp"``)."""

    def __init__(
        self, height: int, width: int, method: str = "bp", reduction: str = "mean", **options: Any
    ) -> None:
        super().__init__()
        self.graph = Graph.grid(height, width)
        self.loss = ExpSoftmaxLoss(self.graph, method, reduction, **options)

    def forward(
        self,
        node: Tensor,
        horizontal: Tensor,
        vertical: Tensor,
        y: Tensor,
        table: Optional[Tensor] = None,
    ) -> Tensor:
        s_n, s_e = grid_scores(node, horizontal, vertical, table)
        return self.loss(s_n, s_e, y.reshape(y.shape[0], -1))


from ._crf import CRF  # noqa: E402  (it builds on exp_softmax_loss above)
from ._dist import ExpSoftmax  # noqa: E402

__all__ = ["CRF", "ExpSoftmax", "ExpSoftmaxLoss", "GridCRFLoss", "exp_softmax_loss", "grid_scores"]
