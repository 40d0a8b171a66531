"""Gibbs sampling on grids: expsoftmax's chromatic sampler against a vectorised numpy
checkerboard sampler on the same model.

Run: python benches/bench_gibbs.py [--shapes H,W,C ...]
     python benches/bench_gibbs.py --whole [--whole-shapes H,W,C ...]   (the lead table)

The lead table (--whole) is the form `infer` is used in: per-edge float32 tables
(B, E, C, C) ~ N(0, 0.5^2) (and weight x table, weights ~ U(0, 1)), whole `infer` calls
(fixed costs included) that accumulate node and pair marginals over `num_samples` sweeps
of one chain (`ais_steps=0`: no log Z, the same work as the numpy sampler), beside a
vectorised numpy checkerboard sampler that accumulates the same marginals; node updates
per second.

The default table: model: node scores ~ N(0, 1), one shared (C, C) table ~ N(0, 0.5^2).
Speed is node updates per second (and sweeps per second), from the time difference of two
run lengths so fixed costs cancel, one chain, best of 3. Accuracy: on a 4 x 8 grid with an
exact reference (column transfer matrices), the wall time until the largest node-marginal
error falls below 0.02, next to loopy BP's error on the same model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import expsoftmax as es

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of, per_unit  # noqa: E402

from oracle import grid_exact  # noqa: E402

SHAPES = [(128, 128, 5), (256, 256, 21), (512, 512, 2)]
WHOLE_SHAPES = [(160, 120, 6), (300, 300, 3), (128, 128, 5)]


def model(h, w, c, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(h * w, c)).astype(np.float32), (rng.normal(size=(c, c)) * 0.5).astype(
        np.float32
    )


def ours(h, w, c, s_n, t):
    g = es.Graph.grid(h, w)

    def run(k):
        es.sample(g, s_n, t, 1, 0, "gibbs", burn_in=k, num_chains=1)

    return run


def _draw(a, y, mask, rng):
    """Draws the labels where `mask` holds from the conditional scores `a (h, w, C)`."""
    p = np.exp(a - a.max(-1, keepdims=True))
    cdf = np.cumsum(p, -1)
    u = rng.random(a.shape[:-1] + (1,)) * cdf[..., -1:]
    y[mask] = (cdf < u).sum(-1)[mask]


def numpy_checkerboard(h, w, c, s_n, t):
    rng = np.random.default_rng(0)
    th = s_n.reshape(h, w, c).astype(np.float64)
    tab = t.astype(np.float64)
    colour = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)

    def run(k):
        y = rng.integers(0, c, (h, w))
        for _ in range(k):
            for col in (False, True):
                a = th.copy()
                a[:, 1:] += tab[y[:, :-1]]  # left neighbour: table[y_left, x]
                a[:, :-1] += tab[:, y[:, 1:]].transpose(1, 2, 0)  # right: table[x, y_right]
                a[1:] += tab[y[:-1]]
                a[:-1] += tab[:, y[1:]].transpose(1, 2, 0)
                _draw(a, y, colour == col, rng)
        return y

    return run


def numpy_marginals(h, w, c, s_n, th, tv, sweeps, seed=0):
    """Checkerboard Gibbs with per-edge tables `th (h, w-1, c, c)`, `tv (h-1, w, c, c)`,
    accumulating node and pair counts as `infer` does."""
    rng = np.random.default_rng(seed)
    node = s_n.reshape(h, w, c).astype(np.float64)
    colour = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
    r_h, c_h = np.meshgrid(np.arange(h), np.arange(w - 1), indexing="ij")
    r_v, c_v = np.meshgrid(np.arange(h - 1), np.arange(w), indexing="ij")
    y = rng.integers(0, c, (h, w))
    counts = np.zeros((h, w, c))
    n_h = h * (w - 1)
    pairs = np.zeros((n_h + (h - 1) * w) * c * c)
    e_h = np.arange(n_h).reshape(h, w - 1) * c * c
    e_v = (n_h + np.arange((h - 1) * w)).reshape(h - 1, w) * c * c
    for _ in range(sweeps):
        for col in (False, True):
            a = node.copy()
            a[:, 1:] += th[r_h, c_h, y[:, :-1]]  # left neighbour: table[y_left, x]
            a[:, :-1] += th[r_h, c_h, :, y[:, 1:]]  # right neighbour: table[x, y_right]
            a[1:] += tv[r_v, c_v, y[:-1]]
            a[:-1] += tv[r_v, c_v, :, y[1:]]
            _draw(a, y, colour == col, rng)
        np.put_along_axis(
            counts, y[..., None], np.take_along_axis(counts, y[..., None], -1) + 1, -1
        )
        idx = np.concatenate(
            [(e_h + y[:, :-1] * c + y[:, 1:]).ravel(), (e_v + y[:-1] * c + y[1:]).ravel()]
        )
        pairs += np.bincount(idx, minlength=pairs.size)
    return counts / sweeps, pairs / sweeps


def whole_calls(shapes, sweeps=100):
    """The lead table (see the module doc)."""
    print(
        f"whole infer calls, marginals accumulated over {sweeps} sweeps of one chain, "
        "float32; node updates per second (M/s)\n"
    )
    print(
        "| (H, W, C) | ours, per-edge | numpy, per-edge | ratio | ours, weight x table "
        "| ours, shared table |"
    )
    print("|---|---|---|---|---|---|")
    for h, w, c in shapes:
        rng = np.random.default_rng(0)
        g = es.Graph.grid(h, w)
        s_n = rng.normal(size=(h * w, c)).astype(np.float32)
        tables = (rng.normal(size=(g.num_edges, c, c)) * 0.5).astype(np.float32)
        weighted = es.WeightedEdges(
            rng.uniform(0, 1, g.num_edges).astype(np.float32),
            (rng.normal(size=(c, c)) * 0.5).astype(np.float32),
        )
        n_h = h * (w - 1)
        th = tables[:n_h].reshape(h, w - 1, c, c).astype(np.float64)
        tv = tables[n_h:].reshape(h - 1, w, c, c).astype(np.float64)

        def ours(s_e, g=g, s_n=s_n):
            opts = dict(num_samples=sweeps, burn_in=0, num_chains=1, ais_steps=0, seed=0)
            return best_of(lambda: es.infer(g, s_n, s_e, method="gibbs", **opts), 3)

        ups = h * w * sweeps / 1e3  # updates per ms -> M/s below
        t_edge, t_w, t_sh = ours(tables), ours(weighted), ours(tables[:1])
        t0 = time.perf_counter()
        numpy_marginals(h, w, c, s_n, th, tv, sweeps)  # one call: it is slow
        t_np = (time.perf_counter() - t0) * 1e3
        print(
            f"| {(h, w, c)} | {ups / t_edge:.1f} | {ups / t_np:.2f} | {t_np / t_edge:.1f}x "
            f"| {ups / t_w:.1f} | {ups / t_sh:.1f} |",
            flush=True,
        )


def time_to_accuracy():
    h, w, c = 4, 8, 3
    rng = np.random.default_rng(1)
    g = es.Graph.grid(h, w)
    s_n, s_e = rng.normal(size=(h * w, c)), rng.normal(0, 0.5, (g.num_edges, c, c))
    _, exact = grid_exact(h, w, s_n, s_e)
    bp = es.infer(g, s_n, s_e, method="bp", tol=1e-10, max_iter=500)
    for n in (100, 200, 400, 800, 1600, 3200, 6400, 12800):
        t0 = time.perf_counter()
        r = es.infer(g, s_n, s_e, method="gibbs", num_samples=n, seed=0, ais_steps=0)
        dt = time.perf_counter() - t0
        err = np.abs(r.node_marginals - exact).max()
        if err < 0.02:
            break
    return dt, n, err, np.abs(bp.node_marginals - exact).max()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=None, help="H,W,C triples")
    ap.add_argument("--whole", action="store_true", help="the lead table only (see above)")
    ap.add_argument("--whole-shapes", nargs="*", default=None, help="H,W,C triples")
    args = ap.parse_args()
    warnings.simplefilter("ignore", es.ConvergenceWarning)
    if args.whole:
        parse = [tuple(int(v) for v in s.split(",")) for s in args.whole_shapes or []]
        whole_calls(parse or WHOLE_SHAPES)
        return
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    print(f"threads: expsoftmax {os.environ.get('RAYON_NUM_THREADS', os.cpu_count())}; one chain")
    cols = ["(H, W, C)", "ours Mupd/s", "numpy Mupd/s", "ratio", "ours sweeps/s", "numpy sweeps/s"]
    print(" ".join(f"{x:>14}" for x in cols))
    for h, w, c in shapes:
        s_n, t = model(h, w, c)
        k = (2, 12) if h * w * c < 2_000_000 else (2, 6)
        so = per_unit(ours(h, w, c, s_n, t), *k)
        sn = per_unit(numpy_checkerboard(h, w, c, s_n, t), *k)
        n = h * w
        vals = [
            str((h, w, c)),
            f"{n / so / 1e6:.1f}",
            f"{n / sn / 1e6:.2f}",
            f"{sn / so:.1f}x",
            f"{1 / so:.1f}",
            f"{1 / sn:.1f}",
        ]
        print(" ".join(f"{x:>14}" for x in vals), flush=True)
    dt, n, err, bp_err = time_to_accuracy()
    print(
        f"4x8 grid, C=3: Gibbs reaches max marginal error {err:.4f} with {n} samples x 4 "
        f"chains in {dt * 1e3:.0f} ms; loopy BP's error on the same model: {bp_err:.4f}"
    )


if __name__ == "__main__":
    main()
