"""Loopy BP, TRW and mean field against exact answers.

Tolerances: BP on a forest equals exact inference to 1e-9; TRW and mean field must bound
the exact log Z (up to 1e-8); gradients match finite differences of the method's own
log Z to 1e-5 when converged to tol 1e-12.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force, grid_exact, outputs_per_thread_count, random_forest, scores_of

METHODS = ("bp", "trw", "mean_field")
TIGHT = {"tol": 1e-12, "max_iter": 2000, "damping": 0.3}


@pytest.mark.parametrize("schedule", ["parallel", "checkerboard"])
@pytest.mark.parametrize("method", ["bp", "trw"])
def test_bp_and_trw_are_exact_on_forests(method, schedule):
    rng = np.random.default_rng(50)
    for _ in range(20):
        n, c = int(rng.integers(2, 9)), int(rng.integers(1, 5))
        g = random_forest(rng, n)
        s_n, s_e = rng.normal(size=(2, n, c)), rng.normal(size=(g.num_edges, c, c))
        ex = es.infer(g, s_n, s_e)
        r = es.infer(g, s_n, s_e, method=method, schedule=schedule, tol=1e-13, max_iter=500)
        assert r.converged.all() and r.method == method
        np.testing.assert_allclose(r.log_z, ex.log_z, atol=1e-9)
        np.testing.assert_allclose(r.node_marginals, ex.node_marginals, atol=1e-9)
        np.testing.assert_allclose(r.edge_marginals, ex.edge_marginals, atol=1e-9)
        y = rng.integers(0, c, (2, n))
        for a, b in zip(
            es.loss_and_grad(g, s_n, s_e, y),
            es.loss_and_grad(g, s_n, s_e, y, method=method, schedule=schedule, tol=1e-13),
        ):
            np.testing.assert_allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_is_the_derivative_of_the_methods_log_z(method):
    """At a fixed point the beliefs are the gradient of the method's log Z, so the loss
    and its gradient are a consistent pair for training."""
    rng = np.random.default_rng(51)
    g = es.Graph.grid(2, 3)
    c = 3
    s_n = rng.normal(0, 0.5, (6, c))
    s_e = rng.normal(0, 0.5, (g.num_edges, c, c))
    y = rng.integers(0, c, 6)
    opts = dict(TIGHT, schedule="checkerboard")
    _, gn, ge = es.loss_and_grad(g, s_n, s_e, y, method=method, **opts)
    h = 1e-5

    def loss(a, b):
        return float(es.loss_and_grad(g, a, b, y, method=method, **opts)[0])

    for idx in [(0, 0), (2, 1), (5, 2), (3, 0)]:
        d = np.zeros_like(s_n)
        d[idx] = h
        fd = (loss(s_n + d, s_e) - loss(s_n - d, s_e)) / (2 * h)
        assert abs(fd - gn[idx]) < 1e-5, (method, idx, fd, gn[idx])
    for idx in [(0, 0, 1), (3, 2, 2), (6, 1, 0)]:
        d = np.zeros_like(s_e)
        d[idx] = h
        fd = (loss(s_n, s_e + d) - loss(s_n, s_e - d)) / (2 * h)
        assert abs(fd - ge[idx]) < 1e-5, (method, idx, fd, ge[idx])


def test_bounds_and_accuracy_on_small_grids():
    """TRW log Z >= exact >= mean field; BP is closest on weak couplings."""
    rng = np.random.default_rng(52)
    for h, w in ((3, 3), (4, 8)):
        g = es.Graph.grid(h, w)
        for scale in (0.5, 2.0):
            for _ in range(3):
                c = 3 if h * w <= 9 else 2
                s_n = rng.normal(0, scale, (h * w, c))
                s_e = rng.normal(0, scale, (g.num_edges, c, c))
                if h * w <= 9:
                    lz, node, _, _, _ = brute_force(g, s_n, s_e)
                else:
                    lz, node = grid_exact(h, w, s_n, s_e)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", es.ConvergenceWarning)
                    trw = es.infer(g, s_n, s_e, method="trw", **TIGHT)
                    mf = es.infer(g, s_n, s_e, method="mean_field", **TIGHT)
                    bp = es.infer(g, s_n, s_e, method="bp", **TIGHT)
                assert trw.converged and mf.converged
                assert float(trw.log_z) >= lz - 1e-8
                assert float(mf.log_z) <= lz + 1e-8
                if scale == 0.5:
                    assert abs(float(bp.log_z) - lz) < 0.05 * h * w / 9
                    assert np.abs(bp.node_marginals - node).max() < 0.05


def test_narrow_grid_oracle_agrees_with_enumeration():
    rng = np.random.default_rng(53)
    g = es.Graph.grid(2, 4)
    s_n, s_e = rng.normal(size=(8, 3)), rng.normal(size=(g.num_edges, 3, 3))
    lz, node, _, _, _ = brute_force(g, s_n, s_e)
    lz2, node2 = grid_exact(2, 4, s_n, s_e)
    assert abs(lz - lz2) < 1e-10
    np.testing.assert_allclose(node, node2, atol=1e-10)


def test_auto_is_bp_on_wide_loopy_graphs_and_warns_when_not_converged():
    rng = np.random.default_rng(54)
    g = es.Graph.grid(20, 20)  # treewidth 20: exact would need 3**21 entries per table
    s_n, s_e = rng.normal(size=(400, 3)), rng.normal(0, 3, (g.num_edges, 3, 3))
    with pytest.warns(es.ConvergenceWarning, match="did not converge") as rec:
        r = es.infer(g, s_n, s_e, max_iter=2)
    assert r.method == "bp" and not r.converged and r.iterations == 2
    # The message names the limits in force: the given max_iter and the default tol.
    msg = str(rec[0].message)
    assert "max_iter=2 " in msg and f"tol={es.METHODS['bp']['tol']})" in msg, msg
    assert np.isfinite(r.log_z) and np.isfinite(r.node_marginals).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = es.infer(g, s_n, rng.normal(0, 0.3, (g.num_edges, 3, 3)))
    assert r.converged and r.max_change < 1e-6


def test_a_loop_that_never_converges_warns_once_not_every_call():
    # Python shows a warning once per distinct text and place: the text must not carry a
    # call's own numbers, or a training loop prints (and keeps in the registry) one per step.
    rng = np.random.default_rng(56)
    g = es.Graph.grid(6, 6)
    y = rng.integers(0, 3, 36)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("default")
        for _ in range(4):
            s_n, s_e = rng.normal(size=(36, 3)), rng.normal(0, 3, (g.num_edges, 3, 3))
            r = es.infer(g, s_n, s_e, method="bp", max_iter=2, tol=0)
            assert not r.converged and r.max_change > 0
            es.loss_and_grad(g, s_n, s_e, y, method="bp", max_iter=2, tol=0)
            es.infer(g, s_n, s_e, method="gibbs", num_samples=20, burn_in=0, ais_steps=0, seed=1)
    shown = [w for w in rec if issubclass(w.category, es.ConvergenceWarning)]
    # One per call site: infer's BP, loss_and_grad's BP, and Gibbs' (whose short chains
    # disagree here) in the loop above.
    texts = sorted(str(w.message) for w in shown)
    assert len(shown) == 3, texts
    assert sum("did not converge" in t for t in texts) == 2
    assert sum("R-hat" in t for t in texts) == 1


def test_max_product_decode():
    """On forests max-product BP finds the exact MAP; on small loopy grids we record how
    close its labelling's score is to the brute-force optimum."""
    rng = np.random.default_rng(55)
    for _ in range(10):
        g = random_forest(rng, 6)
        s_n, s_e = rng.normal(size=(6, 3)), rng.normal(size=(g.num_edges, 3, 3))
        y = es.decode(g, s_n, s_e, method="bp", max_iter=200)
        _, _, _, _, best = brute_force(g, s_n, s_e)
        assert abs(scores_of(g, s_n, s_e, y[None])[0] - best) < 1e-9
    g = es.Graph.grid(3, 3)
    gaps = []
    for _ in range(20):
        s_n, s_e = rng.normal(size=(9, 3)), rng.normal(0, 0.5, (g.num_edges, 3, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", es.ConvergenceWarning)
            y = es.decode(g, s_n, s_e, method="bp", damping=0.5, max_iter=300)
        _, _, _, _, best = brute_force(g, s_n, s_e)
        gaps.append(best - scores_of(g, s_n, s_e, y[None])[0])
    gaps = np.array(gaps)
    assert (gaps >= -1e-9).all()
    assert (gaps < 1e-9).mean() >= 0.7  # optimal on most weakly coupled instances


def test_forbidden_pairs_in_loopy_methods():
    rng = np.random.default_rng(56)
    g = es.Graph.grid(3, 3)
    s_n = rng.normal(size=(9, 3))
    s_e = rng.normal(size=(g.num_edges, 3, 3))
    s_e[:, 0, 2] = -np.inf
    s_e[:, 2, 0] = -np.inf
    lz, node, _, _, _ = brute_force(g, s_n, s_e)
    for m in METHODS:
        r = es.infer(g, s_n, s_e, method=m, **TIGHT)
        assert np.isfinite(r.log_z) and not np.isnan(r.node_marginals).any()
        assert (r.edge_marginals[:, 0, 2] == 0).all()
        _, gn, ge = es.loss_and_grad(g, s_n, s_e, np.zeros(9, np.int64), method=m, **TIGHT)
        assert not np.isnan(gn).any() and not np.isnan(ge).any()
    assert float(es.infer(g, s_n, s_e, method="trw", **TIGHT).log_z) >= lz - 1e-8
    assert float(es.infer(g, s_n, s_e, method="mean_field", **TIGHT).log_z) <= lz + 1e-8


def test_weighted_edges_equal_materialised_tables():
    rng = np.random.default_rng(57)
    g = es.Graph.grid(3, 4)
    c = 3
    s_n = rng.normal(size=(2, 12, c))
    wgt = rng.uniform(0.2, 2.0, (2, g.num_edges))
    table = rng.normal(size=(c, c))
    full = wgt[..., None, None] * table
    y = rng.integers(0, c, (2, 12))
    for m in ("bp", "trw", "mean_field"):
        a = es.infer(g, s_n, es.WeightedEdges(wgt, table), method=m, **TIGHT)
        b = es.infer(g, s_n, full, method=m, **TIGHT)
        np.testing.assert_allclose(a.log_z, b.log_z, atol=1e-10)
        np.testing.assert_allclose(a.edge_marginals, b.edge_marginals, atol=1e-10)
        la, gna, gea = es.loss_and_grad(g, s_n, (wgt, table), y, method=m, **TIGHT)
        lb, gnb, geb = es.loss_and_grad(g, s_n, full, y, method=m, **TIGHT)
        assert isinstance(gea, es.WeightedEdges)
        assert gea.weight.shape == wgt.shape and gea.table.shape == table.shape
        np.testing.assert_allclose(la, lb, atol=1e-10)
        np.testing.assert_allclose(gna, gnb, atol=1e-10)
        # Chain rule through full[b, e] = w[b, e] * table.
        np.testing.assert_allclose(gea.weight, (geb * table).sum((-1, -2)), atol=1e-9)
        np.testing.assert_allclose(gea.table, (geb * wgt[..., None, None]).sum((0, 1)), atol=1e-9)
    # Exact inference on a forest accepts the weighted form too.
    t = es.Graph.chain(5)
    w5 = rng.uniform(0.5, 1.5, 4)
    ex_a = es.loss_and_grad(t, s_n[0, :5], (w5, table), y[0, :5])
    ex_b = es.loss_and_grad(t, s_n[0, :5], w5[:, None, None] * table, y[0, :5])
    np.testing.assert_allclose(ex_a[0], ex_b[0], atol=1e-12)
    np.testing.assert_allclose(ex_a[2].weight, (ex_b[2] * table).sum((-1, -2)), atol=1e-10)


def test_same_answer_whatever_the_thread_count():
    code = (
        "import hashlib, sys, numpy as np, expsoftmax as es\n"
        "rng = np.random.default_rng(0)\n"
        "g = es.Graph.grid(80, 80)\n"
        "s_n = rng.normal(size=(6400, 3)); s_e = rng.normal(0, .5, (g.num_edges, 3, 3))\n"
        "out = b''\n"
        "for m in ('bp', 'trw', 'mean_field'):\n"
        "    for sch in ('parallel', 'checkerboard'):\n"
        "        r = es.infer(g, s_n, s_e, method=m, schedule=sch, max_iter=15, tol=0)\n"
        "        out += r.log_z.tobytes() + r.node_marginals.tobytes()\n"
        "        out += r.edge_marginals.tobytes()\n"
        # The training step: per-edge gradient rows and weighted-edge gradients (the
        # table's is summed over the rows of the grid, whatever the threads).
        "y = rng.integers(0, 3, 6400)\n"
        "w = es.WeightedEdges(rng.uniform(0, 1, g.num_edges), rng.normal(size=(3, 3)))\n"
        "potts = es.WeightedEdges(w.weight, 2 * np.eye(3))\n"
        "for edges in (s_e, s_e.astype(np.float32), w, potts):\n"
        "    sn = s_n.astype(np.float32) if edges is not s_e else s_n\n"
        "    l, gn, ge = es.loss_and_grad(g, sn, edges, y, method='bp', max_iter=15, tol=0)\n"
        "    parts = (ge.weight, ge.table) if isinstance(ge, es.WeightedEdges) else (ge,)\n"
        "    out += l.tobytes() + gn.tobytes() + b''.join(p.tobytes() for p in parts)\n"
        "sys.stdout.write(hashlib.sha256(out).hexdigest())\n"
    )
    assert len(outputs_per_thread_count(code)) == 1


def test_loopy_option_errors():
    g = es.Graph.grid(2, 2)
    s_n, s_e = np.zeros((4, 2)), np.zeros((4, 2, 2))
    with pytest.raises(ValueError, match="damping"):
        es.infer(g, s_n, s_e, method="bp", damping=1.0)
    with pytest.raises(ValueError, match="schedule"):
        es.infer(g, s_n, s_e, method="bp", schedule="random")
    with pytest.raises(ValueError, match="max_iter"):
        es.infer(g, s_n, s_e, method="bp", max_iter=-1)
    with pytest.raises(TypeError, match="unknown option"):
        es.infer(g, s_n, s_e, method="bp", edge_appearance=0.5)
    with pytest.raises(ValueError, match="edge_appearance"):
        es.infer(g, s_n, s_e, method="trw", edge_appearance=1.5)
    with pytest.raises(ValueError, match="lengths"):
        es.infer(es.Graph.chain(4), s_n, s_e[:3], method="bp", lengths=[2])


def test_default_edge_appearance_is_a_spanning_tree_mixture():
    for g in (es.Graph.grid(4, 5), es.Graph(5, [[0, 1], [1, 2], [2, 0], [2, 3], [3, 4], [4, 2]])):
        rho = g.default_edge_appearance()
        assert rho.shape == (g.num_edges,) and (rho > 0).all() and (rho <= 1).all()
        # Every spanning tree has n - 1 edges, so the probabilities sum to n - 1.
        assert abs(rho.sum() - (g.num_nodes - 1)) < 1e-9


def test_float32_grid_matches_float64():
    """The grid kernel stores float32 models' messages in float32; beliefs stay within
    float32 accuracy of the float64 computation."""
    rng = np.random.default_rng(58)
    g = es.Graph.grid(20, 30)
    s_n = rng.normal(size=(600, 4))
    s_e = rng.normal(0, 0.5, (4, 4))
    for schedule in ("parallel", "checkerboard"):
        a = es.infer(g, s_n, s_e, method="bp", tol=1e-7, max_iter=300, schedule=schedule)
        b = es.infer(g, s_n.astype(np.float32), s_e.astype(np.float32), method="bp", tol=1e-7,
                     max_iter=300, schedule=schedule)  # fmt: skip
        assert a.converged and b.converged
        assert abs(float(a.log_z) - float(b.log_z)) <= 1e-5 * abs(float(a.log_z))
        assert np.abs(a.node_marginals - b.node_marginals).max() < 1e-4
