"""TRW on the grid kernel equals TRW on the general kernel.

The same model is given once on `Graph.grid` (grid kernel) and once on a shuffled,
re-oriented edge list that is not recognised as a grid (general log-domain kernel), with
the same edge appearances. Tolerances: 1e-10 (float64), 1e-5 (float32) on log Z and
marginals.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import expsoftmax as es


def _relabelled(g, s_e, rng):
    perm = rng.permutation(g.num_edges)
    flip = rng.random(g.num_edges) < 0.5
    edges = g.edges[perm].copy()
    edges[flip] = edges[flip][:, ::-1]
    s_e = np.broadcast_to(s_e, (g.num_edges, *s_e.shape[-2:]))[perm].copy()
    s_e[flip] = s_e[flip].transpose(0, 2, 1)
    return es.Graph(g.num_nodes, edges), s_e, perm


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("form", ["shared", "full", "weighted"])
@pytest.mark.parametrize("schedule", ["parallel", "checkerboard"])
def test_trw_grid_kernel_equals_general_kernel(dtype, tol, form, schedule):
    h, w, c = 5, 6, 3
    rng = np.random.default_rng(80)
    g = es.Graph.grid(h, w)
    s_n = rng.normal(size=(h * w, c)).astype(dtype)
    s_n[7, 1] = -np.inf  # a forbidden label
    table = rng.normal(0, 0.8, (c, c)).astype(dtype)
    wgt = rng.uniform(0.5, 1.5, g.num_edges).astype(dtype)
    per_edge = rng.normal(0, 0.8, (g.num_edges, c, c)).astype(dtype)
    full = {
        "shared": np.broadcast_to(table, (g.num_edges, c, c)),
        "full": per_edge,
        "weighted": wgt[:, None, None].astype(np.float64) * table,
    }[form]
    given = {"shared": table[None], "full": per_edge, "weighted": (wgt, table)}[form]
    rho = rng.uniform(0.3, 1.0, g.num_edges)
    g2, s_e2, perm = _relabelled(g, full, rng)
    opts = dict(method="trw", max_iter=40, tol=0, schedule=schedule, damping=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        a = es.infer(g, s_n, given, edge_appearance=rho, **opts)
        b = es.infer(g2, s_n, s_e2, edge_appearance=rho[perm], **opts)
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, atol=tol)
    assert (a.node_marginals[7, 1] == 0) and np.isfinite(a.log_z)


def test_trw_grid_kernel_with_forbidden_pairs_and_default_appearances():
    # A forbidden pair in the table and the grid's default (two-comb) appearances: the
    # grid kernel must equal the general kernel given the same appearances.
    h, w, c = 4, 5, 3
    rng = np.random.default_rng(81)
    g = es.Graph.grid(h, w)
    s_n = rng.normal(size=(h * w, c))
    table = rng.normal(0, 0.5, (c, c))
    table[0, 2] = -np.inf
    rho = g.default_edge_appearance()
    g2, s_e2, perm = _relabelled(g, table[None], rng)
    opts = dict(method="trw", max_iter=100, tol=1e-12)
    a = es.infer(g, s_n, table[None], **opts)
    b = es.infer(g2, s_n, s_e2, edge_appearance=rho[perm], **opts)
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=1e-9)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, atol=1e-9)
    np.testing.assert_allclose(a.edge_marginals[:, 0, 2], 0)
