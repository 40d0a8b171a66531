"""Chains with a table per edge (and per item), ``s_e (B, T-1, C, C)`` or broadcast
``(T-1, C, C)``: the form a network writes. Batches of at least eight items with C <= 20
run eight items at once (one per SIMD lane, where the CPU has AVX2); these tests check
those batches against enumeration, against the same items run alone (bit for bit), and
across thread counts (bit for bit), in float32 and float64.

Tolerances against a float64 enumeration: 1e-4 (float32), 1e-10 (float64), as for every
exact method.
"""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force


def _reference(s_n, s_e, y, lengths):
    """Per item, by enumeration over its real positions: loss, grad_n and grad_e (per item,
    or summed over items when s_e is broadcast (T-1, C, C))."""
    b, t, c = s_n.shape
    per_item = s_e.ndim == 4
    loss, gn = np.zeros(b), np.zeros((b, t, c))
    ge = np.zeros(s_e.shape)
    for i in range(b):
        n = int(lengths[i])
        if n == 0:
            continue
        tabs = (s_e[i] if per_item else s_e)[: n - 1].astype(np.float64)
        lz, node, edge, _, _ = brute_force(es.Graph.chain(n), s_n[i, :n].astype(np.float64), tabs)
        yi = y[i, :n]
        gold = s_n[i, np.arange(n), yi].sum() + tabs[np.arange(n - 1), yi[:-1], yi[1:]].sum()
        loss[i] = lz - gold
        gn[i, :n] = node
        gn[i, np.arange(n), yi] -= 1
        g = ge[i] if per_item else ge
        g[: n - 1] += edge
        np.add.at(g, (np.arange(n - 1), yi[:-1], yi[1:]), -1)
    return loss, gn, ge


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
@pytest.mark.parametrize("b,t,c", [(8, 4, 2), (19, 4, 5), (16, 3, 9), (9, 3, 17)])
@pytest.mark.parametrize("broadcast", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_batches_match_enumeration(dtype, tol, b, t, c, broadcast, ragged):
    rng = np.random.default_rng(b * 100 + c)
    s_n = rng.normal(size=(b, t, c)).astype(dtype)
    shape = (t - 1, c, c) if broadcast else (b, t - 1, c, c)
    s_e = rng.normal(0, 1.5, size=shape).astype(dtype)
    y = rng.integers(0, c, size=(b, t))
    lengths = rng.integers(0, t + 1, size=b) if ragged else np.full(b, t)
    loss, gn, ge = es.loss_and_grad(es.Graph.chain(t), s_n, s_e, y, lengths=lengths)
    want = _reference(s_n, s_e, y, lengths)
    for got, ref, name in zip((loss, gn, ge), want, ("loss", "grad_n", "grad_e")):
        assert got.dtype == dtype, name
        np.testing.assert_allclose(got, ref, atol=tol, rtol=tol, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [3, 7, 8, 12, 20])
def test_a_batch_equals_its_items_alone(c, dtype):
    # Marginals of a batch (items in groups of eight) and of each item in a batch of one
    # (the one-item kernel): the same bits. Lengths that differ, so items are grouped by
    # length, and one item with a table too wide for float32 products (for float32, its
    # group runs one by one, in float64 products).
    rng = np.random.default_rng(c)
    b, t = 21, 6
    s_n = rng.normal(size=(b, t, c)).astype(dtype)
    s_e = rng.normal(size=(b, t - 1, c, c)).astype(dtype)
    s_e[4, 2, 0, 1] = 45.0
    lengths = np.array([t, t - 2, t, 1, t, t, 3] * 3)
    g = es.Graph.chain(t)
    r = es.infer(g, s_n, s_e, lengths=lengths)
    for i in range(b):
        one = es.infer(g, s_n[i : i + 1], s_e[i : i + 1], lengths=lengths[i : i + 1])
        np.testing.assert_array_equal(r.log_z[i : i + 1], one.log_z)
        np.testing.assert_array_equal(r.node_marginals[i : i + 1], one.node_marginals)
        np.testing.assert_array_equal(r.edge_marginals[i : i + 1], one.edge_marginals)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("broadcast", [False, True])
def test_results_do_not_depend_on_the_thread_count(broadcast, dtype):
    rng = np.random.default_rng(5)
    b, t, c = 77, 30, 6
    s_n = rng.normal(size=(b, t, c)).astype(dtype)
    shape = (t - 1, c, c) if broadcast else (b, t - 1, c, c)
    s_e = rng.normal(size=shape).astype(dtype)
    y = rng.integers(0, c, size=(b, t))
    g = es.Graph.chain(t)
    before = es.get_num_threads()
    try:
        out = []
        for k in (1, 2, 3):
            es.set_num_threads(k)
            out.append(es.loss_and_grad(g, s_n, s_e, y))
    finally:
        es.set_num_threads(0)
    assert es.get_num_threads() == before
    for other in out[1:]:
        for a, x in zip(out[0], other):
            np.testing.assert_array_equal(a, x)


@pytest.mark.parametrize("dtype,b", [(np.float32, 24), (np.float64, 12)])
def test_large_outputs_equal_items_alone(dtype, b):
    # Pair rows of more than 8 MiB (C = 50: the one-item kernel) are streamed out of cache
    # per edge: the same bits as each item alone (a small output, stored as usual), the
    # loss's gradient equal to the marginals minus the gold one-hots, and every edge's pair
    # marginals summing to 1 (zeros past a shorter item's last edge).
    rng = np.random.default_rng(50)
    t, c = 40, 50
    s_n = rng.normal(size=(b, t, c)).astype(dtype)
    s_e = rng.normal(size=(b, t - 1, c, c)).astype(dtype)
    lengths = np.array([t, t - 3, 2] * (b // 3))
    y = rng.integers(0, c, size=(b, t))
    g = es.Graph.chain(t)
    r = es.infer(g, s_n, s_e, lengths=lengths)
    assert r.edge_marginals.nbytes > 8 << 20
    for i in range(0, b, 5):
        one = es.infer(g, s_n[i : i + 1], s_e[i : i + 1], lengths=lengths[i : i + 1])
        np.testing.assert_array_equal(r.edge_marginals[i : i + 1], one.edge_marginals)
        np.testing.assert_array_equal(r.log_z[i : i + 1], one.log_z)
    sums = r.edge_marginals.astype(np.float64).sum(axis=(-1, -2))
    live = np.arange(t - 1)[None, :] < (lengths[:, None] - 1)
    np.testing.assert_allclose(sums[live], 1.0, rtol=1e-5)
    assert np.all(sums[~live] == 0.0)
    loss, gn, ge = es.loss_and_grad(g, s_n, s_e, y, lengths=lengths)
    gold = np.zeros(ge.shape)
    for i in range(b):
        n = lengths[i]
        gold[i, np.arange(n - 1), y[i, : n - 1], y[i, 1:n]] = 1.0
    np.testing.assert_array_equal(ge, (r.edge_marginals - gold.astype(dtype)).astype(dtype))


def _forward_backward(s_n, s_e):
    """log Z, node and pair marginals of one chain by the log-domain recursions, float64."""
    s_n, s_e = s_n.astype(np.float64), s_e.astype(np.float64)
    t, c = s_n.shape
    la, lb = np.zeros((t, c)), np.zeros((t, c))
    la[0] = s_n[0]
    for k in range(1, t):
        la[k] = np.logaddexp.reduce(la[k - 1][:, None] + s_e[k - 1], axis=0) + s_n[k]
    for k in range(t - 2, -1, -1):
        lb[k] = np.logaddexp.reduce(s_e[k] + (s_n[k + 1] + lb[k + 1])[None, :], axis=1)
    log_z = np.logaddexp.reduce(la[-1])
    node = np.exp(la + lb - log_z)
    pair = np.exp(la[:-1, :, None] + s_e + (s_n[1:] + lb[1:])[:, None, :] - log_z)
    return log_z, node, pair


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-10)])
def test_wide_class_counts_match_a_log_domain_oracle(dtype, tol):
    # C > 20 (the one-item kernel, where float32 tables are exponentiated relative to the
    # previous table's largest entry in the pass that reads them): tables whose levels
    # drift slowly along the chain (the guess stands) and jump by up to 60 (it is taken
    # again), against float64 log-domain forward–backward.
    rng = np.random.default_rng(24)
    b, t, c = 6, 14, 24
    s_n = rng.normal(size=(b, t, c)).astype(dtype)
    level = np.cumsum(rng.normal(0, 2.0, size=(b, t - 1)), axis=1)
    level[:, 5::4] += rng.uniform(-60, 60, size=level[:, 5::4].shape)
    s_e = (rng.normal(0, 1.5, size=(b, t - 1, c, c)) + level[..., None, None]).astype(dtype)
    r = es.infer(es.Graph.chain(t), s_n, s_e)
    for i in range(b):
        log_z, node, pair = _forward_backward(s_n[i], s_e[i])
        np.testing.assert_allclose(r.log_z[i], log_z, rtol=tol)
        np.testing.assert_allclose(r.node_marginals[i], node, atol=tol)
        np.testing.assert_allclose(r.edge_marginals[i], pair, atol=tol)
