"""MAP labellings against brute force; exact samples against marginals."""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force, outputs_per_thread_count, random_forest, scores_of


def test_map_equals_brute_force_argmax():
    rng = np.random.default_rng(30)
    for _ in range(100):
        n = int(rng.integers(1, 7))
        c = int(rng.integers(1, 5))
        g = random_forest(rng, n)
        s_n = rng.normal(size=(n, c))
        s_e = rng.normal(size=(g.num_edges, c, c))
        _, _, _, best, best_score = brute_force(g, s_n, s_e)
        for dtype in (np.float64, np.float32):
            y = es.decode(g, s_n.astype(dtype), s_e.astype(dtype))
            assert y.dtype == np.int64 and y.shape == (n,)
            score = scores_of(g, s_n.astype(dtype), s_e.astype(dtype), y[None])[0]
            ref = scores_of(g, s_n.astype(dtype), s_e.astype(dtype), best[None])[0]
            assert abs(score - ref) < (1e-10 if dtype == np.float64 else 1e-5)


def test_map_batched_matches_items():
    rng = np.random.default_rng(31)
    g = es.Graph.tree([-1, 0, 0, 1, 3, -1, 5])
    s_n = rng.normal(size=(4, 7, 3))
    t = rng.normal(size=(3, 3))
    y = es.decode(g, s_n, t)
    assert y.shape == (4, 7)
    for b in range(4):
        np.testing.assert_array_equal(y[b], es.decode(g, s_n[b], t))


@pytest.mark.slow
def test_sample_frequencies_match_marginals():
    """With N samples a frequency has standard error sqrt(p(1-p)/N); every node and edge
    frequency must lie within 5 standard errors (plus 1e-3) of the exact marginal."""
    rng = np.random.default_rng(32)
    g = random_forest(rng, 7)
    c = 3
    s_n = rng.normal(size=(2, 7, c))
    s_e = rng.normal(size=(g.num_edges, c, c))
    n_samples = 40_000
    ys = es.sample(g, s_n, s_e, n_samples, seed=123)
    assert ys.shape == (n_samples, 2, 7)
    r = es.infer(g, s_n, s_e)
    for b in range(2):
        freq = np.stack([(ys[:, b, :] == k).mean(axis=0) for k in range(c)], axis=-1)
        p = r.node_marginals[b]
        se = np.sqrt(p * (1 - p) / n_samples)
        assert (np.abs(freq - p) <= 5 * se + 1e-3).all()
        for e, (i, j) in enumerate(g.edges):
            pair = np.zeros((c, c))
            np.add.at(pair, (ys[:, b, i], ys[:, b, j]), 1.0 / n_samples)
            pe = r.edge_marginals[b, e]
            assert (np.abs(pair - pe) <= 5 * np.sqrt(pe * (1 - pe) / n_samples) + 1e-3).all()


def test_same_seed_same_samples_whatever_the_thread_count():
    code = (
        "import hashlib, numpy as np, expsoftmax as es, sys\n"
        "rng = np.random.default_rng(0)\n"
        "g = es.Graph.chain(30)\n"
        "y = es.sample(g, rng.normal(size=(5, 30, 4)), rng.normal(size=(4, 4)), 64, seed=7)\n"
        "sys.stdout.write(hashlib.sha256(y.tobytes()).hexdigest())\n"
    )
    assert len(outputs_per_thread_count(code)) == 1
    g = es.Graph.chain(5)
    s_n = np.random.default_rng(1).normal(size=(5, 3))
    a = es.sample(g, s_n, np.zeros((3, 3)), 10, seed=5)
    b = es.sample(g, s_n, np.zeros((3, 3)), 10, seed=5)
    c = es.sample(g, s_n, np.zeros((3, 3)), 10, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert es.sample(g, s_n, np.zeros((3, 3)), 0, seed=1).shape == (0, 5)
