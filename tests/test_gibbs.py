"""Gibbs sampling against exact answers, with statistical bounds.

Bounds: each node marginal within 5 standard errors (plus 0.01 for the error of the
error bar itself) of the exact marginal; AIS log Z within 4 of its standard errors plus
0.05; across seeds, roughly the nominal share of 95% intervals cover the truth (loose).
"""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force, grid_exact, outputs_per_thread_count, scores_of


def _model(seed, h=3, w=3, c=3, scale=1.0):
    rng = np.random.default_rng(seed)
    g = es.Graph.grid(h, w)
    return g, rng.normal(0, scale, (h * w, c)), rng.normal(0, scale, (g.num_edges, c, c))


def test_marginals_and_ais_log_z_agree_with_exact_within_error_bars():
    g, s_n, s_e = _model(60)
    lz, node, edge, _, _ = brute_force(g, s_n, s_e)
    r = es.infer(g, s_n, s_e, method="gibbs", num_samples=4000, seed=3)
    assert r.method == "gibbs" and r.node_stderr.shape == node.shape
    assert (r.node_stderr > 0).any() and r.rhat < 1.1 and r.converged
    assert (np.abs(r.node_marginals - node) <= 5 * r.node_stderr + 0.01).all()
    assert np.abs(r.edge_marginals - edge).max() < 0.05
    assert abs(float(r.log_z) - lz) <= 4 * float(r.log_z_stderr) + 0.05


@pytest.mark.slow
def test_error_bars_are_honest_across_seeds():
    g, s_n, s_e = _model(61, scale=0.7)
    _, node, _, _, _ = brute_force(g, s_n, s_e)
    covered = []
    for seed in range(30):
        r = es.infer(g, s_n, s_e, method="gibbs", num_samples=1000, seed=seed, ais_steps=0)
        covered.append(np.abs(r.node_marginals - node) <= 1.96 * r.node_stderr)
    frac = np.mean(covered)
    # Nominal 0.95; batch means with 20 batches is a little optimistic, so allow slack.
    assert 0.8 <= frac <= 1.0, frac


def test_same_seed_same_result_whatever_the_thread_count():
    code = (
        "import hashlib, sys, numpy as np, expsoftmax as es\n"
        "rng = np.random.default_rng(0)\n"
        "g = es.Graph.grid(70, 70)\n"
        "s_n = rng.normal(size=(4900, 3)); s_e = rng.normal(0, .5, (g.num_edges, 3, 3))\n"
        "r = es.infer(g, s_n, s_e, method='gibbs', num_samples=20, burn_in=5, seed=9,\n"
        "             ais_steps=5, ais_runs=4)\n"
        "y = es.sample(g, s_n, s_e, 6, seed=9, method='gibbs', burn_in=3)\n"
        "out = r.node_marginals.tobytes() + r.log_z.tobytes() + y.tobytes()\n"
        "sys.stdout.write(hashlib.sha256(out).hexdigest())\n"
    )
    assert len(outputs_per_thread_count(code)) == 1


def test_every_edge_form_and_entry_point():
    g, s_n, s_e = _model(62, c=2)
    rng = np.random.default_rng(1)
    wgt, table = rng.uniform(0.5, 1.5, g.num_edges), rng.normal(size=(2, 2))
    full = wgt[:, None, None] * table
    opts = dict(num_samples=300, seed=5, ais_steps=10, ais_runs=4)
    a = es.infer(g, s_n, (wgt, table), method="gibbs", **opts)
    b = es.infer(g, s_n, full, method="gibbs", **opts)
    np.testing.assert_allclose(a.node_marginals, b.node_marginals, atol=1e-12)
    c = es.infer(g, s_n, table[None], method="gibbs", **opts)  # shared table
    assert c.node_marginals.shape == (9, 2)
    y = rng.integers(0, 2, 9)
    loss, gn, ge = es.loss_and_grad(g, s_n, (wgt, table), y, method="gibbs", init="gold", **opts)
    assert np.isfinite(loss) and isinstance(ge, es.WeightedEdges)
    np.testing.assert_allclose(gn.sum(-1), 0, atol=1e-9)
    best = es.decode(g, s_n, full, method="gibbs", num_samples=200, seed=1)
    _, _, _, _, opt = brute_force(g, s_n, full)
    assert scores_of(g, s_n, full, best[None])[0] >= opt - 1e-9 - 0.5  # near-optimal
    ys = es.sample(g, s_n, full, 10, seed=2, method="gibbs", burn_in=10)
    assert ys.shape == (10, 9) and ys.min() >= 0 and ys.max() < 2


def test_gibbs_errors():
    g, s_n, s_e = _model(63)
    with pytest.raises(ValueError, match="gold"):
        es.infer(g, s_n, s_e, method="gibbs", init="gold")
    with pytest.raises(ValueError, match="num_chains"):
        es.infer(g, s_n, s_e, method="gibbs", num_chains=0)
    with pytest.raises(TypeError, match="unknown option"):
        es.infer(g, s_n, s_e, method="gibbs", damping=0.5)
    with pytest.raises(TypeError):  # sample's own num_samples, not a Gibbs option
        es.sample(g, s_n, s_e, 5, None, "gibbs", num_samples=3)


def _relabelled(g, s_e, rng):
    """The same model on a graph whose edge list is shuffled and re-oriented (so it is
    not recognised as a grid and the general sweep runs): (graph, s_e)."""
    perm = rng.permutation(g.num_edges)
    flip = rng.random(g.num_edges) < 0.5
    edges = g.edges[perm].copy()
    edges[flip] = edges[flip][:, ::-1]
    s_e = np.broadcast_to(s_e, (g.num_edges, *s_e.shape[-2:]))[perm].copy()
    s_e[flip] = s_e[flip].transpose(0, 2, 1)
    return es.Graph(g.num_nodes, edges), s_e


@pytest.mark.parametrize("form", ["shared", "full", "weighted"])
def test_grid_fast_path_agrees_with_exact_and_with_the_general_sweep(form):
    # A 3 x 5 grid (C = 3) exercises the grid kernel: borders, odd width, both colours.
    h, w, c = 3, 5, 3
    rng = np.random.default_rng(64)
    g = es.Graph.grid(h, w)
    s_n = rng.normal(size=(h * w, c))
    table = rng.normal(0, 0.8, (c, c))
    wgt = rng.uniform(0.5, 1.5, g.num_edges)
    full = {
        "shared": np.broadcast_to(table, (g.num_edges, c, c)),
        "full": rng.normal(0, 0.8, (g.num_edges, c, c)),
        "weighted": wgt[:, None, None] * table,
    }[form]
    given = {"shared": table[None], "full": full, "weighted": (wgt, table)}[form]
    lz, exact = grid_exact(h, w, s_n, full)
    opts = dict(num_samples=3000, seed=11, ais_steps=200, ais_runs=8)
    fast = es.infer(g, s_n, given, method="gibbs", **opts)
    assert (np.abs(fast.node_marginals - exact) <= 5 * fast.node_stderr + 0.01).all()
    assert abs(float(fast.log_z) - lz) <= 4 * float(fast.log_z_stderr) + 0.05
    # The grid kernel draws the same nodes from the same random streams, in the same
    # order and by the same inverse-CDF rule as the general sweep (which runs on a graph
    # not recognised as a grid), so the chains coincide draw for draw; only a uniform
    # within rounding of a CDF step could tell them apart (probability ~1e-12 here).
    g2, s_e2 = _relabelled(g, full, rng)
    general = es.infer(g2, s_n, s_e2, method="gibbs", **opts)
    np.testing.assert_array_equal(fast.node_marginals, general.node_marginals)
    np.testing.assert_allclose(fast.log_z, general.log_z, rtol=1e-12)
    ys = es.sample(g, s_n, given, 50, seed=3, method="gibbs", burn_in=5, num_chains=2)
    np.testing.assert_array_equal(
        ys, es.sample(g2, s_n, s_e2, 50, seed=3, method="gibbs", burn_in=5, num_chains=2)
    )


def test_grid_fast_path_never_draws_forbidden_labellings():
    # Equal neighbours forbidden (proper colourings) and one forbidden label; with six
    # labels a node always keeps an allowed one whatever its four neighbours hold.
    h, w, c = 6, 7, 6
    rng = np.random.default_rng(65)
    g = es.Graph.grid(h, w)
    s_n = rng.normal(size=(h * w, c))
    s_n[5, 0] = -np.inf
    table = np.where(np.eye(c, dtype=bool), -np.inf, 0.0)[None]
    ys = es.sample(g, s_n, table, 200, seed=4, method="gibbs", burn_in=20)
    e = g.edges
    assert (ys[:, e[:, 0]] != ys[:, e[:, 1]]).all() and (ys[:, 5] != 0).all()
    r = es.infer(g, s_n, table, method="gibbs", num_samples=200, seed=4, ais_steps=0)
    assert r.node_marginals[5, 0] == 0 and np.isfinite(r.node_marginals).all()


def test_grid_sweep_with_very_spread_scores_uses_the_log_domain():
    # Scores spanning ~1e3 leave the probability domain; the answer must still be the
    # (here almost deterministic) exact one.
    h, w, c = 3, 4, 2
    rng = np.random.default_rng(66)
    g = es.Graph.grid(h, w)
    s_n = rng.normal(0, 300, (h * w, c))
    s_e = rng.normal(0, 1, (g.num_edges, c, c))
    _, exact = grid_exact(h, w, s_n, s_e)
    r = es.infer(g, s_n, s_e, method="gibbs", num_samples=200, seed=1, ais_steps=0)
    np.testing.assert_allclose(r.node_marginals, exact, atol=1e-9)
