"""Property-based tests over random forests, shapes, dtypes and batch shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import expsoftmax as es
from oracle import brute_force


@st.composite
def problems(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(1, 4))
    parents = [-1] + [draw(st.integers(-1, v - 1)) for v in range(1, n)]
    flips = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    edges = [
        ((p, v) if not f else (v, p)) for v, (p, f) in enumerate(zip(parents, flips)) if p >= 0
    ]
    order = draw(st.permutations(range(len(edges)))) if edges else []
    g = es.Graph(n, np.array([edges[k] for k in order], dtype=np.int64).reshape(-1, 2))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    shared = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 1e3]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    s_n = (rng.normal(size=batch + (n, c)) * scale).astype(dtype)
    e_shape = (1, c, c) if shared else batch + (g.num_edges, c, c)
    s_e = (rng.normal(size=e_shape) * scale).astype(dtype)
    y = rng.integers(0, c, batch + (n,))
    return g, s_n, s_e, y


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_marginals_are_consistent_distributions(p):
    g, s_n, s_e, y = p
    r = es.infer(g, s_n, s_e)
    tol = 1e-4 if s_n.dtype == np.float32 else 1e-10
    batch = np.broadcast_shapes(s_n.shape[:-2], s_e.shape[:-3])
    assert r.log_z.shape == batch and r.node_marginals.shape == batch + s_n.shape[-2:]
    assert np.isfinite(r.log_z).all()
    np.testing.assert_allclose(r.node_marginals.sum(-1), 1.0, atol=tol)
    assert (r.node_marginals >= 0).all() and (r.edge_marginals >= 0).all()
    for e, (i, j) in enumerate(g.edges):
        np.testing.assert_allclose(
            r.edge_marginals[..., e, :, :].sum(-1), r.node_marginals[..., i, :], atol=tol
        )
        np.testing.assert_allclose(
            r.edge_marginals[..., e, :, :].sum(-2), r.node_marginals[..., j, :], atol=tol
        )
    # Against enumeration on the first item.
    first = (0,) * len(batch)
    sn0 = np.broadcast_to(s_n, batch + s_n.shape[-2:])[first]
    se0 = np.broadcast_to(s_e, batch + s_e.shape[-3:])[first]
    lz, node, _, _, _ = brute_force(g, sn0, se0)
    assert abs(float(r.log_z[first]) - lz) <= tol * max(1.0, abs(lz)) * 10
    np.testing.assert_allclose(r.node_marginals[first], node, atol=tol * 10)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_gradient_rows_sum_to_zero_and_loss_is_nonnegative(p):
    g, s_n, s_e, y = p
    loss, gn, ge = es.loss_and_grad(g, s_n, s_e, y)
    tol = 1e-3 if s_n.dtype == np.float32 else 1e-8
    assert gn.shape == s_n.shape and ge.shape == s_e.shape
    assert (loss >= -tol * np.maximum(1, np.abs(loss))).all()  # -log P(y) >= 0
    np.testing.assert_allclose(gn.sum(-1), 0.0, atol=tol)
    # Each edge's gradient table sums to zero (marginals and indicator both sum to 1).
    np.testing.assert_allclose(ge.sum((-1, -2)), 0.0, atol=tol * 10)


@settings(max_examples=60, deadline=None)
@given(problems(), st.floats(-50, 50))
def test_shifting_a_node_row_shifts_log_z_only(p, shift):
    g, s_n, s_e, _ = p
    s_n = s_n.astype(np.float64)
    s_e = s_e.astype(np.float64)
    a = es.infer(g, s_n, s_e)
    s2 = s_n.copy()
    s2[..., 0, :] += shift
    b = es.infer(g, s2, s_e)
    np.testing.assert_allclose(b.log_z, a.log_z + shift, atol=1e-8 * (1 + np.abs(a.log_z).max()))
    np.testing.assert_allclose(b.node_marginals, a.node_marginals, atol=1e-9)
