"""pytorch-crf's ``CRF`` module, computed by the expsoftmax core.

Kept apart from :mod:`expsoftmax.torch` because TorchScript reads this module's
annotations: no ``from __future__ import annotations`` here, and ``typing.List`` where
TorchScript expects it.
"""

import functools
from typing import List, Optional

import torch
from torch import Tensor, nn

from .api import decode
from .graph import Graph
from .torch import _numpy, exp_softmax_loss


@functools.lru_cache(maxsize=64)
def _chain(n: int) -> Graph:
    return Graph.chain(n)


def _fold(emissions: Tensor, mask: Optional[Tensor], start: Tensor, end: Tensor, batch_first: bool):
    """Batch-first node scores with the start and end scores folded into each sequence's
    first and last real position, and the mask as bool. (A function, not a method: methods
    that TorchScript ignores are called unbound.)"""
    em = emissions if batch_first else emissions.transpose(0, 1)
    b, t, _ = em.shape
    if mask is None:
        mk = torch.ones(b, t, dtype=torch.bool, device=em.device)
    else:
        mk = (mask if batch_first else mask.transpose(0, 1)).bool()
    last = torch.nn.functional.one_hot(mk.sum(1) - 1, t).to(em.dtype)  # (B, T)
    first = torch.zeros(t, dtype=em.dtype, device=em.device)
    first[0] = 1
    s_n = em + first[None, :, None] * start + last[:, :, None] * end
    return s_n, mk


class CRF(nn.Module):
    """A linear-chain CRF with pytorch-crf's interface (``torchcrf.CRF``), computed by the
    expsoftmax core: start and end scores are folded into the first and last real node
    scores, and the log-likelihood is ``-(log Z - s(y))`` from exact sum-product.

    Args:
        num_tags: number of tags ``C``.
        batch_first: emissions ``(batch, seq, C)`` when True, else ``(seq, batch, C)``.

    Parameters ``start_transitions (C,)``, ``end_transitions (C,)`` and ``transitions
    (C, C)`` (``transitions[i, j]`` scores tag ``i`` followed by tag ``j``), initialised
    uniformly in [-0.1, 0.1]. Masks (bool or uint8) mark the real prefix of each sequence
    and must have the first timestep on. Works under ``torch.jit.script`` (the core calls
    run in Python).
    """

    def __init__(self, num_tags: int, batch_first: bool = False) -> None:
        if num_tags <= 0:
            raise ValueError(f"invalid number of tags: {num_tags}")
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draws every parameter uniformly from [-0.1, 0.1]."""
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_tags={self.num_tags})"

    def forward(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Optional[Tensor] = None,
        reduction: str = "sum",
    ) -> Tensor:
        """Log-likelihood of ``tags`` ``(seq, batch)`` (or ``(batch, seq)``): per sequence
        for ``reduction="none"``, else summed, averaged over sequences (``"mean"``) or over
        real tokens (``"token_mean"``)."""
        self._validate(emissions, tags, mask)
        if reduction not in ("none", "sum", "mean", "token_mean"):
            raise ValueError("invalid reduction: " + reduction)
        llh = self._log_likelihood(emissions, tags, mask)
        if reduction == "none":
            return llh
        if reduction == "sum":
            return llh.sum()
        if reduction == "mean":
            return llh.mean()
        if mask is None:
            return llh.sum() / float(tags.numel())
        return llh.sum() / mask.float().sum()

    @torch.jit.export
    def decode(self, emissions: Tensor, mask: Optional[Tensor] = None) -> List[List[int]]:
        """The best tag sequence of each item (exact Viterbi), as lists cut at the mask."""
        self._validate(emissions, None, mask)
        return self._viterbi(emissions, mask)

    @torch.jit.ignore
    def _validate(self, emissions: Tensor, tags: Optional[Tensor], mask: Optional[Tensor]) -> None:
        if emissions.dim() != 3:
            raise ValueError(f"emissions must have dimension of 3, got {emissions.dim()}")
        if emissions.size(2) != self.num_tags:
            raise ValueError(
                f"expected last dimension of emissions is {self.num_tags}, got {emissions.size(2)}"
            )
        lead = tuple(emissions.shape[:2])
        if tags is not None and lead != tuple(tags.shape):
            raise ValueError(
                "the first two dimensions of emissions and tags must match, "
                f"got {lead} and {tuple(tags.shape)}"
            )
        if mask is not None:
            if lead != tuple(mask.shape):
                raise ValueError(
                    "the first two dimensions of emissions and mask must match, "
                    f"got {lead} and {tuple(mask.shape)}"
                )
            first = mask[:, 0] if self.batch_first else mask[0]
            if not bool(first.all()):
                raise ValueError("mask of the first timestep must all be on")

    @torch.jit.ignore
    def _log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Optional[Tensor]) -> Tensor:
        s_n, mk = _fold(
            emissions, mask, self.start_transitions, self.end_transitions, self.batch_first
        )
        y = tags if self.batch_first else tags.transpose(0, 1)
        loss = exp_softmax_loss(
            s_n, self.transitions[None], y, _chain(s_n.shape[1]), "exact", "none", mask=mk
        )
        return -loss

    @torch.jit.ignore
    def _viterbi(self, emissions: Tensor, mask: Optional[Tensor]) -> List[List[int]]:
        with torch.no_grad():
            s_n, mk = _fold(
                emissions, mask, self.start_transitions, self.end_transitions, self.batch_first
            )
            y = decode(
                _chain(s_n.shape[1]),
                _numpy(s_n),
                _numpy(self.transitions[None]),
                method="exact",
                mask=mk.cpu().numpy(),
            )
        lengths = mk.sum(1).tolist()
        return [row[:n] for row, n in zip(y.tolist(), lengths)]
