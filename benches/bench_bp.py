"""Loopy BP on grids: expsoftmax against PGMax (JAX) and a vectorised numpy LBP.

Run: python benches/bench_bp.py [--shapes H,W,C ...] [--tools ours numpy pgmax]
     python benches/bench_bp.py --whole [--whole-shapes H,W,C ...]   (the lead table)
     python benches/bench_bp.py --one-off [--whole-shapes H,W,C ...] (a call's fixed work)

The lead table (--whole) is the form a segmentation network trains with: per-edge float32
tables s_e (E, C, C) (N(0, 1), different for every edge), damping 0.5 (PGMax's default),
50 iterations, flooding schedule; our time is the whole `infer` call (potentials,
iterations, beliefs, pair marginals, Bethe energy), PGMax's is its jitted `run` of 50
iterations alone (compiled beforehand; beliefs not computed). Then the training step on the
same per-edge inputs: `loss_and_grad` (the same iterations, then the loss and the gradients
of s_n and s_e), what a loss's forward and backward cost together. Then `infer` with one
shared table, with weight x table edges (a general table), and with weight x Potts table
(2 I: the contrast-sensitive segmentation form, O(C) per edge). "bound / ours" is the
physical bound of our call as a fraction of its time: the larger of (tables read once per
iteration plus messages read and written, at the copy rate of as many threads over a
working set of one sweep's bytes: from the caches where it fits, as ours does) and (one
exponential per table entry plus, with damping other than 0.5, three transcendental
functions per message entry per iteration, at numpy's vectorised exp rate over the
threads; damping 0.5 is a geometric mean, square roots rather than exponentials).

The per-iteration table (default) uses the same model for every tool: node scores
~ N(0, 1), one shared (C, C) table ~ N(0, 1),
sum-product, flooding (parallel) schedule, no damping, float32 inputs. Per-iteration time
is (time of K2 iterations - time of K1 iterations) / (K2 - K1), best of 3, after warm-up
(JIT compilation for PGMax), so fixed costs (setup, beliefs) cancel. Also reports the
time to convergence (tol 1e-4 on message change) for expsoftmax with both schedules, and
the fraction of the machine's GEMM rate reached (an update costs about C^2 multiply-adds
per directed edge).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of, copy_rate, machine_rates, per_unit  # noqa: E402

SHAPES = [(64, 64, 5), (128, 128, 5), (256, 256, 21), (512, 512, 2)]
WHOLE_SHAPES = [(64, 64, 3), (96, 96, 7), (128, 128, 5), (200, 150, 3), (256, 256, 21)]


def model(h, w, c, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(h, w, c)).astype(np.float32),
        rng.normal(size=(c, c)).astype(np.float32),
    )


def per_iter(run, k1, k2, repeats=3):
    """Milliseconds per iteration."""
    return per_unit(run, k1, k2, repeats) * 1e3


def ours(h, w, c, s_n, t):
    g = es.Graph.grid(h, w)
    sn = s_n.reshape(h * w, c)

    def run(k):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", es.ConvergenceWarning)
            es.infer(g, sn, t, method="bp", max_iter=k, tol=0.0, schedule="parallel")

    return run


def numpy_lbp(h, w, c, s_n, t):
    """Flooding LBP in the probability domain, vectorised over the grid with numpy."""
    phi = np.exp(s_n - s_n.max(-1, keepdims=True)).astype(np.float64)
    psi = np.exp(t - t.max()).astype(np.float64)

    def run(k):
        # Incoming messages by where they come from: left, right, up, down.
        m = {d: np.full((h, w, c), 1.0 / c) for d in "lrud"}
        for _ in range(k):
            a = phi * m["u"] * m["d"]
            b = phi * m["l"] * m["r"]
            new = {d: np.full((h, w, c), 1.0 / c) for d in "lrud"}
            new["l"][:, 1:] = (a * m["l"])[:, :-1] @ psi
            new["r"][:, :-1] = (a * m["r"])[:, 1:] @ psi.T
            new["u"][1:] = (b * m["u"])[:-1] @ psi
            new["d"][:-1] = (b * m["d"])[1:] @ psi.T
            for d in "lrud":
                new[d] /= new[d].sum(-1, keepdims=True)
            m = new
        return m

    return run


def pgmax_lbp(h, w, c, s_n, t):
    import jax
    from pgmax import fgraph, fgroup, infer, vgroup

    variables = vgroup.NDVarArray(num_states=c, shape=(h, w))
    fg = fgraph.FactorGraph(variable_groups=variables)
    pairs = [[variables[r, x], variables[r, x + 1]] for r in range(h) for x in range(w - 1)]
    pairs += [[variables[r, x], variables[r + 1, x]] for r in range(h - 1) for x in range(w)]
    fg.add_factors(
        fgroup.PairwiseFactorGroup(
            variables_for_factors=pairs, log_potential_matrix=t.astype(np.float64)
        )
    )
    bp = infer.build_inferer(fg.bp_state, backend="bp")
    arrays = bp.init(evidence_updates={variables: s_n})
    runners = {}

    def run(k):
        if k not in runners:
            runners[k] = jax.jit(lambda a: bp.run(a, num_iters=k, damping=0.0, temperature=1.0))
        out = runners[k](arrays)
        jax.block_until_ready(out)

    return run


def pgmax_run(h, w, c, s_n, tables, damping, iters):
    """PGMax's jitted `run` of `iters` iterations with per-edge log potentials, in ms
    (best of 5, 3 when a call takes seconds; compiled beforehand)."""
    import jax
    from pgmax import fgraph, fgroup, infer, vgroup

    variables = vgroup.NDVarArray(num_states=c, shape=(h, w))
    fg = fgraph.FactorGraph(variable_groups=variables)
    pairs = [[variables[r, x], variables[r, x + 1]] for r in range(h) for x in range(w - 1)]
    pairs += [[variables[r, x], variables[r + 1, x]] for r in range(h - 1) for x in range(w)]
    fg.add_factors(
        fgroup.PairwiseFactorGroup(variables_for_factors=pairs, log_potential_matrix=tables)
    )
    bp = infer.build_inferer(fg.bp_state, backend="bp")
    arrays = bp.init(evidence_updates={variables: s_n})
    run = jax.jit(lambda a: bp.run(a, num_iters=iters, damping=damping, temperature=1.0))
    jax.block_until_ready(run(arrays))  # compiles
    t1 = time.perf_counter()
    jax.block_until_ready(run(arrays))
    # Best of 5, as ours, unless a call takes seconds (then 3).
    repeats = 5 if time.perf_counter() - t1 < 2.0 else 3
    return best_of(lambda: jax.block_until_ready(run(arrays)), repeats)


def _bp_call(g, s_n, s_e, y, iters, damping, schedule):
    """One whole BP call with `iters` iterations and tol 0 (no early stop, the non-convergence
    warning silenced): `loss_and_grad` with gold labels `y`, or `infer` when `y` is None."""
    opts = dict(method="bp", max_iter=iters, tol=0, damping=damping, schedule=schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        if y is None:
            es.infer(g, s_n, s_e, **opts)
        else:
            es.loss_and_grad(g, s_n, s_e, y, **opts)


def _warm_up(shape, seconds=1.0):
    """Calls on `shape` for `seconds` before the first row: the process's first calls
    (thread pool, allocator, CPU clocks) run slower than a training loop's steady state,
    which `best_of`'s per-row warm-up alone does not reach for the first shape."""
    h0, w0, c0 = shape
    g0 = es.Graph.grid(h0, w0)
    s0 = np.zeros((h0 * w0, c0), np.float32)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        es.infer(g0, s0, np.zeros((g0.num_edges, c0, c0), np.float32), method="bp", max_iter=5)


def whole_calls(shapes, tools, threads, iters=50, damping=0.5):
    """The lead table (see the module doc)."""
    big_copy, exp_rate = machine_rates()
    print(
        f"whole calls: BP {iters} iterations, damping {damping}, flooding, float32; "
        f"{threads} threads; best of 5 (PGMax: 3 where a call takes seconds), ms. "
        f"Machine: copy {big_copy / 1e9:.1f} GB/s (64 MiB, one thread), "
        f"np.exp {exp_rate / 1e9:.2f} G/s per thread\n"
    )
    print(
        "| (H, W, C) | ours, per-edge | PGMax run, per-edge | PGMax / ours | bound / ours "
        "| ours, loss + gradients, per-edge "
        "| ours, shared table | ours, weight x table | ours, weight x Potts table "
        "| ours, per-edge, checkerboard |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    _warm_up(shapes[0])
    for h, w, c in shapes:
        rng = np.random.default_rng(0)
        g = es.Graph.grid(h, w)
        s_n = rng.normal(size=(h * w, c)).astype(np.float32)
        tables = rng.normal(size=(g.num_edges, c, c)).astype(np.float32)
        contrast = rng.uniform(0, 1, g.num_edges).astype(np.float32)
        weighted = es.WeightedEdges(contrast, rng.normal(size=(c, c)).astype(np.float32))
        potts = es.WeightedEdges(contrast, (2 * np.eye(c)).astype(np.float32))

        y = rng.integers(0, c, h * w)

        def ours(s_e, schedule="parallel", g=g, s_n=s_n, y=y, loss=False):
            # "parallel" is flooding, PGMax's schedule (the same work); the default
            # "checkerboard" sweeps each colour in turn (two sweeps per iteration).
            return best_of(
                lambda: _bp_call(g, s_n, s_e, y if loss else None, iters, damping, schedule), 5
            )

        t_edge = ours(tables)
        t_loss = ours(tables, loss=True)
        t_shared, t_w, t_potts = ours(tables[:1]), ours(weighted), ours(potts)
        t_colour = ours(tables, "checkerboard")
        t_pg = nan
        if "pgmax" in tools:
            try:
                t_pg = pgmax_run(h, w, c, s_n.reshape(h, w, c), tables, damping, iters)
            except ImportError:
                pass
        n_msg = 2 * g.num_edges * c
        sweep_bytes = 4 * g.num_edges * c * c + 2 * 4 * n_msg
        nbytes = iters * sweep_bytes
        n_exp = g.num_edges * c * c + (3 * iters * n_msg if damping not in (0, 0.5) else 0)
        # A sweep reads the tables and old messages and writes the new ones: at the copy
        # rate of `threads` threads over a working set that size (from the caches where
        # it fits, as the sweeps' does).
        local = copy_rate(sweep_bytes, threads)
        bound = max(nbytes / local, n_exp / (exp_rate * threads)) * 1e3
        print(
            f"| {(h, w, c)} | {t_edge:.1f} | {t_pg:.1f} | {t_pg / t_edge:.1f}x "
            f"| {bound / t_edge:.2f} | {t_loss:.1f} | {t_shared:.1f} | {t_w:.1f} | {t_potts:.1f} "
            f"| {t_colour:.1f} |",
            flush=True,
        )


def one_off(shapes, threads, damping=0.5, repeats=200):
    """The one-off work of a whole call, in iterations: whole calls with 1 and 51
    iterations (per-edge float32 tables, damping 0.5), best of `repeats` (a tenth as many
    for 51), `infer` and `loss_and_grad`, under flooding (`"parallel"`, PGMax's schedule)
    and the default `"checkerboard"` (whose iteration sweeps both colours: about two
    flooding iterations' work). per iteration = (t51 - t1) / 50; one-off = t1 - per
    iteration (potentials, beliefs, pair marginals or gradient rows, Bethe energy, checks
    and outputs: everything but the sweeps)."""
    print(
        f"one-off work of a whole call (per-edge float32 tables, damping {damping}; "
        f"{threads} threads; best of {repeats} 1-iteration and {repeats // 10} 51-iteration "
        "calls)\n"
    )
    print(
        "| (H, W, C) | schedule | call | 1 iteration | per iteration | one-off "
        "| one-off / iteration |"
    )
    print("|---|---|---|---|---|---|---|")
    _warm_up(shapes[0])
    for h, w, c in shapes:
        rng = np.random.default_rng(0)
        g = es.Graph.grid(h, w)
        s_n = rng.normal(size=(h * w, c)).astype(np.float32)
        tables = rng.normal(size=(g.num_edges, c, c)).astype(np.float32)
        y = rng.integers(0, c, h * w)
        for schedule in ("parallel", "checkerboard"):
            for name in ("infer", "loss_and_grad"):
                gold = y if name == "loss_and_grad" else None

                def call(k, g=g, s_n=s_n, tables=tables, gold=gold, schedule=schedule):
                    _bp_call(g, s_n, tables, gold, k, damping, schedule)

                t1 = best_of(lambda: call(1), repeats)
                t51 = best_of(lambda: call(51), repeats // 10)
                it = (t51 - t1) / 50
                print(
                    f"| {(h, w, c)} | {schedule} | `{name}` | {t1:.2f} ms | {it * 1e3:.0f} µs | "
                    f"{(t1 - it):.2f} ms | {(t1 - it) / it:.1f} |",
                    flush=True,
                )


def weighted_training_step(h, w, c, iters=(1, 11)):
    """Segmentation-style BP loss + gradients: N(0,1) node scores, U(0,1) contrast weights
    per edge times one 2·I table (never materialised per edge), the default schedule.
    Returns seconds per `loss_and_grad` for each iteration count (best of 2 after warm-up:
    a training loop's steady state)."""
    rng = np.random.default_rng(0)
    g = es.Graph.grid(h, w)
    s_n = rng.normal(size=(h * w, c)).astype(np.float32)
    edges = es.WeightedEdges(
        rng.uniform(0, 1, g.num_edges).astype(np.float32), (2 * np.eye(c)).astype(np.float32)
    )
    y = rng.integers(0, c, h * w)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        for k in iters:
            run = lambda k=k: es.loss_and_grad(g, s_n, edges, y, method="bp", max_iter=k, tol=0)  # noqa: E731
            out.append(best_of(run, 2) / 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=None, help="H,W,C triples")
    ap.add_argument("--tools", nargs="*", default=["ours", "numpy", "pgmax"])
    ap.add_argument(
        "--gflops", type=float, default=140.0, help="machine GEMM rate for the %% column"
    )
    ap.add_argument(
        "--weighted",
        default=None,
        help="H,W,C: time one weighted-edge BP loss_and_grad (1 and 11 iterations) only",
    )
    ap.add_argument("--whole", action="store_true", help="the lead table only (see above)")
    ap.add_argument("--whole-shapes", nargs="*", default=None, help="H,W,C triples")
    ap.add_argument(
        "--one-off",
        action="store_true",
        help="the one-off work of whole calls, in iterations (--whole-shapes apply)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    es.set_num_threads(args.threads)
    if args.one_off:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.whole_shapes or []]
        one_off(shapes or WHOLE_SHAPES[:4], args.threads)
        return
    if args.whole:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.whole_shapes or []]
        whole_calls(shapes or WHOLE_SHAPES, args.tools, args.threads)
        return
    if args.weighted:
        h, w, c = (int(v) for v in args.weighted.split(","))
        t1, t11 = weighted_training_step(h, w, c)
        print(
            f"weighted BP loss_and_grad {(h, w, c)}: 1 iteration {t1:.2f} s, 11 iterations "
            f"{t11:.2f} s ({(t11 - t1) / 10 * 1e3:.0f} ms per iteration)"
        )
        return
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    print(
        f"threads: expsoftmax {os.environ.get('RAYON_NUM_THREADS', os.cpu_count())}; "
        "per-iteration ms (best of 3); flooding; shared table"
    )
    cols = [
        "(H, W, C)",
        "ours",
        "numpy",
        "pgmax",
        "pgmax/ours",
        "numpy/ours",
        "%GEMM",
        "conv par",
        "conv chk",
    ]
    print(" ".join(f"{x:>12}" for x in cols))
    nan = float("nan")
    for h, w, c in shapes:
        s_n, t = model(h, w, c)
        k1, k2 = (2, 202) if c < 16 else (2, 42)
        r = {}
        for tool, make in (("ours", ours), ("numpy", numpy_lbp), ("pgmax", pgmax_lbp)):
            if tool in args.tools:
                try:
                    r[tool] = per_iter(make(h, w, c, s_n, t), k1, k2)
                except ImportError:
                    r[tool] = nan
        flops = 2 * (2 * (h * (w - 1) + (h - 1) * w)) * c * c  # multiply-adds x 2
        gemm = flops / (r.get("ours", nan) * 1e-3) / 1e9 / args.gflops * 100
        conv = []
        g = es.Graph.grid(h, w)
        for sch in ("parallel", "checkerboard"):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", es.ConvergenceWarning)
                res = es.infer(
                    g, s_n.reshape(-1, c), t, method="bp", tol=1e-4, max_iter=200, schedule=sch
                )
            conv.append(
                f"{(time.perf_counter() - t0) * 1e3:.0f}ms/{int(res.iterations)}"
                + ("" if res.converged else "!")
            )
        vals = [
            str((h, w, c)),
            f"{r.get('ours', nan):.2f}",
            f"{r.get('numpy', nan):.2f}",
            f"{r.get('pgmax', nan):.2f}",
            f"{r.get('pgmax', nan) / r.get('ours', nan):.1f}x",
            f"{r.get('numpy', nan) / r.get('ours', nan):.1f}x",
            f"{gemm:.1f}%",
            *conv,
        ]
        print(" ".join(f"{x:>12}" for x in vals), flush=True)


if __name__ == "__main__":
    main()
