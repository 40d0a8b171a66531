"""Bad input gets a clear exception that names the problem; nothing crashes."""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es

G = es.Graph.chain(4)
SN = np.zeros((4, 3))
SE = np.zeros((3, 3, 3))


@pytest.mark.parametrize(
    "s_n, s_e, match",
    [
        (np.zeros((5, 3)), SE, "nodes"),
        (np.zeros((4, 3)), np.zeros((3, 2, 2)), r"\(C, C\)"),
        (np.zeros((4, 3)), np.zeros((2, 3, 3)), "edge tables"),
        (np.zeros(4), SE, r"\(\.\.\., I, C\)"),
        (np.zeros((4, 0)), np.zeros((3, 0, 0)), "C = 0"),
        (np.zeros((2, 4, 3)), np.zeros((3, 3, 3, 3)), "broadcast"),
    ],
)
def test_shape_errors(s_n, s_e, match):
    with pytest.raises(es.ShapeError, match=match):
        es.infer(G, s_n, s_e)
    assert issubclass(es.ShapeError, ValueError)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 3), np.int64),
        np.zeros((4, 3), np.float16),
        np.zeros((4, 3), bool),
        np.zeros((4, 3), complex),
    ],
)
def test_wrong_dtype(bad):
    with pytest.raises(TypeError, match="float32 or float64"):
        es.infer(G, bad, SE)
    with pytest.raises(ValueError, match="s_e must be float32 or float64"):
        es.infer(G, SN, bad[:3, :3].reshape(1, 3, 3).astype(bad.dtype))


@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (np.inf, r"\+inf")])
def test_nan_and_plus_inf_scores(value, what):
    s_n = SN.copy()
    s_n[2, 1] = value
    with pytest.raises(ValueError, match=f"s_n contains {what}"):
        es.infer(G, s_n, SE)
    s_e = SE.copy()
    s_e[1, 0, 2] = value
    with pytest.raises(ValueError, match=f"s_e contains {what}"):
        es.loss_and_grad(G, SN, s_e, [0, 0, 0, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (np.inf, r"\+inf")])
@pytest.mark.parametrize("form", ["per_item", "broadcast", "lengths", "padding"])
@pytest.mark.parametrize("method", ["exact", "bp", "gibbs"])
def test_bad_edge_scores_are_named_by_every_kernel(dtype, value, what, form, method):
    """The per-edge chain kernel checks the tables it reads in the pass that takes their
    range (the separate scan of s_e is skipped for it): a NaN or +inf anywhere in s_e, in
    the eight-lane part of a table or its tail, in a table the kernel reads or in padding
    past an item's length that it does not, is reported with its flat index exactly as
    the scan reports it, by infer and loss_and_grad, for every method."""
    b, n, c = 3, 9, 5  # 25 entries a table: three eight-lane blocks and a tail
    g = es.Graph.chain(n)
    rng = np.random.default_rng(1)
    s_n = rng.normal(size=(b, n, c)).astype(dtype)
    s_e = rng.normal(size=(b if form != "broadcast" else 1, n - 1, c, c)).astype(dtype)
    y = rng.integers(0, c, (b, n))
    lengths = None
    if form in ("lengths", "padding"):
        lengths = np.array([n, 4, 6])
        y[1, 4:] = 0
        y[2, 6:] = 0
    # (item, edge, a, b): in a table that is read (tail entry 24, lane entry 10), or, with
    # lengths, in the padding of item 1 (its edges 3..7 are past its last edge).
    where = {
        "per_item": [(2, 5, 4, 4), (0, 0, 2, 0)],
        "broadcast": [(0, 7, 4, 4), (0, 3, 2, 0)],
        "lengths": [(2, 4, 4, 4), (0, 7, 2, 0)],
        "padding": [(1, 3, 4, 4), (1, 7, 2, 0)],
    }[form]
    opts = {"num_samples": 2, "burn_in": 1} if method == "gibbs" else {}
    for at in where:
        bad = s_e.copy()
        bad[at] = value
        flat = np.ravel_multi_index(at, bad.shape)
        # (Before any method's own checks: lengths are exact inference's alone.)
        match = f"s_e contains {what} at flat index {flat};"
        with pytest.raises(ValueError, match=match):
            es.infer(g, s_n, bad, lengths=lengths, method=method, **opts)
        with pytest.raises(ValueError, match=match):
            es.loss_and_grad(g, s_n, bad, y, lengths=lengths, method=method, **opts)
    # The same data without the bad entry runs (the check finds nothing else).
    es.loss_and_grad(g, s_n, s_e, y, lengths=lengths, method="exact")


def test_labels():
    with pytest.raises(ValueError, match=r"y\[0, 2\] = 3 is outside \[0, 3\)"):
        es.loss_and_grad(G, SN, SE, [0, 1, 3, 0])
    with pytest.raises(ValueError, match="outside"):
        es.loss_and_grad(G, SN, SE, [0, -1, 0, 0])
    with pytest.raises(TypeError, match="integers"):
        es.loss_and_grad(G, SN, SE, [0.0, 1.0, 2.0, 0.0])
    with pytest.raises(TypeError, match="integers"):
        es.loss_and_grad(G, SN, SE, np.array([True, False, True, False]))
    with pytest.raises(es.ShapeError, match="y must have shape"):
        es.loss_and_grad(G, SN, SE, [0, 1, 2])
    with pytest.raises(es.ShapeError):
        es.loss_and_grad(G, np.zeros((2, 4, 3)), SE, np.zeros((3, 4), np.int64))


def test_bad_graphs():
    with pytest.raises(ValueError, match="outside"):
        es.Graph(3, [[0, 3]])
    with pytest.raises(ValueError, match="outside"):
        es.Graph(3, [[-1, 0]])
    with pytest.raises(ValueError, match="self-loop"):
        es.Graph(3, [[1, 1]])
    with pytest.raises(ValueError, match="at least one node"):
        es.Graph(0, [])
    with pytest.raises(es.ShapeError, match=r"\(E, 2\)"):
        es.Graph(3, [[0, 1, 2]])
    with pytest.raises(TypeError, match="integer"):
        es.Graph(3, [[0.0, 1.0]])
    with pytest.raises(TypeError, match="integer"):
        es.Graph(2.5, [[0, 1]])
    with pytest.raises(ValueError, match="cycle"):
        es.Graph.tree([1, 0])
    with pytest.raises(ValueError, match="parents"):
        es.Graph.tree([-1, 7])


def test_exact_beyond_the_junction_tree_budget_names_the_way_out():
    g = es.Graph.grid(30, 30)  # treewidth 30: 2**31 entries per clique table at C = 2
    s_n, s_e = np.zeros((900, 2)), np.zeros((2, 2))
    with pytest.raises(ValueError, match="has cycles") as info:
        es.infer(g, s_n, s_e, method="exact")
    msg = str(info.value)
    assert "31 nodes" in msg and "2147483648 entries" in msg and "max_states" in msg
    assert "bp" in msg and "gibbs" in msg
    assert isinstance(info.value, es.NotForestError)


def test_unknown_method_and_option():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        es.infer(G, SN, SE, method="nope")
    with pytest.raises(TypeError, match="unknown option"):
        es.infer(G, SN, SE, method="exact", max_iter=3)
    with pytest.raises(ValueError, match="unknown option"):
        es.decode(G, SN, SE, tol=1e-3)
    with pytest.raises(ValueError, match="num_samples"):
        es.sample(G, SN, SE, -1, seed=0)
    with pytest.raises(TypeError, match="Graph"):
        es.infer("not a graph", SN, SE)
