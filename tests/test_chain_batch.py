"""The batch-major linear-chain kernel (one transition table for every edge and item, a
batch of at least 8 chains) against enumeration, and its fallbacks.

Tolerances: 1e-10 (float64) and 1e-4 (float32), as for every exact method.
"""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force, chain_log_z


def _reference(s_n, table, y, lengths):
    """Per item, by enumeration over its real positions: loss, grad_n, grad of the table."""
    b, t, c = s_n.shape
    loss, gn, ge = np.zeros(b), np.zeros((b, t, c)), np.zeros((c, c))
    for i in range(b):
        n = int(lengths[i])
        if n == 0:
            continue
        g = es.Graph.chain(n)
        se = np.broadcast_to(table, (max(n - 1, 0), c, c))
        lz, node, edge, _, _ = brute_force(g, s_n[i, :n].astype(np.float64), se)
        gold = s_n[i, np.arange(n), y[i, :n]].sum() + table[y[i, : n - 1], y[i, 1:n]].sum()
        loss[i] = lz - gold
        gn[i, :n] = node
        gn[i, np.arange(n), y[i, :n]] -= 1
        ge += edge.sum(0)
        np.add.at(ge, (y[i, : n - 1], y[i, 1:n]), -1)
    return loss, gn, ge


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("table_kind", ["plain", "forbidden", "wide"])
def test_batch_of_chains_matches_enumeration(dtype, tol, table_kind):
    rng = np.random.default_rng(70)
    b, t, c = 12, 5, 3
    s_n = rng.normal(0, 1.5, (b, t, c))
    s_n[2, 1, 0] = -np.inf  # a forbidden label
    table = rng.normal(0, 1.0, (c, c))
    if table_kind == "forbidden":  # a forbidden transition: the log-domain kernel runs
        table[0, 2] = -np.inf
    elif table_kind == "wide":  # span > 300: the log-domain kernel runs
        table[1, 1] = 400.0
    y = rng.integers(0, c, (b, t))
    y[2, 1] = 1
    y[:, 1:][table[y[:, :-1], y[:, 1:]] == -np.inf] = 0
    lengths = np.array([t, 0, 1, 2, t, 3, t, 4, 5, 1, t, 2])
    s_n, table = s_n.astype(dtype), table.astype(dtype)
    want = _reference(s_n.astype(np.float64), table.astype(np.float64), y, lengths)
    loss, gn, ge = es.loss_and_grad(es.Graph.chain(t), s_n, table[None], y, lengths=lengths)
    assert loss.dtype == gn.dtype == ge.dtype == dtype and ge.shape == (1, c, c)
    finite = np.isfinite(want[0])
    np.testing.assert_allclose(loss[finite], want[0][finite], rtol=tol, atol=tol)
    np.testing.assert_allclose(gn, want[1], atol=tol)
    np.testing.assert_allclose(ge[0], want[2], atol=tol * b * t)
    assert not np.isnan(gn).any()


def test_batch_kernel_equals_per_item_calls_on_a_long_batch():
    # 40 chains of 60 positions, C = 7: the same numbers as one call per item (the
    # per-item kernel runs for a batch of one).
    rng = np.random.default_rng(71)
    b, t, c = 40, 60, 7
    s_n, table = rng.normal(0, 2, (b, t, c)), rng.normal(0, 1, (1, c, c))
    y = rng.integers(0, c, (b, t))
    g = es.Graph.chain(t)
    loss, gn, ge = es.loss_and_grad(g, s_n, table, y)
    per = [es.loss_and_grad(g, s_n[i : i + 1], table, y[i : i + 1]) for i in range(b)]
    np.testing.assert_allclose(loss, np.concatenate([p[0] for p in per]), rtol=1e-12)
    np.testing.assert_allclose(gn, np.concatenate([p[1] for p in per]), atol=1e-12)
    np.testing.assert_allclose(ge, sum(p[2] for p in per), atol=1e-10)


@pytest.mark.parametrize("node_scale,table_scale", [(1e4, 30.0), (1e4, 1e4), (50.0, 5.0)])
def test_batch_of_chains_with_large_scores_matches_a_log_domain_reference(node_scale, table_scale):
    # Node scores up to ~1e4 (labels far below a node's best flush to zero) with a table
    # the scaled kernel takes (span < 300) or leaves to the log-domain kernel (1e4).
    rng = np.random.default_rng(73)
    b, t, c = 10, 50, 4
    s_n = rng.normal(0, node_scale, (b, t, c))
    table = rng.normal(0, table_scale, (c, c))
    y = rng.integers(0, c, (b, t))
    loss, gn, _ = es.loss_and_grad(es.Graph.chain(t), s_n, table[None], y)
    gold = s_n[np.arange(b)[:, None], np.arange(t), y].sum(1) + table[y[:, :-1], y[:, 1:]].sum(1)
    se = np.broadcast_to(table, (t - 1, c, c))
    want = np.array([chain_log_z(s_n[i], se) for i in range(b)])
    np.testing.assert_allclose(loss + gold, want, rtol=1e-12)
    assert np.isfinite(gn).all() and np.abs(gn.sum(-1)).max() < 1e-9
