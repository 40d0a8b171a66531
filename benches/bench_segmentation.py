"""Training throughput of a segmentation CRF at realistic sizes: one optimiser step (forward,
exponential-softmax loss with loopy BP, backward, Adam) on a batch of 256x256 images, C = 21,
beside the per-pixel cross-entropy step of the same network. Images per second and the peak
resident memory of the process that ran the configuration (each in its own child process,
so the peaks do not mix).

Edge scores come from the network (the seed's form s_e = f_e(x)), in two forms:
- weighted: contrast-sensitive per-edge weights from an edge head times a learned (C, C)
  table (``(weight (B, E), table (C, C))``);
- per-edge: full tables (B, E, C, C) from pairs of neighbouring features,
  ``s_e[e, a, b] = w_e * T[a, b] + u_i[a] + v_j[b]`` (u, v: 1x1 convolutions of features).

Run: python benches/bench_segmentation.py [--size 256] [--batch 2] [--classes 21]
     [--iters 10] [--damping 0.5] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings


def step_child(cfg: dict) -> dict:
    import numpy as np
    import torch
    from torch import nn

    import expsoftmax as es
    from expsoftmax.demo import _seg_net_class
    from expsoftmax.torch import exp_softmax_loss, grid_scores

    torch.set_num_threads(cfg["threads"])
    es.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    b, s, c = cfg["batch"], cfg["size"], cfg["classes"]
    net = _seg_net_class()(c, 32)
    # The per-edge head: node features -> u (for the edge's first node), v (second).
    pair = nn.Conv2d(1, 2 * c, 3, padding=1)
    params = list(net.parameters()) + list(pair.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    graph = es.Graph.grid(s, s)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((b, 1, s, s), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, c, (b, s, s)))
    opts = dict(max_iter=cfg["iters"], tol=0.0, damping=cfg["damping"])

    def loss_fn():
        if cfg["form"] == "cross-entropy":
            return nn.functional.cross_entropy(net(x, edges=False)[0], y)
        node, wh, wv, table = net(x)
        if cfg["form"] == "weighted":
            s_n, s_e = grid_scores(node, wh, wv, table)
        else:
            u, v = pair(x).split(c, 1)
            th = wh[..., None, None] * table + u[..., :, :-1, None].permute(0, 2, 3, 1, 4)
            th = th + v[..., :, 1:, None].permute(0, 2, 3, 4, 1)
            tv = wv[..., None, None] * table + u[..., :-1, :, None].permute(0, 2, 3, 1, 4)
            tv = tv + v[..., 1:, :, None].permute(0, 2, 3, 4, 1)
            s_n, s_e = grid_scores(node, th, tv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", es.ConvergenceWarning)
            return exp_softmax_loss(s_n, s_e, y.reshape(b, -1), graph, "bp", **opts) / (s * s)

    def step():
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(cfg["steps"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "peak_mib": peak_kib / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--iters", type=int, default=10, help="BP iterations per step")
    ap.add_argument("--damping", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (best is reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(step_child(json.loads(args.child))))
        return
    base = {k: getattr(args, k) for k in ("size", "batch", "classes", "iters", "damping")}
    base.update(steps=args.steps, threads=args.threads)
    print(
        f"one training step, batch {args.batch} x {args.size}x{args.size}, C = {args.classes}, "
        f"BP {args.iters} iterations, damping {args.damping}, {args.threads} threads\n"
    )
    print("| step | ms per step | images/s | peak memory (MiB) | vs cross-entropy |")
    print("|---|---|---|---|---|")
    rows = [
        ("CRF, per-edge tables (B, E, C, C)", "per-edge"),
        ("CRF, weight x table", "weighted"),
        ("per-pixel cross-entropy", "cross-entropy"),
    ]
    out = {}
    for label, form in rows:
        cfg = json.dumps({**base, "form": form})
        res = subprocess.run(
            [sys.executable, __file__, "--child", cfg], capture_output=True, text=True
        )
        if res.returncode:
            print(f"| {label} | failed: {res.stderr.strip().splitlines()[-1]} | | | |")
            continue
        out[form] = json.loads(res.stdout.strip().splitlines()[-1])
    ce = out.get("cross-entropy", {}).get("seconds")
    for label, form in rows:
        if form not in out:
            continue
        r = out[form]
        ratio = f"{r['seconds'] / ce:.1f}x the time" if ce else "—"
        print(
            f"| {label} | {r['seconds'] * 1e3:.0f} | {args.batch / r['seconds']:.2f} "
            f"| {r['peak_mib']:.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
