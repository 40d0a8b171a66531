"""Gibbs sampling against exact answers, with statistical bounds.

Bounds: each node marginal within 5 standard errors (plus 0.01 for the error of the
error bar itself) of the exact marginal; AIS log Z within 4 of its standard errors plus
0.05; across seeds, roughly the nominal share of 95% intervals cover the truth (loose).
"""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force, outputs_per_thread_count, scores_of


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
