"""-inf scores forbid labels and label pairs (constrained tagging)."""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force, random_forest, scores_of

NEG = -np.inf


def _constrained(rng, g, c, p_forbid, dtype):
    s_n = rng.normal(size=(g.num_nodes, c))
    s_e = rng.normal(size=(g.num_edges, c, c))
    s_e[rng.random(s_e.shape) < p_forbid] = NEG
    s_n[rng.random(s_n.shape) < p_forbid / 3] = NEG
    return s_n.astype(dtype), s_e.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forbidden_states_against_oracle(dtype):
    rng = np.random.default_rng(20)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    checked = 0
    for trial in range(150):
        n = int(rng.integers(2, 7))
        g = es.Graph.chain(n) if trial % 2 else random_forest(rng, n)
        c = int(rng.integers(2, 5))
        s_n, s_e = _constrained(rng, g, c, 0.3, dtype)
        lz, node, edge, best, _ = brute_force(g, s_n, s_e)
        if lz == -np.inf:
            with pytest.raises(es.InfeasibleError):
                es.infer(g, s_n, s_e)
            with pytest.raises(ValueError, match="forbid every labelling"):
                es.decode(g, s_n, s_e)
            continue
        checked += 1
        r = es.infer(g, s_n, s_e)
        assert abs(float(r.log_z) - lz) <= tol * max(1, abs(lz))
        np.testing.assert_allclose(r.node_marginals, node, atol=tol)
        np.testing.assert_allclose(r.edge_marginals, edge, atol=tol)
        # Forbidden states have marginal exactly 0.
        assert (r.node_marginals[s_n == NEG] == 0).all()
        assert (r.edge_marginals[s_e == NEG] == 0).all()
        # Gradients are free of NaN, also for a forbidden gold labelling (loss = +inf).
        y = rng.integers(0, c, n)
        loss, gn, ge = es.loss_and_grad(g, s_n, s_e, y)
        gold = scores_of(g, s_n, s_e, y[None])[0]
        if gold == -np.inf:
            assert loss == np.inf
        else:
            assert abs(float(loss) - (lz - gold)) <= tol * max(1, abs(lz))
        assert not np.isnan(gn).any() and not np.isnan(ge).any()
        # MAP and samples are allowed labellings.
        y_map = es.decode(g, s_n, s_e)
        assert scores_of(g, s_n, s_e, y_map[None])[0] > -np.inf
        ys = es.sample(g, s_n, s_e, 50, seed=trial)
        assert (scores_of(g, s_n, s_e, ys) > -np.inf).all()
    assert checked > 50


def test_bio_transitions_on_a_chain():
    """Tags O, B, I: I may only follow B or I. The marginal of I after O is zero."""
    g = es.Graph.chain(5)
    t = np.zeros((3, 3))
    t[0, 2] = NEG  # O -> I forbidden
    s_n = np.random.default_rng(21).normal(size=(5, 3))
    s_n[0, 2] = NEG  # cannot start with I
    r = es.infer(g, s_n, t)
    lz, node, edge, _, _ = brute_force(g, s_n, t[None])
    np.testing.assert_allclose(r.node_marginals, node, atol=1e-12)
    assert (r.edge_marginals[:, 0, 2] == 0).all()
    y = es.decode(g, s_n, t)
    assert not any(y[k] == 2 and y[k - 1] == 0 for k in range(1, 5)) and y[0] != 2


def test_every_labelling_forbidden_is_an_error():
    g = es.Graph.chain(3)
    t = np.full((2, 2), NEG)
    with pytest.raises(ValueError, match="forbid every labelling"):
        es.infer(g, np.zeros((3, 2)), t)
    with pytest.raises(ValueError, match="forbid every labelling"):
        es.loss_and_grad(g, np.zeros((3, 2)), t, [0, 0, 0])
    with pytest.raises(ValueError, match="forbid every labelling"):
        es.sample(g, np.zeros((3, 2)), t, 3, seed=0)
    # Only item 1 of the batch is infeasible: the error names it.
    s_n = np.zeros((2, 3, 2))
    s_n[1, 1] = NEG
    with pytest.raises(es.InfeasibleError, match="batch item 1"):
        es.infer(g, s_n, np.zeros((2, 2)))


def test_forbidden_with_huge_scores_is_still_exact():
    """The best path under node scores is forbidden by a transition, and the only allowed
    path is 1e3 worse: the probability-domain shortcut underflows and must fall back."""
    g = es.Graph.chain(4)
    s_n = np.array([[0.0, -1e3], [0.0, -1e3], [0.0, -1e3], [NEG, 0.0]])
    t = np.array([[0.0, NEG], [NEG, 0.0]])  # labels never change along the chain
    r = es.infer(g, s_n, t)
    assert abs(float(r.log_z) - (-3e3)) < 1e-9
    np.testing.assert_array_equal(r.node_marginals, [[0, 1]] * 4)
    np.testing.assert_array_equal(es.decode(g, s_n, t), [1, 1, 1, 1])
