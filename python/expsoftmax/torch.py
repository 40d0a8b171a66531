"""PyTorch loss: ``loss = log Z − s(y)`` whose backward is ``marginals − gold``.

Import this module explicitly (``import expsoftmax.torch``); the rest of the package
works without torch. Tensors on any device are computed on the CPU by the Rust core and
their gradients are returned on the tensors' own device.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .api import _loss_and_grad
from .errors import DTypeError, OptionError
from .graph import Graph

_REDUCTIONS = ("none", "sum", "mean")
_TORCH_FLOATS = (torch.float32, torch.float64)


def _numpy(t: Any) -> Any:
    if isinstance(t, Tensor):
        return t.detach().cpu().numpy()
    return t


class _ExpSoftmaxLossFn(torch.autograd.Function):
    """Per-item loss; gradients computed together with the loss in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        s_n: Tensor,
        s_e: Tensor,
        y: Any,
        graph: Graph,
        method: str,
        lengths: Any,
        options: dict[str, Any],
    ) -> Tensor:
        sn, se, yy, ll = _numpy(s_n), _numpy(s_e), _numpy(y), _numpy(lengths)
        loss, gn, ge = _loss_and_grad(graph, sn, se, yy, method, ll, options, None)
        ctx.args = (graph, sn, se, yy, method, ll, options)
        ctx.grads = (gn, ge)
        ctx.meta = (s_n.device, s_n.dtype, s_e.device, s_e.dtype, loss.shape)
        return torch.from_numpy(np.ascontiguousarray(loss)).to(device=s_n.device, dtype=s_n.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        dn, tn, de, te, shape = ctx.meta
        gw = g.detach().to("cpu", torch.float64).numpy().reshape(shape)
        if gw.size and np.all(gw == gw.flat[0]):
            # Upstream gradient the same for every item (reduction "sum"/"mean"): the
            # forward pass's summed gradient, scaled.
            # A Python float keeps the gradients' dtype (no float64 copy), and 1.0 is skipped.
            scale = float(gw.flat[0])
            gn, ge = (x if scale == 1.0 else x * scale for x in ctx.grads)
        else:
            gn, ge = _loss_and_grad(*ctx.args, weights=gw)[1:]
        need_n, need_e = ctx.needs_input_grad[:2]
        out_n = (
            torch.from_numpy(np.ascontiguousarray(gn)).to(device=dn, dtype=tn) if need_n else None
        )
        out_e = (
            torch.from_numpy(np.ascontiguousarray(ge)).to(device=de, dtype=te) if need_e else None
        )
        return out_n, out_e, None, None, None, None, None


def _check(reduction: str, s_n: Any, s_e: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise OptionError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    for name, t in (("s_n", s_n), ("s_e", s_e)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _TORCH_FLOATS:
            raise DTypeError(f"{name} must be float32 or float64, got {t.dtype}")


def exp_softmax_loss(
    s_n: Tensor,
    s_e: Tensor,
    y: Tensor,
    graph: Graph,
    method: str = "auto",
    reduction: str = "mean",
    *,
    lengths: Optional[Tensor] = None,
    **options: Any,
) -> Tensor:
    """Exponential-softmax loss ``log Z − s(y)``.

    Args:
        s_n: node scores ``(..., I, C)``, float32 or float64.
        s_e: edge scores ``(..., E, C, C)`` (edge axis 1 = one shared table); batch axes
            broadcast with ``s_n``'s.
        y: gold labels ``(..., I)``, integer tensor or array.
        graph: the :class:`expsoftmax.Graph`.
        method: inference method (``"auto"``: exact on forests).
        reduction: ``"none"`` (per item, shape ``(...)``), ``"sum"`` or ``"mean"`` over items.
        lengths: for chains, ``(...)`` real lengths; padded positions add nothing.

    Returns:
        The loss; its backward gives ``marginals − gold`` to ``s_n`` and ``s_e``.
    """
    _check(reduction, s_n, s_e)
    loss = _ExpSoftmaxLossFn.apply(s_n, s_e, y, graph, method, lengths, options)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


class ExpSoftmaxLoss(nn.Module):
    """Module form of :func:`exp_softmax_loss` for a fixed graph and method.

    ``forward(s_n, s_e, y, lengths=None)`` returns the reduced loss.
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
        self, s_n: Tensor, s_e: Tensor, y: Tensor, lengths: Optional[Tensor] = None
    ) -> Tensor:
        return exp_softmax_loss(
            s_n, s_e, y, self.graph, self.method, self.reduction, lengths=lengths, **self.options
        )

    def extra_repr(self) -> str:
        return f"graph={self.graph!r}, method={self.method!r}, reduction={self.reduction!r}"


__all__ = ["ExpSoftmaxLoss", "exp_softmax_loss"]
