"""Exact inference on loopy graphs: expsoftmax's junction tree beside pgmpy's on the same
model (per-edge tables, node scores, float64). pgmpy two ways: `BeliefPropagation` (its
junction tree) calibrated, then each node's marginal queried, and `VariableElimination`
(min-fill order) queried node by node; expsoftmax: one `infer` call (log Z, every node
and pair marginal). Anchors that fail or pass the time limit are recorded as
such. Also times the 10 x 100 strip with C = 3 (expsoftmax only).

Run: python benches/bench_junction.py [--timeout 120] [--repeats 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import expsoftmax as es

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of  # noqa: E402

SHAPES = [(6, 6, 2), (7, 7, 2), (8, 8, 2), (5, 5, 3)]


def _anchor(how, g, s_n, s_e, mem_gb, out):
    """Runs in a child process with its address space capped, so an anchor that asks for
    more memory fails there instead of taking the machine down."""
    resource.setrlimit(resource.RLIMIT_AS, (mem_gb << 30, mem_gb << 30))
    try:
        t = time.perf_counter()
        pm = pgmpy_marginals(g, s_n, s_e, how)
        out.put(("ok", (time.perf_counter() - t) * 1e3, pm))
    except BaseException as e:  # recorded, not raised: the anchor failing is a result
        out.put(("failed", f"{type(e).__name__}: {str(e)[:50]}", None))


def run_anchor(how, g, s_n, s_e, timeout: int, mem_gb: int):
    """("ok", ms, marginals), ("failed", why, None) or ("timeout", None, None)."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_anchor, args=(how, g, s_n, s_e, mem_gb, out))
    p.start()
    try:
        return out.get(timeout=timeout)
    except queue.Empty:
        return ("timeout", None, None)
    finally:
        p.kill()
        p.join()


def pgmpy_marginals(g: es.Graph, s_n: np.ndarray, s_e: np.ndarray, how: str) -> np.ndarray:
    from pgmpy.factors.discrete import DiscreteFactor
    from pgmpy.inference import BeliefPropagation, VariableElimination
    from pgmpy.models import DiscreteMarkovNetwork

    c = s_n.shape[1]
    names = [f"x{i}" for i in range(g.num_nodes)]
    m = DiscreteMarkovNetwork()
    m.add_nodes_from(names)
    m.add_edges_from([(names[a], names[b]) for a, b in g.edges])
    fs = [DiscreteFactor([names[v]], [c], np.exp(s_n[v])) for v in range(g.num_nodes)]
    fs += [
        DiscreteFactor([names[a], names[b]], [c, c], np.exp(s_e[k]))
        for k, (a, b) in enumerate(g.edges)
    ]
    m.add_factors(*fs)
    # One query per node: asking for several at once (joint=False) builds their joint
    # table first in pgmpy 1.1, which cannot fit for a whole grid.
    if how == "bp":
        inf = BeliefPropagation(m)
        inf.calibrate()
        kw = {}
    else:
        inf = VariableElimination(m)
        kw = {"elimination_order": "MinFill"}
    p = np.stack([inf.query([n], show_progress=False, **kw).values for n in names])
    return p / p.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=int, default=120, help="seconds per pgmpy run")
    ap.add_argument("--mem-gb", type=int, default=8, help="address-space cap per pgmpy run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    print(f"threads: {es.get_num_threads()}")
    print(
        "| grid, C | width | expsoftmax infer (ms) | pgmpy BP (ms) | pgmpy VE, min-fill (ms) "
        "| faster pgmpy / ours | max |Δ marginal| |"
    )
    print("|---|---|---|---|---|---|---|")
    for h, w, c in SHAPES:
        g = es.Graph.grid(h, w)
        s_n, s_e = rng.normal(size=(g.num_nodes, c)), rng.normal(size=(g.num_edges, c, c))

        def call(g=g, s_n=s_n, s_e=s_e):
            return es.infer(g, s_n, s_e, method="exact")

        ours = best_of(call, args.repeats)
        ref = call().node_marginals
        cells, best, diff = [], np.inf, 0.0
        for how in ("bp", "ve"):
            status, what, pm = run_anchor(how, g, s_n, s_e, args.timeout, args.mem_gb)
            if status == "ok":
                cells.append(f"{what:.0f}")
                best = min(best, what)
                diff = max(diff, float(np.abs(pm - ref).max()))
            elif status == "timeout":
                cells.append(f"> {args.timeout} s (timed out)")
            else:
                cells.append(f"failed ({args.mem_gb} GB cap): {what}")
        ratio = f"{best / ours:.0f}x" if np.isfinite(best) else "—"
        width = g.junction_tree(c).width
        print(
            f"| {h}×{w}, {c} | {width} | {ours:.2f} | {cells[0]} | {cells[1]} | {ratio} "
            f"| {diff:.1e} |",
            flush=True,
        )
    g = es.Graph.grid(10, 100)
    s_n, s_e = rng.normal(size=(g.num_nodes, 3)), rng.normal(size=(g.num_edges, 3, 3))
    t_inf = best_of(lambda: es.infer(g, s_n, s_e, method="exact"), 1)  # noqa: B023
    t_dec = best_of(lambda: es.decode(g, s_n, s_e, method="exact"), 1)  # noqa: B023
    jt = g.junction_tree(3)
    print(
        f"\n10×100 strip, C = 3 (width {jt.width}, {len(jt.cliques)} cliques of up to "
        f"{jt.max_states} entries): infer {t_inf:.0f} ms, decode {t_dec:.0f} ms"
    )


if __name__ == "__main__":
    main()
