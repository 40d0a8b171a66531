"""expsoftmax.torch.ExpSoftmax beside torch-struct's LinearChainCRF (structured attention's
tool): the same chains with per-edge scores written by a network (s_e (B, T-1, C, C), float32),
whole calls, same thread count.

Rows: log_partition forward + backward (first order); marginals forward + backward of
``(marginals * w).sum()`` (second order of log Z: torch-struct differentiates its own
autograd graph, expsoftmax runs the core's forward-mode pass); entropy forward + backward.

Run: python benches/bench_struct.py [--shapes B,T,C ...] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import expsoftmax as es

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of  # noqa: E402

from expsoftmax.torch import ExpSoftmax

SHAPES = [(32, 32, 8), (16, 64, 16), (8, 128, 32)]


def bench_shape(b: int, t: int, c: int, repeats: int, torch_struct) -> list:
    """(work, ours ms, torch-struct ms) rows for one shape."""
    g = es.Graph.chain(t)
    gen = torch.Generator().manual_seed(0)
    s_n = torch.randn(b, t, c, generator=gen).requires_grad_()
    s_e = torch.randn(b, t - 1, c, c, generator=gen).requires_grad_()
    w_e = torch.randn(b, t - 1, c, c, generator=gen)

    def ours(kind: str) -> None:
        d = ExpSoftmax(g, s_n, s_e)
        if kind == "log_partition":
            out = d.log_partition.sum()
        elif kind == "marginals":
            out = (d.marginals[1] * w_e).sum()  # pair marginals, as torch-struct's
        else:
            out = d.entropy.sum()
        out.backward()

    def theirs(kind: str) -> None:
        # torch-struct's potentials (B, T-1, C_next, C_prev) carry the node scores too.
        pot = s_e.transpose(-1, -2) + s_n[:, 1:, :, None]
        pot = torch.cat([pot[:, :1] + s_n[:, :1, None, :], pot[:, 1:]], dim=1)
        d = torch_struct.LinearChainCRF(pot)
        if kind == "log_partition":
            out = d.partition.sum()
        elif kind == "marginals":
            mu = d.marginals  # (B, T-1, C_next, C_prev): pair marginals
            out = (mu.transpose(-1, -2) * w_e).sum()
        else:
            out = d.entropy.sum()
        out.backward()

    rows = []
    for kind in ("log_partition", "marginals", "entropy"):
        a = best_of(lambda k=kind: ours(k), repeats)
        z = best_of(lambda k=kind: theirs(k), repeats)
        rows.append((kind, a, z))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="*", help="B,T,C triples")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch_struct  # the anchor: pip install torch-struct

    torch.set_num_threads(args.threads)
    es.set_num_threads(args.threads)
    shapes = [tuple(map(int, s.split(","))) for s in args.shapes] if args.shapes else SHAPES
    print("| (B, T, C) | work | expsoftmax (ms) | torch-struct (ms) | ratio |")
    print("|---|---|---|---|---|")
    for b, t, c in shapes:
        for kind, a, z in bench_shape(b, t, c, args.repeats, torch_struct):
            row = f"| ({b}, {t}, {c}) | {kind} fwd+bwd | {a:.2f} | {z:.2f} | {z / a:.1f}x |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
