"""Chain CRF loss + backward: expsoftmax against pytorch-crf and torch-struct.

Run: python benches/bench_chain.py [--repeats N] [--shapes B,T,C ...]

Same inputs for every tool, float32, CPU, all tools on the same thread count. Compares
  * pytorch-crf (one shared (C, C) transition matrix) with expsoftmax given s_e (1, C, C);
  * torch-struct (per-position (C, C) potentials) with expsoftmax given s_e (B, T-1, C, C).
Prints median wall times (ms), ratios (anchor time / our time) per model and against the
faster anchor, and each tool's float32 error in the node marginals (the emission
gradient) against expsoftmax in float64.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import expsoftmax as es
from expsoftmax.torch import exp_softmax_loss

try:
    from torchcrf import CRF
except ImportError:  # pragma: no cover
    CRF = None
try:
    from torch_struct import LinearChainCRF
except ImportError:  # pragma: no cover
    LinearChainCRF = None

SHAPES = [(32, 128, 16), (64, 64, 9), (8, 512, 32), (128, 32, 50), (1, 4096, 8)]


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_shape(b: int, t: int, c: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    em = torch.randn(b, t, c, generator=gen)
    trans = torch.randn(c, c, generator=gen) * 0.5
    tags = torch.randint(0, c, (b, t), generator=gen)
    g = es.Graph.chain(t)
    out = {}

    # Reference marginals (emission gradient of the summed loss) in float64.
    em64 = em.double().requires_grad_()
    exp_softmax_loss(em64, trans.double()[None], tags, g, reduction="sum").backward()
    ref = em64.grad.numpy()

    def err(grad):
        return float(np.abs(grad.double().numpy() - ref).max())

    # expsoftmax, shared transitions.
    x = em.clone().requires_grad_()
    tr = trans[None].clone().requires_grad_()

    def ours_shared():
        x.grad = tr.grad = None
        exp_softmax_loss(x, tr, tags, g, reduction="sum").backward()

    out["ours_shared"] = timeit(ours_shared, repeats)
    out["err_ours"] = err(x.grad)

    # expsoftmax, per-edge tables (the same transitions repeated, as torch-struct gets).
    per_edge = trans.expand(b, t - 1, c, c).contiguous().requires_grad_()

    def ours_edge():
        x.grad = per_edge.grad = None
        exp_softmax_loss(x, per_edge, tags, g, reduction="sum").backward()

    out["ours_edge"] = timeit(ours_edge, repeats)

    if CRF is not None:
        crf = CRF(c, batch_first=True)
        with torch.no_grad():
            crf.transitions.copy_(trans)
            crf.start_transitions.zero_()
            crf.end_transitions.zero_()
        xc = em.clone().requires_grad_()

        def crf_step():
            xc.grad = None
            crf.zero_grad()
            (-crf(xc, tags, reduction="sum")).backward()

        out["pytorch_crf"] = timeit(crf_step, max(1, repeats // 2) if t * b > 4000 else repeats)
        out["err_crf"] = err(xc.grad)

    if LinearChainCRF is not None:
        xs = em.clone().requires_grad_()
        ts = trans.clone().requires_grad_()

        def struct_step():
            xs.grad = ts.grad = None
            # log_potentials[b, n, z_{n+1}, z_n] = trans[z_n, z_{n+1}] + em[n+1, z_{n+1}]
            # (+ em[0, z_0] on the first edge).
            lp = ts.t()[None, None] + xs[:, 1:, :, None]
            lp = torch.cat([lp[:, :1] + xs[:, :1, None, :], lp[:, 1:]], dim=1)
            dist = LinearChainCRF(lp)
            parts = LinearChainCRF.struct.to_parts(tags, c).type_as(lp)
            (-dist.log_prob(parts).sum()).backward()

        out["torch_struct"] = timeit(struct_step, repeats)
        out["err_struct"] = err(xs.grad)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--shapes", nargs="*", default=None, help="B,T,C triples")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    nan = float("nan")
    print(
        f"threads: torch {torch.get_num_threads()}, expsoftmax "
        f"{os.environ.get('RAYON_NUM_THREADS', os.cpu_count())}; float32; loss + backward; "
        f"median of {args.repeats} runs, ms"
    )
    cols = [
        ("(B, T, C)", 15),
        ("ours 1CC", 9),
        ("ours ECC", 9),
        ("crf", 8),
        ("struct", 8),
        ("crf/ours1", 9),
        ("struct/oursE", 12),
        ("best/ours", 9),
        ("err ours", 8),
        ("err crf", 8),
        ("err struct", 10),
    ]
    print(" ".join(f"{name:>{w}}" for name, w in cols))
    for b, t, c in shapes:
        r = run_shape(b, t, c, args.repeats)
        best_anchor = min(r.get("pytorch_crf", nan), r.get("torch_struct", nan))
        ours = min(r["ours_shared"], r["ours_edge"])
        vals = [
            str((b, t, c)),
            f"{r['ours_shared']:.2f}",
            f"{r['ours_edge']:.2f}",
            f"{r.get('pytorch_crf', nan):.1f}",
            f"{r.get('torch_struct', nan):.1f}",
            f"{r.get('pytorch_crf', nan) / r['ours_shared']:.1f}x",
            f"{r.get('torch_struct', nan) / r['ours_edge']:.1f}x",
            f"{best_anchor / ours:.1f}x",
            f"{r['err_ours']:.1e}",
            f"{r.get('err_crf', nan):.1e}",
            f"{r.get('err_struct', nan):.1e}",
        ]
        print(" ".join(f"{v:>{w}}" for v, (_, w) in zip(vals, cols)))


if __name__ == "__main__":
    main()
