"""How accurate are the approximate methods? Exact answers on graphs thin enough for the
junction tree are the reference: for loopy BP, TRW, mean field and Gibbs (with its
standard error) on narrow grids, the log Z error (method - exact), the max and mean
node-marginal error, whether TRW >= log Z >= mean field held, and the time per call.

Models: "random" (node and edge scores N(0, s)) and "potts" (node scores N(0, 1), edge
score s on equal labels, attractive), at coupling scales s = 0.5, 1, 2. Every method runs
with its defaults (BP/TRW/MF: max_iter 100, tol 1e-6, checkerboard; Gibbs: 4 chains x 1000
kept sweeps after 100, AIS 16 runs x 100 steps), a fixed seed, float64, 2 threads.

Run: python benches/accuracy.py [--graphs H,W,C ...] [--markdown]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import expsoftmax as es

GRAPHS = [(8, 64, 2), (12, 40, 2), (8, 64, 3), (6, 64, 4), (5, 64, 5)]
SCALES = (0.5, 1.0, 2.0)
METHODS = ("bp", "trw", "mean_field", "gibbs")


def model(kind: str, g: es.Graph, c: int, s: float, rng: np.random.Generator):
    if kind == "random":
        return rng.normal(0, s, (g.num_nodes, c)), rng.normal(0, s, (g.num_edges, c, c))
    return rng.normal(0, 1, (g.num_nodes, c)), np.broadcast_to(s * np.eye(c), (1, c, c))


def timed(f):
    t = time.perf_counter()
    r = f()
    return r, (time.perf_counter() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graphs", nargs="*", help="H,W,C triples (default: the study's)")
    ap.add_argument("--markdown", action="store_true", help="print a README table")
    args = ap.parse_args()
    graphs = [tuple(map(int, a.split(","))) for a in args.graphs] if args.graphs else GRAPHS
    warnings.simplefilter("ignore", es.ConvergenceWarning)
    head = (
        "| grid, C | model, s | exact log Z (ms) | "
        + " | ".join(f"{m}: Δlog Z / max / mean err (ms)" for m in METHODS)
        + " | TRW ≥ log Z ≥ MF |"
    )
    print(head)
    print("|" + "---|" * (4 + len(METHODS)))
    for h, w, c in graphs:
        g = es.Graph.grid(h, w)
        for kind in ("random", "potts"):
            for s in SCALES:
                rng = np.random.default_rng(hash((h, w, c, kind, s)) % 2**32)
                s_n, s_e = model(kind, g, c, s, rng)
                ref, t_ref = timed(lambda g=g, a=s_n, b=s_e: es.infer(g, a, b, method="exact"))
                cells, lz = [], {}
                for m in METHODS:
                    opts = {"seed": 0} if m == "gibbs" else {}
                    r, t = timed(
                        lambda g=g, a=s_n, b=s_e, m=m, o=opts: es.infer(g, a, b, method=m, **o)
                    )
                    err = np.abs(r.node_marginals - ref.node_marginals)
                    dz = float(r.log_z - ref.log_z)
                    lz[m] = float(r.log_z)
                    dzs = f"{dz:+.3g}"
                    if m == "gibbs":
                        dzs += f" ± {float(r.log_z_stderr):.2g}"
                    cells.append(f"{dzs} / {err.max():.3f} / {err.mean():.4f} ({t:.0f})")
                held = lz["trw"] >= float(ref.log_z) - 1e-9 >= lz["mean_field"] - 2e-9
                print(
                    f"| {h}×{w}, {c} | {kind}, {s:g} | {float(ref.log_z):.2f} ({t_ref:.0f}) | "
                    + " | ".join(cells)
                    + f" | {'yes' if held else 'NO'} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
