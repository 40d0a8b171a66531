"""The PyTorch loss: values, gradients (gradcheck), reductions, dtypes, modules."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import expsoftmax as es  # noqa: E402
from expsoftmax.torch import ExpSoftmaxLoss, exp_softmax_loss  # noqa: E402


def _inputs(dtype, shared, batch=(3,), n=5, c=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s_n = torch.randn(*batch, n, c, dtype=dtype, generator=gen, requires_grad=True)
    e_shape = (1, c, c) if shared else (*batch, n - 1, c, c)
    s_e = torch.randn(*e_shape, dtype=dtype, generator=gen, requires_grad=True)
    y = torch.randint(0, c, (*batch, n), generator=gen)
    return s_n, s_e, y


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck(shared, reduction):
    g = es.Graph.chain(5)
    s_n, s_e, y = _inputs(torch.float64, shared)
    assert torch.autograd.gradcheck(
        lambda a, b: exp_softmax_loss(a, b, y, g, reduction=reduction), (s_n, s_e)
    )


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradcheck_through_the_batch_major_chain_kernel(reduction):
    # A batch of 9 chains sharing one table: the batch-major kernel, with the upstream
    # gradient of reduction="none" arriving as per-item weights.
    g = es.Graph.chain(5)
    s_n, s_e, y = _inputs(torch.float64, True, batch=(9,))
    assert torch.autograd.gradcheck(
        lambda a, b: exp_softmax_loss(a, b, y, g, reduction=reduction), (s_n, s_e)
    )


def test_gradcheck_on_a_tree_with_batch_shape():
    g = es.Graph.tree([-1, 0, 0, 1, 1])
    gen = torch.Generator().manual_seed(1)
    s_n = torch.randn(2, 2, 5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    s_e = torch.randn(2, 1, 4, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randint(0, 3, (2, 2, 5), generator=gen)
    assert torch.autograd.gradcheck(
        lambda a, b: exp_softmax_loss(a, b, y, g, reduction="none"), (s_n, s_e)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_equal_the_numpy_api(dtype):
    g = es.Graph.chain(5)
    s_n, s_e, y = _inputs(dtype, shared=True)
    loss = exp_softmax_loss(s_n, s_e, y, g, reduction="mean")
    loss.backward()
    ref_loss, gn, ge = es.loss_and_grad(g, s_n.detach().numpy(), s_e.detach().numpy(), y.numpy())
    assert loss.dtype == dtype and s_n.grad.dtype == dtype and s_e.grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert abs(loss.item() - ref_loss.mean()) < tol * 10
    np.testing.assert_allclose(s_n.grad.numpy(), gn / 3, atol=tol)
    np.testing.assert_allclose(s_e.grad.numpy(), ge / 3, atol=tol)


def test_reductions_and_module():
    g = es.Graph.chain(5)
    s_n, s_e, y = _inputs(torch.float64, shared=False, batch=(2, 3))
    none = exp_softmax_loss(s_n, s_e, y, g, reduction="none")
    assert none.shape == (2, 3)
    assert torch.allclose(exp_softmax_loss(s_n, s_e, y, g, reduction="sum"), none.sum())
    assert torch.allclose(exp_softmax_loss(s_n, s_e, y, g), none.mean())
    mod = ExpSoftmaxLoss(g, reduction="sum")
    assert isinstance(mod, torch.nn.Module)
    assert torch.allclose(mod(s_n, s_e, y), none.sum())
    with pytest.raises(ValueError, match="reduction"):
        exp_softmax_loss(s_n, s_e, y, g, reduction="avg")
    with pytest.raises(ValueError, match="unknown option"):
        exp_softmax_loss(s_n, s_e, y, g, bogus=1)
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        exp_softmax_loss(s_n.long(), s_e, y, g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_answered_in_its_dtype(dtype):
    g = es.Graph.chain(5)
    s_n, s_e, y = _inputs(torch.float32, shared=True, batch=(3,), n=5)
    ref = exp_softmax_loss(s_n, s_e, y, g, reduction="sum")
    ref_n, ref_e = torch.autograd.grad(ref, (s_n, s_e))
    a = s_n.detach().to(dtype).requires_grad_()
    b = s_e.detach().to(dtype).requires_grad_()
    loss = exp_softmax_loss(a, b, y, g, reduction="sum")
    loss.backward()
    assert loss.dtype == dtype and a.grad.dtype == dtype and b.grad.dtype == dtype
    # The inputs were rounded to half precision; everything after that ran in float32.
    ours = exp_softmax_loss(a.detach().float(), b.detach().float(), y, g, reduction="sum")
    assert torch.allclose(loss.float(), ours.to(torch.float32).to(dtype).float())
    assert torch.allclose(a.grad.float(), ref_n, atol=0.05)
    assert torch.allclose(b.grad.float(), ref_e, atol=0.2)


def test_differentiating_the_gradient_again_raises_instead_of_returning_zero():
    # (The exact method on forests has exact second derivatives: test_distribution.)
    g = es.Graph.chain(4)
    for method in ("bp", "trw", "gibbs"):
        s_n, s_e, y = _inputs(torch.float64, shared=True, batch=(2,), n=4)
        loss = exp_softmax_loss(s_n, s_e, y, g, method=method)
        (gn,) = torch.autograd.grad(loss, s_n, create_graph=True)
        assert gn.requires_grad
        with pytest.raises(RuntimeError, match=f"second derivatives.*{method}"):
            torch.autograd.grad((gn**2).sum(), s_n)
        # Once-only differentiation is unaffected.
        assert torch.autograd.grad(exp_softmax_loss(s_n, s_e, y, g, method=method), s_n)


def test_the_module_takes_a_mask():
    g = es.Graph.chain(6)
    s_n, s_e, y = _inputs(torch.float64, shared=True, batch=(3,), n=6)
    lengths = torch.tensor([6, 2, 4])
    mask = torch.arange(6) < lengths[:, None]
    mod = ExpSoftmaxLoss(g, reduction="none")
    assert torch.equal(mod(s_n, s_e, y, mask=mask), mod(s_n, s_e, y, lengths=lengths))


def test_lengths_in_torch_zero_gradient_on_padding():
    g = es.Graph.chain(6)
    s_n, s_e, y = _inputs(torch.float64, shared=True, batch=(3,), n=6)
    lengths = torch.tensor([6, 2, 4])
    loss = exp_softmax_loss(s_n, s_e, y, g, reduction="sum", lengths=lengths)
    loss.backward()
    assert (s_n.grad[1, 2:] == 0).all() and (s_n.grad[2, 4:] == 0).all()
    assert torch.autograd.gradcheck(
        lambda a, b: exp_softmax_loss(a, b, y, g, reduction="none", lengths=lengths),
        (s_n.detach().requires_grad_(), s_e.detach().requires_grad_()),
    )


def test_training_step_reduces_the_loss():
    """A few SGD steps on the scores lower the loss, as the gradient promises."""
    g = es.Graph.chain(8)
    s_n, s_e, y = _inputs(torch.float32, shared=True, batch=(4,), n=8, c=4)
    opt = torch.optim.SGD([s_n, s_e], lr=0.5)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = exp_softmax_loss(s_n, s_e, y, g)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_forbidden_transitions_keep_gradients_finite():
    g = es.Graph.chain(4)
    t = torch.zeros(1, 3, 3, dtype=torch.float64)
    t[0, 0, 2] = -float("inf")
    t.requires_grad_()
    s_n = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0, 1, 2, 2], [0, 0, 2, 1]])  # item 1 uses the forbidden 0 -> 2
    loss = exp_softmax_loss(s_n, t, y, g, reduction="none")
    assert torch.isfinite(loss[0]) and loss[1] == float("inf")
    loss[0].backward()
    assert torch.isfinite(s_n.grad).all() and not torch.isnan(t.grad).any()


def test_weighted_edges_and_loopy_methods_in_torch():
    """Contrast-sensitive Potts form on a grid with loopy BP: gradients reach both the
    per-edge weights and the shared table (gradcheck at a converged fixed point)."""
    g = es.Graph.grid(2, 3)
    gen = torch.Generator().manual_seed(3)
    s_n = torch.randn(2, 6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(2, g.num_edges, dtype=torch.float64, generator=gen).requires_grad_()
    table = (torch.randn(3, 3, dtype=torch.float64, generator=gen) * 0.5).requires_grad_()
    y = torch.randint(0, 3, (2, 6), generator=gen)
    opts = dict(method="bp", tol=1e-13, max_iter=1000, damping=0.2)
    assert torch.autograd.gradcheck(
        lambda a, b, c: exp_softmax_loss(a, (b, c), y, g, reduction="none", **opts),
        (s_n, w, table),
        atol=1e-5,
    )
    for m in ("trw", "mean_field"):
        loss = exp_softmax_loss(s_n, (w, table), y, g, method=m, tol=1e-10)
        loss.backward()
        assert torch.isfinite(w.grad).all() and torch.isfinite(table.grad).all()
        w.grad = table.grad = s_n.grad = None


def test_gibbs_loss_module_gradients_are_sampled_marginals_minus_gold():
    # A 3 x 3 grid: the loss is AIS log Z - s(y), the gradient sampled marginals - gold;
    # both within Monte Carlo error of the exact values (brute force).
    from oracle import brute_force

    g = es.Graph.grid(3, 3)
    gen = torch.Generator().manual_seed(5)
    s_n = torch.randn(2, 9, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    s_e = (0.5 * torch.randn(1, 3, 3, dtype=torch.float64, generator=gen)).requires_grad_()
    y = torch.randint(0, 3, (2, 9), generator=gen)
    loss_fn = ExpSoftmaxLoss(g, method="gibbs", reduction="sum", num_samples=4000, seed=1)
    loss = loss_fn(s_n, s_e, y)
    loss.backward()
    want_loss, want_gn = 0.0, []
    for b in range(2):
        full = np.broadcast_to(s_e.detach().numpy()[0], (g.num_edges, 3, 3))
        lz, node, _, _, _ = brute_force(g, s_n[b].detach().numpy(), full)
        yb = y[b].numpy()
        gold = s_n[b].detach().numpy()[np.arange(9), yb].sum()
        gold += full[np.arange(g.num_edges), yb[g.edges[:, 0]], yb[g.edges[:, 1]]].sum()
        want_loss += lz - gold
        gn = node.copy()
        gn[np.arange(9), yb] -= 1
        want_gn.append(gn)
    assert abs(loss.item() - want_loss) < 0.3
    np.testing.assert_allclose(s_n.grad.numpy(), np.array(want_gn), atol=0.05)
    assert s_e.grad.shape == (1, 3, 3) and torch.isfinite(s_e.grad).all()


def _counting(monkeypatch):
    import expsoftmax.torch as et

    calls = []
    real = et._loss_and_grad

    def counted(*a, **kw):
        calls.append(kw.get("weights"))
        return real(*a, **kw)

    monkeypatch.setattr(et, "_loss_and_grad", counted)
    return calls


@pytest.mark.parametrize("edge_batch", [(4,), ()])
def test_backward_reuses_the_forward_pass(monkeypatch, edge_batch):
    # Per-item tables: any upstream gradient scales the forward's per-item gradients (one
    # core call in all). A table shared by the items: uniform upstream gradients reuse the
    # forward's sum; a non-uniform one needs the per-item terms (a second call).
    calls = _counting(monkeypatch)
    g = es.Graph.chain(6)
    gen = torch.Generator().manual_seed(3)
    s_n = torch.randn(4, 6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    s_e = torch.randn(*edge_batch, 5, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randint(0, 3, (4, 6), generator=gen)
    w = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    (exp_softmax_loss(s_n, s_e, y, g, reduction="none") * w).sum().backward()
    assert len(calls) == (1 if edge_batch else 2)
    _, gn, ge = es.loss_and_grad(g, s_n.detach().numpy(), s_e.detach().numpy(), y.numpy())
    np.testing.assert_allclose(s_n.grad.numpy(), gn * w.numpy()[:, None, None], atol=1e-12)
    if edge_batch:
        np.testing.assert_allclose(
            s_e.grad.numpy(), ge * w.numpy()[:, None, None, None], atol=1e-12
        )
    calls.clear()
    s_n.grad = s_e.grad = None
    exp_softmax_loss(s_n, s_e, y, g, reduction="mean").backward()
    assert len(calls) == 1
    np.testing.assert_allclose(s_n.grad.numpy(), gn / 4, atol=1e-12)


def test_a_second_backward_through_a_retained_graph_gives_the_same_gradients():
    g = es.Graph.chain(5)
    s_n, s_e, y = _inputs(torch.float64, shared=False)
    loss = exp_softmax_loss(s_n, s_e, y, g, reduction="mean")
    loss.backward(retain_graph=True)
    first = (s_n.grad.clone(), s_e.grad.clone())
    s_n.grad = s_e.grad = None
    loss.backward()
    assert torch.equal(s_n.grad, first[0]) and torch.equal(s_e.grad, first[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("shared", [False, True])
def test_reduced_losses_scale_their_gradients_like_torchs_own_reduction(dtype, reduction, shared):
    # The reduced loss scales the forward's gradients by the scalar upstream gradient
    # (divided by the item count for "mean", in the loss's dtype); the reference is the
    # per-item loss reduced by torch itself, with the same upstream factor.
    g = es.Graph.chain(5)
    s_n, s_e, y = _inputs(torch.float64, shared, batch=(7,))
    a, b = (t.detach().to(dtype).requires_grad_() for t in (s_n, s_e))
    (exp_softmax_loss(a, b, y, g, reduction=reduction) * 3.7).backward()
    ra, rb = (t.detach().to(dtype).requires_grad_() for t in (s_n, s_e))
    none = exp_softmax_loss(ra, rb, y, g, reduction="none")
    (getattr(none, reduction)() * 3.7).backward()
    tol = {torch.float32: 1e-6, torch.float64: 1e-14, torch.float16: 2e-3}[dtype]
    for got, want in ((a.grad, ra.grad), (b.grad, rb.grad)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got.double().numpy(), want.double().numpy(), rtol=tol, atol=tol)
    # And the value of the gradient: 3.7 × (marginals − gold), over 7 items for "mean".
    _, gn, _ = es.loss_and_grad(g, s_n.detach().numpy(), s_e.detach().numpy(), y.numpy())
    want = gn * 3.7 / (7 if reduction == "mean" else 1)
    np.testing.assert_allclose(a.grad.double().numpy(), want, atol=max(tol, 1e-12) * 10)
