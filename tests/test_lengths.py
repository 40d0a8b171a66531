"""Variable-length chains in one batch: padding adds nothing and gets zero gradient."""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es


def test_padded_batch_equals_each_sequence_alone():
    rng = np.random.default_rng(40)
    n, c = 9, 4
    g = es.Graph.chain(n)
    lengths = np.array([9, 5, 1, 0, 3])
    s_n = rng.normal(size=(5, n, c))
    t = rng.normal(size=(1, c, c))
    y = rng.integers(0, c, (5, n))
    y[1, 5:] = -100  # padding may hold anything
    r = es.infer(g, s_n, t, lengths=lengths)
    loss, gn, ge = es.loss_and_grad(g, s_n, t, y, lengths=lengths)
    ymap = es.decode(g, s_n, t, lengths=lengths)
    total_ge = np.zeros_like(t)
    for b, L in enumerate(lengths):
        if L == 0:
            assert r.log_z[b] == 0 and loss[b] == 0
            assert (gn[b] == 0).all() and (ymap[b] == -1).all()
            continue
        gl = es.Graph.chain(int(L))
        rb = es.infer(gl, s_n[b, :L], t)
        assert abs(r.log_z[b] - rb.log_z) < 1e-12
        np.testing.assert_allclose(r.node_marginals[b, :L], rb.node_marginals, atol=1e-12)
        assert (r.node_marginals[b, L:] == 0).all()
        assert (r.edge_marginals[b, max(L - 1, 0) :] == 0).all()
        lb, gnb, geb = es.loss_and_grad(gl, s_n[b, :L], t, y[b, :L])
        assert abs(loss[b] - lb) < 1e-12
        np.testing.assert_allclose(gn[b, :L], gnb, atol=1e-12)
        assert (gn[b, L:] == 0).all()
        total_ge += geb
        np.testing.assert_array_equal(ymap[b, :L], es.decode(gl, s_n[b, :L], t))
        assert (ymap[b, L:] == -1).all()
    np.testing.assert_allclose(ge, total_ge, atol=1e-10)
    ys = es.sample(g, s_n, t, 4, seed=0, lengths=lengths)
    assert (ys[:, 1, 5:] == -1).all() and (ys[:, 1, :5] >= 0).all()


def test_lengths_are_checked():
    g = es.Graph.chain(4)
    s_n, t = np.zeros((2, 4, 2)), np.zeros((2, 2))
    with pytest.raises(ValueError, match="lengths"):
        es.infer(g, s_n, t, lengths=[5, 1])
    with pytest.raises(ValueError, match="lengths"):
        es.infer(g, s_n, t, lengths=[-1, 1])
    with pytest.raises(es.ShapeError):
        es.infer(g, s_n, t, lengths=[1, 2, 3])
    with pytest.raises(TypeError):
        es.infer(g, s_n, t, lengths=[1.5, 2.0])
    tree = es.Graph.tree([-1, 0, 0, 1])
    with pytest.raises(ValueError, match="chain"):
        es.infer(tree, s_n, np.zeros((2, 2)), lengths=[1, 2])


def test_mask_is_an_equivalent_way_to_give_lengths():
    rng = np.random.default_rng(41)
    g = es.Graph.chain(6)
    s_n, t = rng.normal(size=(3, 6, 3)), rng.normal(size=(3, 3))
    lengths = np.array([6, 2, 4])
    mask = np.arange(6) < lengths[:, None]
    y = rng.integers(0, 3, (3, 6))
    a = es.loss_and_grad(g, s_n, t, y, lengths=lengths)
    b = es.loss_and_grad(g, s_n, t, y, mask=mask)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(
        es.decode(g, s_n, t, mask=mask), es.decode(g, s_n, t, lengths=lengths)
    )
    with pytest.raises(ValueError, match="prefix"):
        es.infer(g, s_n, t, mask=~mask)
