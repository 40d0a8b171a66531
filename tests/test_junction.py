"""Exact inference on graphs with cycles (junction tree), against enumeration of every
labelling and a column-transfer computation on narrow grids."""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force, grid_exact, labellings, outputs_per_thread_count, scores_of

LOOPY = [
    es.Graph(5, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 0]]),  # a cycle
    es.Graph(4, [[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]]),  # a cycle with a chord
    es.Graph(5, [[1, 0], [2, 1], [0, 2], [2, 3], [4, 3], [4, 2]]),  # two triangles, reversed
    es.Graph.grid(3, 4),
]


def _random(rng, g, c, scale=1.0, forbid=0.0, batch=()):
    s_n = rng.normal(0, scale, batch + (g.num_nodes, c))
    s_e = rng.normal(0, scale, batch + (g.num_edges, c, c))
    s_e[rng.random(s_e.shape) < forbid] = -np.inf
    return s_n, s_e


@pytest.mark.parametrize("g", LOOPY, ids=["cycle", "chord", "triangles", "grid3x4"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_marginals_loss_and_gradients_match_enumeration(g, dtype, tol):
    rng = np.random.default_rng(1)
    c = 2 if g.num_nodes > 6 else 3
    s_n, s_e = _random(rng, g, c, scale=1.5, forbid=0.1, batch=(3,))
    s_n[1, 0, 0] = -np.inf  # a forbidden label
    y = np.stack([brute_force(g, s_n[b], s_e[b])[3] for b in range(3)])
    r = es.infer(g, s_n.astype(dtype), s_e.astype(dtype), method="exact")
    loss, gn, ge = es.loss_and_grad(g, s_n.astype(dtype), s_e.astype(dtype), y, method="exact")
    assert r.method == "exact" and r.node_marginals.dtype == dtype
    for b in range(3):
        log_z, node, edge, _, _ = brute_force(g, s_n[b], s_e[b])
        assert abs(r.log_z[b] - log_z) <= tol * max(1, abs(log_z))
        np.testing.assert_allclose(r.node_marginals[b], node, atol=tol)
        np.testing.assert_allclose(r.edge_marginals[b], edge, atol=tol)
        assert np.all(r.edge_marginals[b][s_e[b] == -np.inf] == 0)
        gold = scores_of(g, s_n[b], s_e[b], y[b][None])[0]
        assert abs(loss[b] - (log_z - gold)) <= tol * max(1, abs(log_z))
        onehot = np.eye(c)[y[b]]
        np.testing.assert_allclose(gn[b], node - onehot, atol=tol)
        pairs = np.zeros_like(edge)
        pairs[np.arange(g.num_edges), y[b][g.edges[:, 0]], y[b][g.edges[:, 1]]] = 1
        np.testing.assert_allclose(ge[b], edge - pairs, atol=tol)
    assert r.node_marginals[1, 0, 0] == 0


def test_shared_and_weighted_edge_scores_equal_their_materialised_form():
    rng = np.random.default_rng(2)
    g = es.Graph.grid(3, 4)
    s_n = rng.normal(size=(2, 12, 3))
    w, table = rng.normal(size=(2, g.num_edges)), rng.normal(size=(3, 3))
    full = w[..., None, None] * table
    y = rng.integers(0, 3, (2, 12))
    r = es.infer(g, s_n, es.WeightedEdges(w, table), method="exact")
    ref = es.infer(g, s_n, full, method="exact")
    np.testing.assert_allclose(r.node_marginals, ref.node_marginals, atol=1e-12)
    np.testing.assert_allclose(r.log_z, ref.log_z, atol=1e-12)
    _, _, gw = es.loss_and_grad(g, s_n, es.WeightedEdges(w, table), y, method="exact")
    _, _, gfull = es.loss_and_grad(g, s_n, full, y, method="exact")
    np.testing.assert_allclose(gw.weight, (gfull * table).sum((-1, -2)), atol=1e-10)
    np.testing.assert_allclose(gw.table, (gfull * w[..., None, None]).sum((0, 1)), atol=1e-10)
    # One shared table broadcast over edges and items: its gradient is summed.
    shared = rng.normal(size=(1, 3, 3))
    _, _, gs = es.loss_and_grad(g, s_n, shared, y, method="exact")
    _, _, gf = es.loss_and_grad(g, s_n, np.broadcast_to(shared, (2, g.num_edges, 3, 3)), y)
    np.testing.assert_allclose(gs, gf.sum((0, 1))[None], atol=1e-10)


@pytest.mark.parametrize("h, w, c", [(4, 12, 3), (8, 9, 2)])
def test_narrow_grids_match_the_column_transfer_oracle(h, w, c):
    rng = np.random.default_rng(h * w)
    g = es.Graph.grid(h, w)
    s_n, s_e = _random(rng, g, c, scale=1.0)
    r = es.infer(g, s_n, s_e)
    assert r.method == "exact"  # auto: the junction tree fits
    log_z, node = grid_exact(h, w, s_n, s_e)
    assert abs(r.log_z - log_z) < 1e-9 * abs(log_z)
    np.testing.assert_allclose(r.node_marginals, node, atol=1e-10)
    # The gradient of log Z is the marginals: central differences of the oracle.
    for v, x in [(0, 0), (h * w // 2, c - 1), (h * w - 1, 1)]:
        d = np.zeros_like(s_n)
        d[v, x] = 1e-5
        fd = (grid_exact(h, w, s_n + d, s_e)[0] - grid_exact(h, w, s_n - d, s_e)[0]) / 2e-5
        assert abs(fd - r.node_marginals[v, x]) < 1e-6
    # Pair marginals are consistent with the node marginals on every edge.
    em = r.edge_marginals
    np.testing.assert_allclose(em.sum(-1), r.node_marginals[g.edges[:, 0]], atol=1e-10)
    np.testing.assert_allclose(em.sum(-2), r.node_marginals[g.edges[:, 1]], atol=1e-10)


def test_map_labelling_matches_enumeration():
    rng = np.random.default_rng(3)
    for g in LOOPY:
        c = 2 if g.num_nodes > 6 else 3
        for _ in range(4):
            s_n, s_e = _random(rng, g, c, scale=2.0, forbid=0.1)
            best = brute_force(g, s_n, s_e)[4]
            if best == -np.inf:
                with pytest.raises(es.InfeasibleError):
                    es.decode(g, s_n, s_e, method="exact")
                continue
            y = es.decode(g, s_n, s_e, method="exact")
            assert abs(scores_of(g, s_n, s_e, y[None])[0] - best) < 1e-9


def test_sample_frequencies_follow_the_exact_distribution():
    rng = np.random.default_rng(4)
    g = es.Graph(4, [[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]])
    s_n, s_e = _random(rng, g, 3, forbid=0.15)
    n = 30_000
    ys = es.sample(g, s_n, s_e, n, seed=5)
    assert ys.shape == (n, 4)
    s = scores_of(g, s_n, s_e, ys)
    assert np.all(np.isfinite(s))  # no forbidden labelling is ever drawn
    all_y = labellings(4, 3)
    p = np.exp(scores_of(g, s_n, s_e, all_y) - brute_force(g, s_n, s_e)[0])
    counts = np.zeros(len(all_y))
    np.add.at(counts, (ys * 3 ** np.arange(4)[::-1]).sum(1), 1)
    freq = counts / n
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) <= 5 * se + 1e-12)
    assert np.array_equal(ys[:50], es.sample(g, s_n, s_e, 50, seed=5))


def test_infeasible_scores_raise():
    g = es.Graph(3, [[0, 1], [1, 2], [2, 0]])
    s_e = np.full((3, 2, 2), -np.inf)
    s_e[:, 0, 1] = s_e[:, 1, 0] = 0  # neighbours must differ: impossible on a triangle
    with pytest.raises(es.InfeasibleError):
        es.infer(g, np.zeros((3, 2)), s_e, method="exact")


def test_auto_and_the_budget():
    g = es.Graph.grid(6, 40)
    jt = g.junction_tree(3)
    assert jt.width == 6 and jt.max_states == 3**7
    covered = {frozenset(map(int, e)) for e in g.edges}
    assert all(any(e <= set(k.tolist()) for k in jt.cliques) for e in covered)
    assert len(jt.parents) == len(jt.cliques) and (jt.parents == -1).sum() == 1
    s_n, s_e = np.zeros((240, 3)), np.zeros((3, 3))
    assert es.infer(g, s_n, s_e).method == "exact"
    assert es.infer(g, s_n, s_e, max_states=3**6).method == "bp"
    with pytest.raises(es.NotForestError, match="max_states"):
        es.infer(g, s_n, s_e, method="exact", max_states=3**6)
    # A budget raised beyond the machine: MemoryError naming the tables, before allocating.
    wide, z2 = es.Graph.grid(30, 30), np.zeros((2, 2))
    for call in (es.infer, es.decode):
        with pytest.raises(MemoryError, match="clique tables"):
            call(wide, np.zeros((900, 2)), z2, method="exact", max_states=2**40)
    with pytest.raises(es.OptionError, match="chosen by method='auto'"):
        es.infer(g, s_n, s_e, max_iter=10)
    assert es.Graph.grid(20, 40).junction_tree(2).width == 20
    with pytest.raises(es.NotForestError, match="out of reach"):
        es.Graph.grid(60, 60).junction_tree(2)
    chain = es.Graph.chain(5).junction_tree(4)
    assert chain.width == 1 and chain.max_states == 16


def test_results_do_not_depend_on_the_thread_count():
    code = (
        "import numpy as np, expsoftmax as es\n"
        "g = es.Graph.grid(6, 30)\n"
        "rng = np.random.default_rng(0)\n"
        "s_n, s_e = rng.normal(size=(5, 180, 3)), rng.normal(size=(5, g.num_edges, 3, 3))\n"
        "r = es.infer(g, s_n, s_e, method='exact')\n"
        "y = es.sample(g, s_n, s_e, 4, seed=1)\n"
        "print(r.log_z.tobytes().hex(), r.edge_marginals.tobytes().hex()[:4000], y.sum(),"
        " es.decode(g, s_n, s_e).sum())\n"
    )
    assert len(outputs_per_thread_count(code)) == 1


def test_the_torch_loss_runs_exact_on_loopy_graphs():
    torch = pytest.importorskip("torch")
    from expsoftmax.torch import exp_softmax_loss

    rng = np.random.default_rng(6)
    g = es.Graph.grid(3, 3)
    s_n, s_e = _random(rng, g, 2, batch=(2,))
    y = rng.integers(0, 2, (2, 9))
    tn = torch.tensor(s_n, requires_grad=True)
    te = torch.tensor(s_e, requires_grad=True)
    loss = exp_softmax_loss(tn, te, torch.tensor(y), g, method="exact", reduction="sum")
    loss.backward()
    for b in range(2):
        log_z, node, _, _, _ = brute_force(g, s_n[b], s_e[b])
        np.testing.assert_allclose(tn.grad[b].numpy(), node - np.eye(2)[y[b]], atol=1e-10)
    ref = sum(
        brute_force(g, s_n[b], s_e[b])[0] - scores_of(g, s_n[b], s_e[b], y[b][None])[0]
        for b in range(2)
    )
    assert abs(loss.item() - ref) < 1e-10
    assert torch.autograd.gradcheck(
        lambda a, e: exp_softmax_loss(a, e, torch.tensor(y), g, method="exact"), (tn, te)
    )
