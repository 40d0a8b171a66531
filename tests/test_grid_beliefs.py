"""The grid belief pass (node beliefs, pair marginals and Bethe log Z computed across the
columns of each grid row) against the general belief pass on the same model: the grid's
edges given in a shuffled order are not recognised as a grid, so the general kernels run.
Per-edge and shared tables, float32 and float64, both schedules, damping, forbidden
labels and pairs, thin grids."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import expsoftmax as es


def _pair(h, w, c, shared, dtype, seed, forbid=False, scale=1.0):
    g = es.Graph.grid(h, w)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(g.num_edges)
    shuffled = es.Graph(h * w, g.edges[perm])
    s_n = (scale * rng.normal(size=(2, h * w, c))).astype(dtype)
    s_e = (scale * rng.normal(size=(2, 1 if shared else g.num_edges, c, c))).astype(dtype)
    if forbid:
        s_n[0, 3, 1] = -np.inf  # a forbidden label
        s_e[:, 0, 0, 1] = -np.inf  # a forbidden pair (in every table when shared)
    return g, shuffled, perm, s_n, s_e


@pytest.mark.parametrize("h,w", [(2, 3), (3, 2), (5, 7), (8, 9), (1, 6), (6, 1), (2, 2)])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("schedule", ["parallel", "checkerboard"])
def test_grid_beliefs_equal_the_general_pass(h, w, shared, schedule):
    g, sh, perm, s_n, s_e = _pair(h, w, 3, shared, np.float64, seed=h * 10 + w)
    opts = dict(method="bp", max_iter=40, tol=0.0, damping=0.3, schedule=schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        a = es.infer(g, s_n, s_e, **opts)
        b = es.infer(sh, s_n, s_e if shared else s_e[:, perm], **opts)
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.edge_marginals[:, perm], b.edge_marginals, rtol=0, atol=1e-12)


@pytest.mark.parametrize("table", ["potts", "general", "forbidden"])
@pytest.mark.parametrize("schedule", ["parallel", "checkerboard"])
def test_weighted_edges_through_the_grid_belief_pass(table, schedule):
    # Weight x table edges (negative weights included): the grid's belief pass makes each
    # row's potentials as the sweeps do (Potts messages in O(C) per edge); marginals, log Z
    # and the gradients of the weights and of the table equal the general pass's.
    h, w, c = 6, 7, 4
    g = es.Graph.grid(h, w)
    rng = np.random.default_rng(11)
    perm = rng.permutation(g.num_edges)
    sh = es.Graph(h * w, g.edges[perm])
    s_n = rng.normal(size=(2, h * w, c))
    weight = rng.uniform(-0.5, 1.5, size=(2, g.num_edges))
    theta = 1.5 * np.eye(c) if table == "potts" else rng.normal(size=(c, c))
    if table == "forbidden":
        theta[0, 1] = -np.inf
    y = rng.integers(0, c, (2, h * w))
    opts = dict(method="bp", max_iter=80, tol=1e-10, damping=0.3, schedule=schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        a = es.infer(g, s_n, es.WeightedEdges(weight, theta), **opts)
        b = es.infer(sh, s_n, es.WeightedEdges(weight[:, perm], theta), **opts)
        la, gna, gea = es.loss_and_grad(g, s_n, es.WeightedEdges(weight, theta), y, **opts)
        lb, gnb, geb = es.loss_and_grad(
            sh, s_n, es.WeightedEdges(weight[:, perm], theta), y, **opts
        )
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.edge_marginals[:, perm], b.edge_marginals, rtol=0, atol=1e-10)
    if table == "forbidden":
        assert np.all(a.edge_marginals[..., 0, 1] == 0)
    np.testing.assert_allclose(la, lb, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gna, gnb, rtol=0, atol=1e-10)
    np.testing.assert_allclose(gea.weight[:, perm], geb.weight, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gea.table, geb.table, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-4), (np.float64, 1e-10)])
@pytest.mark.parametrize("forbid", [False, True])
def test_grid_beliefs_with_forbidden_entries_and_both_dtypes(dtype, tol, forbid):
    g, sh, perm, s_n, s_e = _pair(6, 5, 4, False, dtype, seed=3, forbid=forbid, scale=3.0)
    opts = dict(method="bp", max_iter=60, tol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        a = es.infer(g, s_n, s_e, **opts)
        b = es.infer(sh, s_n, s_e[:, perm], **opts)
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=0, atol=tol * 10)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, rtol=0, atol=tol)
    np.testing.assert_allclose(a.edge_marginals[:, perm], b.edge_marginals, rtol=0, atol=tol)
    if forbid:
        assert np.all(a.node_marginals[0, 3, 1] == 0)
        assert np.all(a.edge_marginals[:, 0, 0, 1] == 0)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("weights", [None, "per_item"])
def test_loss_and_gradients_through_the_grid_belief_pass(dtype, tol, weights):
    # The grid pass writes each item's edge-gradient rows itself, gold indicators and the
    # item's weight applied as it stores them; the general pass (the same grid with its
    # edges shuffled) goes through the generic accumulation. Same gradients.
    from expsoftmax.api import _loss_and_grad

    g, sh, perm, s_n, s_e = _pair(4, 5, 3, False, dtype, seed=5)
    y = np.random.default_rng(0).integers(0, 3, (2, 20))
    y[1, 7] = 2
    s_n[1, 7, 2] = -np.inf  # a gold label the scores forbid: its pairs' marginals are 0
    w = None if weights is None else np.array([0.5, -1.75])
    opts = dict(max_iter=100, tol=1e-9 if dtype == np.float64 else 1e-6, damping=0.5)
    la, gna, gea = _loss_and_grad(g, s_n, s_e, y, "bp", None, opts, w)
    lb, gnb, geb = _loss_and_grad(sh, s_n, s_e[:, perm], y, "bp", None, opts, w)
    assert gea.dtype == dtype and np.isinf(la[1]) and np.isfinite(la[0])
    np.testing.assert_allclose(la, lb, atol=1e-10 if dtype == np.float64 else 1e-4)
    np.testing.assert_allclose(gna, gnb, atol=tol)
    np.testing.assert_allclose(gea[:, perm], geb, atol=tol)
    # Gold indicators: each edge's row sums to (1 − 1) · weight = 0, and the gold entry
    # of an edge into the forbidden gold label is (0 − 1) · weight.
    scale = np.ones(2) if w is None else w
    np.testing.assert_allclose(gea.sum(axis=(-2, -1)), 0, atol=tol * 10)
    edges = g.edges
    gold = gea[1, np.arange(g.num_edges), y[1, edges[:, 0]], y[1, edges[:, 1]]]
    into = (edges == 7).any(axis=1)
    np.testing.assert_allclose(gold[into], -scale[1], atol=tol)


@pytest.mark.parametrize("damping", [0.0, 0.3, 0.5])
@pytest.mark.parametrize("schedule", ["parallel", "checkerboard"])
def test_float32_grid_path_agrees_with_float64_general_pass(damping, schedule):
    # A float32 model takes the f32 route end to end (potentials, messages, the geometric
    # damping of 0.5 as square roots, the belief pass's logarithms and exponentials); the
    # reference is the float64 general pass on the same scores (edges shuffled).
    g, sh, perm, s_n, s_e = _pair(12, 13, 5, False, np.float32, seed=9)
    opts = dict(method="bp", max_iter=300, tol=1e-6, damping=damping, schedule=schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        a = es.infer(g, s_n, s_e, **opts)
        b = es.infer(sh, s_n.astype(np.float64), s_e[:, perm].astype(np.float64), **opts)
    assert a.log_z.dtype == np.float32
    # Observed: log Z within 3e-8 relative, marginals within 2e-7 (f32 rounding).
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=3e-7, atol=0)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, rtol=0, atol=2e-6)
    np.testing.assert_allclose(a.edge_marginals[:, perm], b.edge_marginals, rtol=0, atol=2e-6)


@pytest.mark.parametrize("node_span", [10.0, 45.0, 110.0])
@pytest.mark.parametrize("table_span", [3.0, 12.0, 25.0])
@pytest.mark.parametrize("form", ["per_edge", "shared", "potts", "weighted"])
def test_float32_arithmetic_holds_across_its_span_budget(node_span, table_span, form):
    # Float32 models whose tables satisfy 4 (table span + ln C) <= 80 (weighted edges: the
    # largest weight times the table's span) run the updates in f32 arithmetic (improbable
    # labels may underflow there, by design); wider tables in f64 (messages still stored in
    # f32). Node spans up to 110 (potentials far below f32's range) and tables on both
    # sides of that budget, per-edge, shared, weight x Potts (O(C) messages) and weight x
    # a general table: every marginal above 1e-30 agrees with the float64 general pass to
    # 1e-4 *relative* (observed ~1e-5), so an underflow that mattered would show even on
    # labels of probability 1e-25.
    h, w, c = 9, 11, 3
    g, sh, perm, _, _ = _pair(h, w, c, False, np.float64, seed=int(node_span + table_span))
    rng = np.random.default_rng(int(node_span))
    s_n = rng.uniform(-node_span, 0.0, size=(1, h * w, c))
    s_n[0, np.arange(h * w), rng.integers(0, c, h * w)] = 0.0  # each node spans node_span
    s_n = s_n.astype(np.float32)
    if form in ("per_edge", "shared"):
        tables = rng.uniform(
            0.0, table_span, size=(1, 1 if form == "shared" else g.num_edges, c, c)
        )
        s_e = tables.astype(np.float32)
        ref = (s_e if form == "shared" else s_e[:, perm]).astype(np.float64)
    else:
        weight = rng.uniform(0.2, 1.0, size=(1, g.num_edges)).astype(np.float32)
        weight[0, 0] = 1.0  # the largest weight times the table's span is table_span
        table = table_span * (np.eye(c) if form == "potts" else rng.uniform(0, 1, (c, c)))
        table[np.unravel_index(np.argmax(table), table.shape)] = table_span
        table[np.unravel_index(np.argmin(table), table.shape)] = 0.0
        s_e = es.WeightedEdges(weight, table.astype(np.float32))
        ref = es.WeightedEdges(
            weight[:, perm].astype(np.float64), table.astype(np.float32).astype(np.float64)
        )
    opts = dict(method="bp", max_iter=200, tol=1e-7, damping=0.5, schedule="parallel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        a = es.infer(g, s_n, s_e, **opts)
        b = es.infer(sh, s_n.astype(np.float64), ref, **opts)
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=1e-6, atol=0)
    for got, want in [
        (a.node_marginals, b.node_marginals),
        (a.edge_marginals[:, perm], b.edge_marginals),
    ]:
        seen = want > 1e-30
        np.testing.assert_allclose(got[seen], want[seen], rtol=1e-4, atol=0)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(0, 160, 8))
def test_random_models_with_forbidden_entries_match_the_general_pass(seed):
    """Random small grids, both dtypes, forbidden labels and pairs (-inf at random), any
    number of iterations, damping and schedule: the grid pass (whose edges take each
    message's logarithm and the node terms' share of it) gives the general pass's log Z,
    node and pair marginals, or the same exception."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        for k in range(seed, seed + 8):
            rng = np.random.default_rng(k)
            h, w, c = (int(x) for x in rng.integers((2, 2, 2), (7, 7, 5)))
            g = es.Graph.grid(h, w)
            perm = rng.permutation(g.num_edges)
            sh = es.Graph(h * w, g.edges[perm])
            dtype = (np.float32, np.float64)[k % 2]
            s_n = (rng.normal(size=(h * w, c)) * rng.choice([1, 5, 20])).astype(dtype)
            s_e = (rng.normal(size=(g.num_edges, c, c)) * rng.choice([1, 5, 15])).astype(dtype)
            s_e[rng.random(s_e.shape) < 0.3] = -np.inf
            s_n[rng.random(s_n.shape) < 0.15] = -np.inf
            opts = dict(
                method="bp",
                max_iter=int(rng.integers(1, 30)),
                tol=0,
                damping=float(rng.choice([0.0, 0.5])),
                schedule=str(rng.choice(["parallel", "checkerboard"])),
            )
            try:
                a = es.infer(g, s_n, s_e, **opts)
            except Exception as e:  # noqa: BLE001 - the same exception from both passes
                with pytest.raises(type(e)):
                    es.infer(sh, s_n, s_e[perm], **opts)
                continue
            b = es.infer(sh, s_n, s_e[perm], **opts)
            if not np.isfinite(b.log_z):
                assert a.log_z == b.log_z, k
                continue
            tol = 5e-3 if dtype == np.float32 else 1e-8
            assert abs(float(a.log_z - b.log_z)) <= tol * max(1.0, abs(float(b.log_z))), k
            np.testing.assert_allclose(a.node_marginals, b.node_marginals, rtol=0, atol=tol)
            np.testing.assert_allclose(
                a.edge_marginals[perm], b.edge_marginals, rtol=0, atol=tol, err_msg=str(k)
            )
