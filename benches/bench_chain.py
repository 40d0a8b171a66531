"""Chain CRF loss + backward: expsoftmax against pytorch-crf and torch-struct.

Run: python benches/bench_chain.py [--repeats N] [--shapes B,T,C ...]

Same inputs for every tool, float32, CPU, all tools on the same thread count, whole calls
(loss + backward through the torch loss, fixed costs included). The lead columns are the
form a network writes: per-edge tables s_e (B, T-1, C, C), different for every item and
edge, for expsoftmax and torch-struct (whose potentials are per position); pytorch-crf
can only take one shared (C, C) matrix, so it is timed with that (its easiest case) and
expsoftmax's per-edge time is compared with the faster of the two anchors. Then
expsoftmax with the shared table (1, C, C) beside pytorch-crf. Also: ns per
(item, edge, a, b) of the per-edge call, the physical bound for that call (reading s_e and
writing its gradient at this machine's copy rate, one exponential per table entry at
numpy's vectorised exp rate over the threads; the larger of the two) as a fraction of our
time, and each tool's float32 error in the node marginals against expsoftmax in float64.

A second table isolates the torch layer: the numpy call it wraps (`es.loss_and_grad`, same
per-edge inputs), what the torch loss + backward adds to it, and torch's own floor for that
— a custom `autograd.Function` that does nothing but hand the same numpy call's arrays to
autograd (forward returns the loss sum, backward returns the gradients), timed the same way.
The three are interleaved, call by call, and their medians taken, so drifts in the
machine's speed touch them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import expsoftmax as es
from expsoftmax.torch import exp_softmax_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine_rates  # noqa: E402

try:
    from torchcrf import CRF
except ImportError:  # pragma: no cover
    CRF = None
try:
    from torch_struct import LinearChainCRF
except ImportError:  # pragma: no cover
    LinearChainCRF = None

SHAPES = [
    (48, 96, 24),
    (256, 20, 7),
    (16, 200, 12),
    (32, 128, 16),
    (64, 64, 9),
    (128, 32, 50),
    (64, 32, 100),
]


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


class _Handoff(torch.autograd.Function):
    """The least any autograd wrapper of the numpy call can do: the loss and gradients
    are already computed; forward returns the loss's sum, backward the gradients as
    tensors on the numpy arrays (made there, so autograd takes them without a copy)."""

    @staticmethod
    def forward(ctx, s_n, s_e, loss, grad_n, grad_e):  # type: ignore[override]
        ctx.grads = (grad_n, grad_e)
        return torch.from_numpy(loss).sum()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        grad_n, grad_e = ctx.grads
        ctx.grads = None
        return torch.from_numpy(grad_n), torch.from_numpy(grad_e), None, None, None


def torch_layer(b: int, t: int, c: int, repeats: int) -> dict:
    """Medians (ms) of the numpy call, the torch loss + backward on the same per-edge
    inputs, and the hand-off floor (numpy call + `_Handoff`), interleaved call by call."""
    gen = torch.Generator().manual_seed(1)
    em = torch.randn(b, t, c, generator=gen)
    tables = torch.randn(b, t - 1, c, c, generator=gen) * 0.5
    tags = torch.randint(0, c, (b, t), generator=gen)
    g = es.Graph.chain(t)
    sn, se, y = em.numpy(), tables.numpy(), tags.numpy()
    x = em.clone().requires_grad_()
    w = tables.clone().requires_grad_()

    def numpy_call():
        es.loss_and_grad(g, sn, se, y)

    def ours():
        x.grad = w.grad = None
        exp_softmax_loss(x, w, tags, g, reduction="sum").backward()

    def floor():
        x.grad = w.grad = None
        _Handoff.apply(x, w, *es.loss_and_grad(g, sn, se, y)).backward()

    fns = {"numpy": numpy_call, "ours": ours, "floor": floor}
    times: dict = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def run_shape(b: int, t: int, c: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    em = torch.randn(b, t, c, generator=gen)
    trans = torch.randn(c, c, generator=gen) * 0.5
    # Per-edge tables as a network writes them: different for every item and edge.
    tables = torch.randn(b, t - 1, c, c, generator=gen) * 0.5
    tags = torch.randint(0, c, (b, t), generator=gen)
    g = es.Graph.chain(t)
    out = {}

    # Reference marginals (emission gradient of the summed loss) in float64.
    def reference(s_e):
        em64 = em.double().requires_grad_()
        exp_softmax_loss(em64, s_e.double(), tags, g, reduction="sum").backward()
        return em64.grad.numpy()

    ref, ref_edge = reference(trans[None]), reference(tables)

    def err(grad, ref=ref):
        return float(np.abs(grad.double().numpy() - ref).max())

    # expsoftmax, shared transitions.
    x = em.clone().requires_grad_()
    tr = trans[None].clone().requires_grad_()

    def ours_shared():
        x.grad = tr.grad = None
        exp_softmax_loss(x, tr, tags, g, reduction="sum").backward()

    out["ours_shared"] = timeit(ours_shared, repeats)
    out["err_ours"] = err(x.grad)

    # expsoftmax, per-edge tables.
    per_edge = tables.clone().requires_grad_()

    def ours_edge():
        x.grad = per_edge.grad = None
        exp_softmax_loss(x, per_edge, tags, g, reduction="sum").backward()

    out["ours_edge"] = timeit(ours_edge, repeats)
    out["err_ours_edge"] = err(x.grad, ref_edge)

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
        ts = tables.clone().requires_grad_()

        def struct_step():
            xs.grad = ts.grad = None
            # log_potentials[b, n, z_{n+1}, z_n] = s_e[b, n, z_n, z_{n+1}] + em[n+1, z_{n+1}]
            # (+ em[0, z_0] on the first edge).
            lp = ts.transpose(-1, -2) + xs[:, 1:, :, None]
            lp = torch.cat([lp[:, :1] + xs[:, :1, None, :], lp[:, 1:]], dim=1)
            dist = LinearChainCRF(lp)
            parts = LinearChainCRF.struct.to_parts(tags, c).type_as(lp)
            (-dist.log_prob(parts).sum()).backward()

        out["torch_struct"] = timeit(struct_step, max(1, repeats // 2))
        out["err_struct"] = err(xs.grad, ref_edge)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--shapes", nargs="*", default=None, help="B,T,C triples")
    ap.add_argument(
        "--layer-repeats", type=int, default=100, help="interleaved rounds of the torch-layer table"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    es.set_num_threads(args.threads)
    copy_rate, exp_rate = machine_rates()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    nan = float("nan")
    print(
        f"threads: {args.threads} (torch and expsoftmax); float32; loss + backward, whole "
        f"calls; median of {args.repeats} runs, ms. Machine: copy {copy_rate / 1e9:.1f} GB/s, "
        f"np.exp {exp_rate / 1e9:.2f} G/s per thread\n"
    )
    print(
        "| (B, T, C) | ours, per-edge | ns per (item, edge, a, b) | bound / ours "
        "| torch-struct, per-edge | pytorch-crf, shared | faster anchor / ours "
        "| ours, shared | pytorch-crf / ours shared | err ours / struct / crf |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for b, t, c in shapes:
        r = run_shape(b, t, c, args.repeats)
        entries = b * (t - 1) * c * c
        bound = max(2 * 4 * entries / copy_rate, entries / (exp_rate * args.threads)) * 1e3
        anchor = min(r.get("pytorch_crf", nan), r.get("torch_struct", nan))
        vals = [
            str((b, t, c)),
            f"{r['ours_edge']:.2f}",
            f"{r['ours_edge'] * 1e6 / entries:.2f}",
            f"{bound / r['ours_edge']:.2f}",
            f"{r.get('torch_struct', nan):.1f}",
            f"{r.get('pytorch_crf', nan):.1f}",
            f"{anchor / r['ours_edge']:.1f}x",
            f"{r['ours_shared']:.2f}",
            f"{r.get('pytorch_crf', nan) / r['ours_shared']:.1f}x",
            f"{r['err_ours_edge']:.0e} / {r.get('err_struct', nan):.0e} / "
            f"{r.get('err_crf', nan):.0e}",
        ]
        print("| " + " | ".join(vals) + " |", flush=True)
    print(
        f"\nTorch layer, per-edge tables: medians of {args.layer_repeats} interleaved calls, ms\n"
    )
    print(
        "| (B, T, C) | numpy call | torch loss + backward | layer adds | "
        "hand-off floor adds | layer adds beyond the floor |"
    )
    print("|---|---|---|---|---|---|")
    for b, t, c in shapes:
        r = torch_layer(b, t, c, args.layer_repeats)
        adds, floor = r["ours"] - r["numpy"], r["floor"] - r["numpy"]
        vals = [
            str((b, t, c)),
            f"{r['numpy']:.3f}",
            f"{r['ours']:.3f}",
            f"{adds:.3f} ({100 * adds / r['numpy']:.0f}%)",
            f"{floor:.3f} ({100 * floor / r['numpy']:.0f}%)",
            f"{adds - floor:.3f} ({100 * (adds - floor) / r['numpy']:.0f}%)",
        ]
        print("| " + " | ".join(vals) + " |", flush=True)


if __name__ == "__main__":
    main()
