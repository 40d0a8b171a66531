"""expsoftmax.torch.CRF: pytorch-crf's interface, computed by the core. Checked against
enumeration (start, end and transition scores included), against pytorch-crf itself where
it is installed, and under TorchScript."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from expsoftmax.torch import CRF  # noqa: E402


def _brute(crf, em, tags, length):
    """(log-likelihood, best tags) of one sequence (seq, C) by enumeration, float64."""
    em = em[:length].detach().double()
    start = crf.start_transitions.detach().double()
    end, trans = crf.end_transitions.detach().double(), crf.transitions.detach().double()

    def score(y):
        s = start[y[0]] + end[y[-1]] + sum(em[i, t] for i, t in enumerate(y))
        return s + sum(trans[a, b] for a, b in zip(y, y[1:]))

    ys = list(itertools.product(range(crf.num_tags), repeat=length))
    scores = torch.stack([score(y) for y in ys])
    best = list(ys[int(torch.argmax(scores))])
    return float(score(list(tags[:length])) - torch.logsumexp(scores, 0)), best


def _data(batch_first, seq=4, batch=3, c=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    crf = CRF(c, batch_first=batch_first)
    em = torch.randn(seq, batch, c, generator=gen)
    tags = torch.randint(0, c, (seq, batch), generator=gen)
    mask = torch.ones(seq, batch, dtype=torch.uint8)
    mask[3:, 1] = 0
    mask[2:, 2] = 0
    if batch_first:
        em, tags, mask = em.transpose(0, 1), tags.transpose(0, 1), mask.transpose(0, 1)
    return crf, em.requires_grad_(), tags, mask


@pytest.mark.parametrize("batch_first", [False, True])
def test_log_likelihood_and_decode_match_enumeration(batch_first):
    crf, em, tags, mask = _data(batch_first)
    llh = crf(em, tags, mask=mask, reduction="none")
    best = crf.decode(em, mask=mask)
    bf = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))
    lengths = bf(mask).sum(1).tolist()
    for b in range(3):
        ref, ref_best = _brute(crf, bf(em)[b].detach(), bf(tags)[b].tolist(), lengths[b])
        assert abs(float(llh[b]) - ref) < 1e-5
        assert best[b] == ref_best and len(best[b]) == lengths[b]
    total = crf(em, tags, mask=mask)  # 'sum' is the default, as in pytorch-crf
    assert torch.allclose(total, llh.sum())
    assert torch.allclose(crf(em, tags, mask=mask, reduction="mean"), llh.mean())
    token_mean = crf(em, tags, mask=mask, reduction="token_mean")
    assert torch.allclose(token_mean, llh.sum() / mask.float().sum())
    total.backward()
    assert crf.transitions.grad is not None and crf.start_transitions.grad is not None
    # bool masks work like uint8 masks; no mask means all on.
    assert torch.allclose(crf(em, tags, mask=mask.bool()), total)
    assert torch.allclose(crf(em, tags), crf(em, tags, mask=torch.ones_like(mask)))


def test_errors_are_pytorch_crfs():
    with pytest.raises(ValueError, match="invalid number of tags: 0"):
        CRF(0)
    crf, em, tags, mask = _data(False)
    with pytest.raises(ValueError, match="invalid reduction: foo"):
        crf(em, tags, reduction="foo")
    with pytest.raises(ValueError, match="emissions must have dimension of 3, got 2"):
        crf(em[0], tags)
    with pytest.raises(ValueError, match="expected last dimension of emissions is 3, got 2"):
        crf(em[..., :2], tags)
    with pytest.raises(ValueError, match=r"emissions and tags must match, got \(4, 3\)"):
        crf(em, tags[:2])
    bad = mask.clone()
    bad[0, 1] = 0
    with pytest.raises(ValueError, match="mask of the first timestep must all be on"):
        crf(em, tags, mask=bad)
    with pytest.raises(ValueError, match="mask of the first timestep must all be on"):
        crf.decode(em, mask=bad)
    assert repr(crf) == "CRF(num_tags=3)"
    p = (crf.start_transitions, crf.end_transitions, crf.transitions)
    assert all(isinstance(x, torch.nn.Parameter) and x.abs().max() <= 0.1 for x in p)


def test_scripted_module_gives_the_same_answers():
    crf, em, tags, mask = _data(True)
    scripted = torch.jit.script(crf)
    assert torch.allclose(scripted(em, tags, mask, "none"), crf(em, tags, mask, "none"))
    assert scripted.decode(em, mask) == crf.decode(em, mask)


def test_agrees_with_pytorch_crf():
    torchcrf = pytest.importorskip("torchcrf")
    ours, em, tags, mask = _data(False, seq=12, batch=8, c=5, seed=3)
    theirs = torchcrf.CRF(5)
    theirs.load_state_dict(ours.state_dict())
    a = ours(em, tags, mask=mask, reduction="none")
    b = theirs(em, tags, mask=mask, reduction="none")
    assert torch.allclose(a, b, atol=1e-4)
    ga = torch.autograd.grad(a.sum(), (em, ours.transitions))
    gb = torch.autograd.grad(b.sum(), (em, theirs.transitions))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))
    assert ours.decode(em, mask) == theirs.decode(em, mask)
    assert np.isfinite(a.detach().numpy()).all()
