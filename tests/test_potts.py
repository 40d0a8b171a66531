"""Weighted Potts edges (w_e * (a I + b)) take an O(C) message update on grids; it must give
what the same scores give as full per-edge tables (the general per-edge update)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import expsoftmax as es


def _case(h, w, c, dtype, sign, seed=0):
    rng = np.random.default_rng(seed)
    g = es.Graph.grid(h, w)
    s_n = rng.normal(size=(2, h * w, c)).astype(dtype)
    weight = (sign * rng.uniform(0.1, 2.0, (2, g.num_edges))).astype(dtype)
    table = (1.3 * np.eye(c) - 0.4).astype(dtype)  # Potts: diagonal 0.9, off -0.4
    return g, s_n, weight, table


@pytest.mark.parametrize("method", ["bp", "trw"])
@pytest.mark.parametrize("damping", [0.0, 0.5])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 2e-4)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_potts_update_equals_the_per_edge_update(method, damping, dtype, tol, sign):
    g, s_n, weight, table = _case(6, 7, 4, dtype, sign)
    full = (weight[..., None, None] * table).astype(dtype)
    opts = dict(method=method, max_iter=30, tol=0, damping=damping)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        a = es.infer(g, s_n, es.WeightedEdges(weight, table), **opts)
        b = es.infer(g, s_n, full, **opts)
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, atol=tol)
    np.testing.assert_allclose(a.edge_marginals, b.edge_marginals, atol=tol)


def test_a_nearly_potts_table_is_not_taken_for_one():
    # One off-diagonal entry differs: the general update must run (and agree with the
    # per-edge form), not the Potts shortcut.
    g, s_n, weight, table = _case(5, 5, 3, np.float64, 1.0)
    table[0, 2] += 0.7
    full = weight[..., None, None] * table
    a = es.infer(g, s_n, es.WeightedEdges(weight, table), method="bp", max_iter=40, tol=0)
    b = es.infer(g, s_n, full, method="bp", max_iter=40, tol=0)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, atol=1e-9)


@pytest.mark.parametrize("method", ["bp", "trw"])
def test_a_shared_potts_table_on_a_general_graph(method):
    # One shared Potts table (no weights) on a loopy graph that is not a grid: the O(C)
    # pair belief against the general one (the same table given per edge).
    rng = np.random.default_rng(4)
    g = es.Graph(7, [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 5), (5, 3), (5, 6), (6, 0)])
    c = 4
    s_n = rng.normal(size=(3, 7, c))
    table = 0.8 * np.eye(c) + 0.1
    opts = dict(method=method, max_iter=200, tol=1e-12)
    a = es.infer(g, s_n, table[None], **opts)
    b = es.infer(g, s_n, np.broadcast_to(table, (g.num_edges, c, c)).copy(), **opts)
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.edge_marginals, b.edge_marginals, atol=1e-10)
