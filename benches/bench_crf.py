"""expsoftmax.torch.CRF beside pytorch-crf's CRF (the module it replaces), same parameters:
log-likelihood forward + backward, and decode, float32, full masks, (seq, batch) layout,
whole calls. Torch and the core both get the same thread count.

Run: python benches/bench_crf.py [--shapes B,T,C ...] [--repeats 7] [--threads 2]
Tip: OMP_WAIT_POLICY=PASSIVE keeps torch's idle OpenMP threads off the cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import expsoftmax as es

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of  # noqa: E402

from expsoftmax.torch import CRF

# (2, 3, 5) is the example in pytorch-crf's README (fixed costs); then training-sized batches.
SHAPES = [(2, 3, 5), (32, 128, 16), (64, 64, 9), (128, 32, 50), (8, 512, 32)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="*", help="B,T,C triples")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torchcrf  # the anchor: pip install pytorch-crf

    torch.set_num_threads(args.threads)
    es.set_num_threads(args.threads)
    shapes = [tuple(map(int, s.split(","))) for s in args.shapes] if args.shapes else SHAPES
    print(
        "| (B, T, C) | fwd+bwd ours (ms) | pytorch-crf | ratio "
        "| decode ours | pytorch-crf | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for b, t, c in shapes:
        ours, theirs = CRF(c), torchcrf.CRF(c)
        theirs.load_state_dict(ours.state_dict())
        em = torch.randn(t, b, c, requires_grad=True)
        tags = torch.randint(0, c, (t, b))
        mask = torch.ones(t, b, dtype=torch.bool)

        def step(m, em=em, tags=tags, mask=mask):
            m(em, tags, mask).backward()

        f = [best_of(lambda m=m: step(m), args.repeats) for m in (ours, theirs)]
        d = [best_of(lambda m=m: m.decode(em, mask), args.repeats) for m in (ours, theirs)]  # noqa: B023
        print(
            f"| ({b}, {t}, {c}) | {f[0]:.2f} | {f[1]:.2f} | {f[1] / f[0]:.1f}x "
            f"| {d[0]:.2f} | {d[1]:.2f} | {d[1] / d[0]:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
