"""The grid Gibbs sweep (conditionals read in place from per-edge, shared or weighted
scores, pair counts taken inside the sweep) against brute-force enumeration.

Bounds: node marginals within 5 standard errors plus 0.01 of the exact ones; pair
marginals within 0.03 (4 chains x 5000 sweeps: a pair frequency's standard error is below
0.007 even with autocorrelation); AIS log Z within 4 standard errors plus 0.05. Pair and
node marginals come from the same labellings, so summing a pair table over one end gives
that end's node marginal exactly (to rounding): a check of the fused counting that
cannot pass by chance.
"""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force


def _scores(form, h, w, c, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    g = es.Graph.grid(h, w)
    s_n = rng.normal(size=(h * w, c))
    if form == "weighted":
        wgt = rng.uniform(0.2, 1.5, g.num_edges)
        table = rng.normal(size=(c, c))
        s_e = es.WeightedEdges(wgt.astype(dtype), table.astype(dtype))
        full = wgt[:, None, None] * table
    elif form == "shared":
        s_e = full = rng.normal(size=(1, c, c))
        s_e = s_e.astype(dtype)
    else:
        s_e = full = rng.normal(size=(g.num_edges, c, c))
        s_e = s_e.astype(dtype)
    return g, s_n.astype(dtype), s_e, np.broadcast_to(full, (g.num_edges, c, c))


def _check(g, s_n, s_e, full, c, **opts):
    _, node, edge, _, _ = brute_force(g, np.asarray(s_n, np.float64), full)
    r = es.infer(g, s_n, s_e, method="gibbs", num_samples=5000, seed=11, **opts)
    assert (np.abs(r.node_marginals - node) <= 5 * r.node_stderr + 0.01).all()
    assert np.abs(r.edge_marginals - edge).max() < 0.03
    tol = 1e-5 if r.node_marginals.dtype == np.float32 else 1e-12
    i, j = g.edges[:, 0], g.edges[:, 1]
    np.testing.assert_allclose(r.edge_marginals.sum(2), r.node_marginals[i], atol=tol)
    np.testing.assert_allclose(r.edge_marginals.sum(1), r.node_marginals[j], atol=tol)
    return r


@pytest.mark.parametrize("form", ["per_edge", "shared", "weighted"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("h,w,c", [(3, 4, 3), (2, 3, 7), (4, 1, 4)])
def test_grid_sweep_marginals_match_enumeration(form, dtype, h, w, c):
    g, s_n, s_e, full = _scores(form, h, w, c, seed=h * 100 + w * 10 + c, dtype=dtype)
    _check(g, s_n, s_e, full, c, ais_steps=0)


def test_scores_of_any_magnitude():
    # A constant added to every label of a node, or to every entry of a table, leaves the
    # distribution unchanged; conditionals are formed relative to their maximum, so the
    # sweep must not notice a 1e6 offset.
    g, s_n, s_e, full = _scores("per_edge", 3, 3, 3, seed=5)
    shift = 1e6 * np.arange(1, 10)[:, None]
    _check(g, s_n + shift, s_e - 1e6, full, 3, ais_steps=0)


def test_forbidden_pairs_are_never_visited_whatever_the_weight():
    g, s_n, _, _ = _scores("per_edge", 3, 3, 3, seed=7)
    rng = np.random.default_rng(7)
    table = rng.normal(size=(3, 3))
    table[0, 1] = -np.inf
    wgt = rng.uniform(0.0, 1.0, g.num_edges)
    wgt[:4] = 0.0  # a zero weight keeps the pair forbidden (0 * -inf is not 0)
    with np.errstate(invalid="ignore"):
        full = np.where(np.isneginf(table), -np.inf, wgt[:, None, None] * table)
    r = _check(g, s_n, es.WeightedEdges(wgt, table), full, 3, ais_steps=0)
    assert (r.edge_marginals[:, 0, 1] == 0).all()


def test_annealed_log_z_with_per_edge_tables():
    # AIS sweeps at every temperature take the grid path now (nothing to prepare per
    # temperature), per-edge and weighted alike.
    for form in ("per_edge", "weighted"):
        g, s_n, s_e, full = _scores(form, 3, 3, 3, seed=13)
        lz, _, _, _, _ = brute_force(g, s_n, full)
        r = es.infer(g, s_n, s_e, method="gibbs", num_samples=200, ais_steps=200, seed=3)
        assert abs(float(r.log_z) - lz) <= 4 * float(r.log_z_stderr) + 0.05


def test_pair_counts_survive_more_than_255_sweeps_per_chain():
    # The sweep counts pairs in bytes and moves them into wider totals every 255 counted
    # sweeps: 1000 sweeps of one chain on a model that almost always keeps one labelling
    # would wrap a byte four times over if a move were missed.
    g = es.Graph.grid(2, 2)
    s_n = np.zeros((4, 2))
    s_n[:, 0] = 30.0
    r = es.infer(
        g,
        s_n,
        np.zeros((1, 2, 2)),
        method="gibbs",
        num_samples=1000,
        num_chains=1,
        burn_in=1,
        ais_steps=0,
        seed=0,
    )
    np.testing.assert_allclose(r.edge_marginals[:, 0, 0], 1.0)
    np.testing.assert_allclose(r.node_marginals[:, 0], 1.0)
