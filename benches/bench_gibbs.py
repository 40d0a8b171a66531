"""Gibbs sampling on grids: expsoftmax's chromatic sampler against a vectorised numpy
checkerboard sampler on the same model.

Run: python benches/bench_gibbs.py [--shapes H,W,C ...]

Model: node scores ~ N(0, 1), one shared (C, C) table ~ N(0, 0.5^2). Speed is node updates
per second (and sweeps per second), from the time difference of two run lengths so fixed
costs cancel, one chain, best of 3. Accuracy: on a 4 x 8 grid with an exact reference
(column transfer matrices), the wall time until the largest node-marginal error falls
below 0.02, next to loopy BP's error on the same model.
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
from _timing import per_unit  # noqa: E402

from oracle import grid_exact  # noqa: E402

SHAPES = [(128, 128, 5), (256, 256, 21), (512, 512, 2)]


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
                p = np.exp(a - a.max(-1, keepdims=True))
                cdf = np.cumsum(p, -1)
                u = rng.random((h, w, 1)) * cdf[..., -1:]
                new = (cdf < u).sum(-1)
                mask = colour == col
                y[mask] = new[mask]
        return y

    return run


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
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    warnings.simplefilter("ignore", es.ConvergenceWarning)
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
