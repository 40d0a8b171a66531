"""Exact inference parallel over the components of one forest item.

A small batch whose items are large forests is split into groups of whole components
that run in parallel; the answer must equal the one-item-at-a-time pass (which runs
for larger batches) up to summation order, and be bit-identical for any thread count.
"""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import outputs_per_thread_count


def _forest(k=300, length=40):
    # k chains of `length` nodes plus a few stars, stored with shuffled edges.
    edges = [[i * length + j, i * length + j + 1] for i in range(k) for j in range(length - 1)]
    n = k * length
    for s in range(20):
        hub = n + s * 10
        edges += [[hub + m, hub] for m in range(1, 10)]
    n += 200
    rng = np.random.default_rng(0)
    return es.Graph(n, np.array(edges)[rng.permutation(len(edges))])


@pytest.mark.parametrize("shared", [False, True])
def test_component_groups_equal_the_sequential_pass(shared):
    g = _forest()
    rng = np.random.default_rng(72)
    c = 5
    s_n = rng.normal(size=(1, g.num_nodes, c))
    s_e = rng.normal(size=(1, 1 if shared else g.num_edges, c, c))
    y = rng.integers(0, c, (1, g.num_nodes))
    one = es.loss_and_grad(g, s_n, s_e, y)
    # Five copies: a batch large enough to run each item in one sequential pass.
    five = es.loss_and_grad(g, np.repeat(s_n, 5, 0), s_e, np.repeat(y, 5, 0))
    np.testing.assert_allclose(one[0], five[0][:1], rtol=1e-13)
    np.testing.assert_allclose(one[1][0], five[1][0], atol=1e-13)
    np.testing.assert_allclose(one[2] * 5, five[2], rtol=1e-12, atol=1e-10)
    if not shared:
        a, b = es.infer(g, s_n, s_e), es.infer(g, np.repeat(s_n, 5, 0), s_e)
        np.testing.assert_allclose(a.log_z, b.log_z[:1], rtol=1e-13)
        np.testing.assert_allclose(a.node_marginals[0], b.node_marginals[0], atol=1e-13)
        np.testing.assert_allclose(a.edge_marginals[0], b.edge_marginals[0], atol=1e-13)


def test_component_groups_do_not_depend_on_the_thread_count():
    code = (
        "import hashlib, sys, numpy as np, expsoftmax as es\n"
        "edges = [[i * 40 + j, i * 40 + j + 1] for i in range(300) for j in range(39)]\n"
        "g = es.Graph(12000, np.array(edges))\n"
        "rng = np.random.default_rng(1)\n"
        "s_n = rng.normal(size=(1, 12000, 4)); s_e = rng.normal(size=(1, 1, 4, 4))\n"
        "y = rng.integers(0, 4, (1, 12000))\n"
        "loss, gn, ge = es.loss_and_grad(g, s_n, s_e, y)\n"
        "r = es.infer(g, s_n, rng.normal(size=(1, g.num_edges, 4, 4)))\n"
        "out = loss.tobytes() + gn.tobytes() + ge.tobytes() + r.edge_marginals.tobytes()\n"
        "sys.stdout.write(hashlib.sha256(out).hexdigest())\n"
    )
    assert len(outputs_per_thread_count(code)) == 1
