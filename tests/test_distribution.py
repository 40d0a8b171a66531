"""expsoftmax.torch.ExpSoftmax against enumeration: log Z, marginals, entropy, KL, cross
entropy, log_prob, top-k, sampling frequencies; first and exact second derivatives
(gradcheck, gradgradcheck) of the distribution and of the loss; the clear error for a
second derivative with a loopy method; half precision."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import expsoftmax as es  # noqa: E402
from expsoftmax.torch import ExpSoftmax, exp_softmax_loss  # noqa: E402
from oracle import labellings, random_forest, scores_of  # noqa: E402

F64 = torch.float64


def _tree() -> es.Graph:
    # Both edge orientations and two components.
    return es.Graph(6, [(1, 0), (1, 2), (3, 1), (5, 4)])


def _scores(graph, c=3, batch=(2,), shared=False, seed=0, scale=1.5):
    gen = torch.Generator().manual_seed(seed)
    s_n = scale * torch.randn(*batch, graph.num_nodes, c, generator=gen, dtype=F64)
    e = 1 if shared else graph.num_edges
    s_e = scale * torch.randn(*batch, e, c, c, generator=gen, dtype=F64)
    return s_n.requires_grad_(), s_e.requires_grad_()


def _brute(graph, s_n, s_e):
    """Per item: (log Z, node marginals, edge marginals, entropy, log-probs, scores, ys)."""
    sn, se = s_n.detach().numpy(), s_e.detach().numpy()
    c = sn.shape[-1]
    ys = labellings(graph.num_nodes, c)
    s = scores_of(graph, sn, se, ys)
    log_z = np.logaddexp.reduce(s)
    p = np.exp(s - log_z)
    node = np.zeros((graph.num_nodes, c))
    edge = np.zeros((graph.num_edges, c, c))
    for i in range(graph.num_nodes):
        np.add.at(node[i], ys[:, i], p)
    for k, (a, b) in enumerate(graph.edges):
        np.add.at(edge[k], (ys[:, a], ys[:, b]), p)
    ent = -np.sum(p * (s - log_z))
    return log_z, node, edge, ent, s - log_z, s, ys


@pytest.mark.parametrize("shared", [False, True])
def test_log_partition_marginals_entropy_match_enumeration(shared):
    g = _tree()
    s_n, s_e = _scores(g, shared=shared)
    d = ExpSoftmax(g, s_n, s_e)
    mu_n, mu_e = d.marginals
    assert d.batch_shape == (2,)
    assert d.method_used == "exact"
    for b in range(2):
        lz, node, edge, ent, _, _, _ = _brute(g, s_n[b], s_e[min(b, s_e.shape[0] - 1)])
        assert d.log_partition[b].item() == pytest.approx(lz, abs=1e-10)
        np.testing.assert_allclose(mu_n[b].detach(), node, atol=1e-10)
        np.testing.assert_allclose(mu_e[b].detach(), edge, atol=1e-10)
        assert d.entropy[b].item() == pytest.approx(ent, abs=1e-10)


def test_log_prob_score_and_kl_match_enumeration():
    g = _tree()
    s_n, s_e = _scores(g, batch=(), seed=1)
    t_n, t_e = _scores(g, batch=(), seed=2)
    p, q = ExpSoftmax(g, s_n, s_e), ExpSoftmax(g, t_n, t_e)
    _, _, _, ent_p, lp, sp, ys = _brute(g, s_n, s_e)
    _, _, _, _, lq, _, _ = _brute(g, t_n, t_e)
    y = torch.from_numpy(ys)
    np.testing.assert_allclose(p.score(y).detach(), sp, atol=1e-10)
    np.testing.assert_allclose(p.log_prob(y).detach(), lp, atol=1e-10)
    pp = np.exp(lp)
    assert p.kl(q).item() == pytest.approx(np.sum(pp * (lp - lq)), abs=1e-10)
    assert p.cross_entropy(q).item() == pytest.approx(-np.sum(pp * lq), abs=1e-10)
    assert p.kl(p).item() == pytest.approx(0.0, abs=1e-10)
    assert p.cross_entropy(p).item() == pytest.approx(ent_p, abs=1e-10)


def test_kl_is_infinite_where_other_forbids_what_self_allows():
    g = es.Graph.chain(3)
    s_n, s_e = _scores(g, batch=(), seed=3)
    t_n = s_n.detach().clone()
    t_n[1, 2] = float("-inf")
    p, q = ExpSoftmax(g, s_n, s_e), ExpSoftmax(g, t_n, s_e)
    assert p.kl(q).item() == float("inf")
    assert np.isfinite(q.kl(p).item())
    assert np.isfinite(q.entropy.item())


def test_topk_is_the_k_best_labellings_in_order():
    g = _tree()
    s_n, s_e = _scores(g, c=2, batch=(2,), seed=4)
    d = ExpSoftmax(g, s_n, s_e)
    total = 2**g.num_nodes
    labels, scores = d.topk(total + 3)
    assert labels.shape == (total + 3, 2, g.num_nodes) and labels.dtype == torch.long
    for b in range(2):
        _, _, _, _, _, s, _ = _brute(g, s_n[b], s_e[b])
        np.testing.assert_allclose(scores[:total, b].detach(), np.sort(s)[::-1], atol=1e-10)
        got = {tuple(r) for r in labels[:total, b].tolist()}
        assert len(got) == total
        assert torch.all(labels[total:, b] == -1) and torch.all(scores[total:, b] == -np.inf)
        # Each row's score is the score of its labelling, and the first is the argmax.
        np.testing.assert_allclose(
            scores[:total, b].detach(), d.score(labels[:total])[:, b].detach(), atol=1e-12
        )
    assert torch.equal(labels[0], d.argmax)
    # Scores are differentiable (s(y) is linear in the scores).
    scores[0].sum().backward()
    assert s_n.grad is not None and s_n.grad.sum().item() == pytest.approx(2 * g.num_nodes)


def test_topk_with_lengths_and_on_a_random_forest():
    rng = np.random.default_rng(5)
    g = random_forest(rng, 5)
    s_n, s_e = _scores(g, c=3, batch=(), seed=5)
    labels, scores = ExpSoftmax(g, s_n, s_e).topk(7)
    _, _, _, _, _, s, _ = _brute(g, s_n, s_e)
    np.testing.assert_allclose(scores.detach(), np.sort(s)[::-1][:7], atol=1e-10)
    c = es.Graph.chain(4)
    sn, se = _scores(c, c=2, batch=(2,), shared=True, seed=6)
    lab, sc = ExpSoftmax(c, sn, se, lengths=torch.tensor([2, 4])).topk(5)
    # Item 0 has length 2: 4 labellings, padded positions -1, then an empty row.
    assert torch.all(lab[:4, 0, 2:] == -1) and torch.all(lab[4, 0] == -1)
    assert sc[4, 0].item() == -np.inf and torch.isfinite(sc[:, 1]).all()
    _, _, _, _, _, s2, _ = _brute(es.Graph.chain(2), sn[0, :2], se[0])
    np.testing.assert_allclose(sc[:4, 0].detach(), np.sort(s2)[::-1], atol=1e-10)


def test_sampling_frequencies_are_within_binomial_bounds():
    g = es.Graph.chain(3)
    s_n, s_e = _scores(g, c=2, batch=(), seed=7, scale=0.7)
    d = ExpSoftmax(g, s_n, s_e)
    n = 20000
    y = d.sample(n, seed=11)
    assert y.shape == (n, 3) and y.dtype == torch.long
    _, _, _, _, lp, _, ys = _brute(g, s_n, s_e)
    codes = (y * torch.tensor([1, 2, 4])).sum(-1)
    freq = torch.bincount(codes, minlength=8).double() / n
    p = np.exp(lp)[np.argsort((ys * [1, 2, 4]).sum(1))]
    # 5 standard errors per cell: a failure is a wrong sampler, not bad luck.
    np.testing.assert_array_less(np.abs(freq.numpy() - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)
    assert torch.equal(d.sample(5, seed=3), d.sample(5, seed=3))


def test_gradients_first_and_second_order():
    g = _tree()
    s_n, s_e = _scores(g, c=2, batch=(2,), seed=8)
    t_n, t_e = _scores(g, c=2, batch=(2,), seed=9)

    def log_z(a, b):
        return ExpSoftmax(g, a, b).log_partition

    def entropy(a, b):
        return ExpSoftmax(g, a, b).entropy

    def kl(a, b):
        return ExpSoftmax(g, a, b).kl(ExpSoftmax(g, t_n.detach(), t_e.detach()))

    def marg(a, b):
        return ExpSoftmax(g, a, b).marginals

    for f in (log_z, entropy, kl, marg):
        assert torch.autograd.gradcheck(f, (s_n, s_e))
    assert torch.autograd.gradgradcheck(log_z, (s_n, s_e))
    # Third derivatives of log Z (the entropy's second) are refused, not silently zero.
    gn, _ = torch.autograd.grad(entropy(s_n, s_e).sum(), (s_n, s_e), create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives"):
        gn.sum().backward()
    # A shared table broadcast over edges and items.
    sh_n, sh_e = _scores(g, c=2, batch=(2,), shared=True, seed=10)
    assert torch.autograd.gradgradcheck(log_z, (sh_n, sh_e[:1]))


def test_gradient_of_log_partition_is_the_marginals():
    g = _tree()
    s_n, s_e = _scores(g, seed=12)
    d = ExpSoftmax(g, s_n, s_e)
    gn, ge = torch.autograd.grad(d.log_partition.sum(), (s_n, s_e))
    mu_n, mu_e = d.marginals
    torch.testing.assert_close(gn, mu_n.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(ge, mu_e.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_gradgradcheck(reduction):
    g = es.Graph.chain(4)
    s_n, s_e = _scores(g, c=3, batch=(2,), seed=13)
    y = torch.randint(0, 3, (2, 4), generator=torch.Generator().manual_seed(0))

    def loss(a, b):
        return exp_softmax_loss(a, b, y, g, reduction=reduction, lengths=torch.tensor([2, 4]))

    assert torch.autograd.gradgradcheck(loss, (s_n, s_e))
    w = torch.rand(2, 3, dtype=F64, requires_grad=True)
    t = torch.randn(3, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda a, w, t: exp_softmax_loss(a, (w, t), y, g, reduction=reduction), (s_n, w, t)
    )


def test_hessian_vector_product_matches_finite_differences_of_the_gradient():
    g = _tree()
    s_n, s_e = _scores(g, batch=(), seed=14)
    v_n, v_e = torch.randn_like(s_n), torch.randn_like(s_e)
    d = ExpSoftmax(g, s_n, s_e)
    gn, ge = torch.autograd.grad(d.log_partition, (s_n, s_e), create_graph=True)
    hn, he = torch.autograd.grad((gn * v_n).sum() + (ge * v_e).sum(), (s_n, s_e))
    h = 1e-6

    def grad_at(t):
        a = (s_n + t * v_n).detach().requires_grad_()
        b = (s_e + t * v_e).detach().requires_grad_()
        return torch.autograd.grad(ExpSoftmax(g, a, b).log_partition, (a, b))

    (pn, pe), (mn, me) = grad_at(h), grad_at(-h)
    torch.testing.assert_close(hn, (pn - mn) / (2 * h), atol=1e-7, rtol=0)
    torch.testing.assert_close(he, (pe - me) / (2 * h), atol=1e-7, rtol=0)


@pytest.mark.parametrize("method", ["bp", "trw", "mean_field"])
def test_second_derivative_with_a_loopy_method_raises_naming_it(method):
    g = es.Graph.grid(2, 2)
    s_n, s_e = _scores(g, c=2, batch=(), seed=15)
    d = ExpSoftmax(g, s_n, s_e, method=method)
    gn, _ = torch.autograd.grad(d.log_partition, (s_n, s_e), create_graph=True)
    with pytest.raises(RuntimeError, match=method):
        gn.sum().backward()
    mu_n, _ = ExpSoftmax(g, s_n, s_e, method=method).marginals
    with pytest.raises(RuntimeError, match=method):
        mu_n[0, 0].backward()
    # First order is available: the gradient of log Z is the beliefs.
    d = ExpSoftmax(g, s_n, s_e, method=method)
    gn, _ = torch.autograd.grad(d.log_partition, (s_n, s_e))
    torch.testing.assert_close(gn, d.marginals[0].detach())


def test_exact_second_order_on_a_junction_tree():
    # A loopy graph the exact method handles with a junction tree: second derivatives by
    # exact conditioning, checked by gradgradcheck (log Z and the loss) and against
    # enumeration of the marginals' change along a direction.
    g = es.Graph.grid(2, 3)
    s_n, s_e = _scores(g, c=2, batch=(2,), seed=16)
    assert ExpSoftmax(g, s_n, s_e).method_used == "exact"
    assert torch.autograd.gradgradcheck(lambda a, b: ExpSoftmax(g, a, b).log_partition, (s_n, s_e))
    y = torch.randint(0, 2, (2, 6), generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradgradcheck(lambda a, b: exp_softmax_loss(a, b, y, g), (s_n, s_e))
    v_n, v_e = torch.randn_like(s_n[0]), torch.randn_like(s_e[0])
    mu_n, mu_e = ExpSoftmax(g, s_n[0], s_e[0]).marginals
    hn, he = torch.autograd.grad((mu_n * v_n).sum() + (mu_e * v_e).sum(), (s_n, s_e))
    h = 1e-6
    plus = _brute(g, s_n[0] + h * v_n, s_e[0] + h * v_e)
    minus = _brute(g, s_n[0] - h * v_n, s_e[0] - h * v_e)
    # The marginals' Jacobian is symmetric: the gradient of (mu . v) is mu's change along v.
    np.testing.assert_allclose(hn[0].numpy(), (plus[1] - minus[1]) / (2 * h), atol=1e-7)
    np.testing.assert_allclose(he[0].numpy(), (plus[2] - minus[2]) / (2 * h), atol=1e-7)


def test_auto_that_chose_bp_refuses_a_second_derivative_naming_bp():
    g = es.Graph.grid(2, 2)
    s_n, s_e = _scores(g, c=2, batch=(), seed=21)
    y = torch.zeros(4, dtype=torch.long)
    loss = exp_softmax_loss(s_n, s_e, y, g, method="auto", max_states=1)
    (gn,) = torch.autograd.grad(loss, s_n, create_graph=True)
    with pytest.raises(RuntimeError, match="bp"):
        gn.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    g = es.Graph.chain(5)
    s_n, s_e = _scores(g, batch=(3,), seed=17)
    ref = ExpSoftmax(g, s_n, s_e)
    a = s_n.detach().to(dtype).requires_grad_()
    b = s_e.detach().to(dtype).requires_grad_()
    d = ExpSoftmax(g, a, b)
    lz = d.log_partition
    assert lz.dtype == dtype
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(lz.double(), ref.log_partition.detach(), atol=tol * 5, rtol=tol)
    lz.sum().backward()
    assert a.grad.dtype == dtype and b.grad.dtype == dtype
    torch.testing.assert_close(a.grad.double(), ref.marginals[0].detach(), atol=tol, rtol=0)


def test_weighted_edges_and_broadcast_batches():
    g = es.Graph.chain(4)
    gen = torch.Generator().manual_seed(18)
    s_n = torch.randn(2, 3, 4, 3, generator=gen, dtype=F64, requires_grad=True)
    w = torch.rand(3, 3, generator=gen, dtype=F64, requires_grad=True)  # (B2=3, E)
    t = torch.randn(3, 3, generator=gen, dtype=F64, requires_grad=True)
    d = ExpSoftmax(g, s_n, (w, t))
    assert d.log_partition.shape == (2, 3)
    full = w[..., None, None] * t
    ref = es.infer(g, s_n.detach().numpy(), full.detach().numpy())
    np.testing.assert_allclose(d.log_partition.detach(), ref.log_z, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, w, t: ExpSoftmax(g, a, (w, t)).entropy, (s_n, w, t))


def test_misuse_raises_clear_errors():
    g = es.Graph.chain(3)
    s_n, s_e = _scores(g, batch=(), seed=19)
    with pytest.raises(TypeError, match="Graph"):
        ExpSoftmax("chain", s_n, s_e)
    with pytest.raises(TypeError, match="s_n"):
        ExpSoftmax(g, s_n.detach().numpy(), s_e)
    with pytest.raises(es.ShapeError):
        ExpSoftmax(g, s_n[:2], s_e)
    d = ExpSoftmax(g, s_n, s_e)
    with pytest.raises(ValueError, match="labels"):
        d.log_prob(torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="same graph"):
        d.kl(ExpSoftmax(es.Graph(3, [(0, 1)]), s_n, s_e[:1]))  # another graph
    with pytest.raises(ValueError, match="k"):
        d.topk(0)
    with pytest.raises(es.NotForestError):
        ExpSoftmax(es.Graph.grid(2, 2), *_scores(es.Graph.grid(2, 2), batch=())).topk(2)


def test_agrees_with_torch_struct_where_installed():
    torch_struct = pytest.importorskip("torch_struct")
    g = es.Graph.chain(6)
    gen = torch.Generator().manual_seed(20)
    b, n, c = 3, 6, 4
    s_n = torch.randn(b, n, c, generator=gen, dtype=F64)
    s_e = torch.randn(b, n - 1, c, c, generator=gen, dtype=F64)
    # torch-struct's chain potentials (B, N-1, C_next, C_prev) hold the node scores too.
    pot = s_e.transpose(-1, -2).clone()
    pot += s_n[:, 1:, :, None]
    pot[:, 0] += s_n[:, 0, None, :]
    ref = torch_struct.LinearChainCRF(pot.requires_grad_())
    d = ExpSoftmax(g, s_n.requires_grad_(), s_e.requires_grad_())
    torch.testing.assert_close(d.log_partition, ref.partition, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        d.marginals[1].detach(), ref.marginals.transpose(-1, -2).detach(), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(d.entropy.detach(), ref.entropy.detach(), atol=1e-9, rtol=0)
