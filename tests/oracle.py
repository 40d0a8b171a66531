"""Reference answers by brute-force enumeration and plain log-domain recursions.

Slow and simple on purpose: these are the oracles the library is checked against.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

import expsoftmax as es


def labellings(n: int, c: int) -> np.ndarray:
    """Every labelling of n nodes with c classes, (c**n, n)."""
    return np.indices((c,) * n).reshape(n, -1).T


def scores_of(graph: es.Graph, s_n: np.ndarray, s_e: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """s(y) for each row of ys (K, I), in float64; s_e (E or 1, C, C)."""
    s_n = np.asarray(s_n, dtype=np.float64)
    s_e = np.broadcast_to(
        np.asarray(s_e, dtype=np.float64), (graph.num_edges,) + s_n.shape[-1:] * 2
    )
    n = graph.num_nodes
    with np.errstate(invalid="ignore"):
        total = s_n[np.arange(n), ys].sum(axis=1)
        if graph.num_edges:
            i, j = graph.edges[:, 0], graph.edges[:, 1]
            total = total + s_e[np.arange(graph.num_edges), ys[:, i], ys[:, j]].sum(axis=1)
    return total


def brute_force(graph: es.Graph, s_n: np.ndarray, s_e: np.ndarray):
    """(log_z, node_marginals (I, C), edge_marginals (E, C, C), best labelling, best score)
    for one item, in float64."""
    n, c = s_n.shape
    ys = labellings(n, c)
    s = scores_of(graph, s_n, s_e, ys)
    m = s.max()
    if m == -np.inf:
        return -np.inf, None, None, None, -np.inf
    p = np.exp(s - m)
    z = p.sum()
    p /= z
    node = np.zeros((n, c))
    for v in range(n):
        np.add.at(node[v], ys[:, v], p)
    edge = np.zeros((graph.num_edges, c, c))
    for e, (i, j) in enumerate(graph.edges):
        np.add.at(edge[e], (ys[:, i], ys[:, j]), p)
    best = int(np.argmax(s))
    return m + np.log(z), node, edge, ys[best], s[best]


def random_forest(rng: np.random.Generator, n: int, p_edge: float = 0.8) -> es.Graph:
    """A random forest: each node after the first joins an earlier one with prob p_edge
    (else starts a new component); edges shuffled and randomly oriented."""
    edges = []
    for v in range(1, n):
        if rng.random() < p_edge:
            u = int(rng.integers(0, v))
            edges.append((u, v) if rng.random() < 0.5 else (v, u))
    rng.shuffle(edges)
    # Relabel nodes so that component roots are not always the smallest ids.
    perm = rng.permutation(n)
    edges = [(int(perm[a]), int(perm[b])) for a, b in edges]
    return es.Graph(n, np.array(edges, dtype=np.int64).reshape(-1, 2))


def chain_log_z(s_n: np.ndarray, s_e: np.ndarray) -> float:
    """log Z of a chain by the textbook log-domain forward recursion, float64.
    s_n (I, C), s_e (I-1 or 1, C, C)."""
    s_n = np.asarray(s_n, dtype=np.float64)
    s_e = np.asarray(s_e, dtype=np.float64)
    alpha = s_n[0].copy()
    for t in range(1, s_n.shape[0]):
        tab = s_e[t - 1] if s_e.shape[0] > 1 else s_e[0]
        x = alpha[:, None] + tab
        m = x.max(axis=0)
        alpha = m + np.log(np.exp(x - m).sum(axis=0)) + s_n[t]
    m = alpha.max()
    return float(m + np.log(np.exp(alpha - m).sum()))


def grid_exact(h: int, w: int, s_n: np.ndarray, s_e: np.ndarray):
    """Exact log Z and node marginals of an h x w grid (Graph.grid edge order) by a
    column-by-column transfer computation: the state is a whole column's labelling
    (C**h states), so it is exact for narrow grids. s_n (h*w, C), s_e (E, C, C)."""
    s_n = np.asarray(s_n, dtype=np.float64)
    s_e = np.asarray(s_e, dtype=np.float64)
    c = s_n.shape[1]
    n_h = h * (w - 1)
    horiz = s_e[:n_h].reshape(h, w - 1, c, c)
    vert = s_e[n_h:].reshape(h - 1, w, c, c)
    cols = labellings(h, c)  # (S, h): label of each row in a column
    rows = np.arange(h)

    def column_score(x):
        s = s_n.reshape(h, w, c)[rows, x, cols].sum(axis=1)
        if h > 1:
            s = s + vert[rows[:-1], x, cols[:, :-1], cols[:, 1:]].sum(axis=1)
        return s

    def transfer(x):  # (S, S): horizontal edges between column x and x + 1
        hx = horiz[:, x]  # (h, C, C)
        return hx[rows[None, None, :], cols[:, None, :], cols[None, :, :]].sum(-1)

    def lse(a, axis):
        m = np.max(a, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        return np.squeeze(m, axis) + np.log(np.exp(a - m).sum(axis=axis))

    alpha = [column_score(0)]
    for x in range(1, w):
        alpha.append(lse(alpha[-1][:, None] + transfer(x - 1), 0) + column_score(x))
    beta = [np.zeros(len(cols))]
    for x in range(w - 2, -1, -1):
        beta.insert(0, lse(transfer(x) + (column_score(x + 1) + beta[0])[None, :], 1))
    log_z = lse(alpha[-1], 0)
    node = np.zeros((h, w, c))
    for x in range(w):
        p = np.exp(alpha[x] + beta[x] - log_z)
        for r in range(h):
            np.add.at(node[r, x], cols[:, r], p)
    return float(log_z), node.reshape(h * w, c)


def outputs_per_thread_count(code: str, counts=("1", "2", "3")) -> set:
    """Runs ``code`` (which prints a digest) in fresh interpreters with each
    ``RAYON_NUM_THREADS``; returns the set of outputs (one element when deterministic)."""
    outs = set()
    for threads in counts:
        env = dict(os.environ, RAYON_NUM_THREADS=threads, PYTHONWARNINGS="ignore")
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.add(run.stdout)
    return outs
