"""Graph constructors, attributes, immutability and pickling."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

import expsoftmax as es


def test_constructors():
    c = es.Graph.chain(4)
    assert c.num_nodes == 4 and c.num_edges == 3 and c.is_forest and c.is_chain
    np.testing.assert_array_equal(c.edges, [[0, 1], [1, 2], [2, 3]])
    g = es.Graph.grid(2, 3)
    assert g.num_nodes == 6 and g.num_edges == 7 and not g.is_forest
    pairs = {tuple(e) for e in g.edges.tolist()}
    assert pairs == {(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (1, 4), (2, 5)}
    assert g.grid_shape == (2, 3)
    t = es.Graph.tree([-1, 0, 0, 2, -1])
    np.testing.assert_array_equal(t.edges, [[0, 1], [0, 2], [2, 3]])
    assert t.is_forest and not t.is_chain
    assert es.Graph(1, np.zeros((0, 2), np.int64)).num_edges == 0
    assert es.Graph.grid(1, 5).is_forest


def test_edges_are_int64_and_read_only():
    g = es.Graph(3, np.array([[0, 1], [2, 1]], dtype=np.int32))
    assert g.edges.dtype == np.int64 and g.edges.shape == (2, 2)
    with pytest.raises(ValueError):
        g.edges[0, 0] = 2
    with pytest.raises(AttributeError):
        g.num_nodes = 5


def test_pickle_round_trip():
    for g in (es.Graph.chain(5), es.Graph.grid(3, 4), es.Graph(4, [[3, 0], [1, 2]])):
        h = pickle.loads(pickle.dumps(g))
        assert h == g and h.num_nodes == g.num_nodes and h.is_forest == g.is_forest
        assert hash(h) == hash(g)
    s_n = np.random.default_rng(0).normal(size=(5, 2))
    g = es.Graph.chain(5)
    h = pickle.loads(pickle.dumps(g))
    assert es.infer(g, s_n, np.zeros((2, 2))).log_z == es.infer(h, s_n, np.zeros((2, 2))).log_z


def test_large_grid_builds_fast():
    t0 = time.perf_counter()
    g = es.Graph.grid(1024, 1024)
    elapsed = time.perf_counter() - t0
    assert g.num_edges == 2 * 1024 * 1023
    # Generous bound so a loaded CI machine passes; typical is ~0.1 s.
    assert elapsed < 3.0


def test_extension_stub_names_every_function_of_the_extension():
    import ast
    from pathlib import Path

    from expsoftmax import _core

    stub = Path(es.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    public = {k for k in dir(_core) if not k.startswith("_")}
    assert declared == public
