"""Segment digit scenes with a CNN + CRF trained end to end by the exponential-softmax loss.

    python -m expsoftmax.demo [--help]

Data: scikit-learn's handwritten digits (1797 real 8x8 scans shipped inside the package,
nothing downloaded) composed into noisy scenes: one to three digits, upscaled to 16x16, on
a noisy background with clutter strokes as bright as the digits' own. Each pixel is labelled
with its digit's class (1-10) or background (0), so C = 11. Held-out scenes use held-out
scans.

One network, :class:`SegNet`, writes both score tensors of the exponential softmax:

- node scores ``s_n = f_n(x)``, ``(B, C, H, W)``, from a dilated CNN whose receptive field
  (17x17) covers a digit;
- edge scores ``s_e = f_e(x)`` in the weighted form ``w_e * table``: an edge head reads the
  two neighbouring pixels' features (and their contrast) and writes a non-negative weight
  per edge; the ``(C, C)`` table is learned too. Both get gradients through ``s_e.grad``.

Rows, each from the same network and the same total number of optimiser steps (``--steps``):

- ``per-pixel (cross-entropy)``: all steps with per-pixel cross-entropy, decoded per pixel;
- ``CRF post-processing (untrained Potts edges)``: that same trained network, decoded at
  test time by max-product BP with fixed contrast-sensitive Potts edges (nothing trained);
- ``CRF (bp), end to end`` / ``CRF (trw), end to end``: the first ``steps - crf_steps``
  steps with cross-entropy (the same checkpoint as the per-pixel row's), the last
  ``crf_steps`` with the exponential-softmax loss (loopy BP / tree-reweighted BP) training
  node head, edge head and table together; decoded by max-product BP.

Pixel accuracy, mean IoU and per-class IoU on held-out scenes are printed and returned; a
figure (matplotlib) shows inputs, truth, each row's prediction and the CRF's marginal
entropy. Progress bars come from tqdm. Both are in the ``demo`` extra.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import expsoftmax as es

C = 11  # background + ten digits
DIGIT = 16  # digits are 8x8 scans upscaled twice
SIGMA = 0.25  # contrast scale of the edge weights exp(-dI^2 / 2 sigma^2)
NOISE = 0.25  # standard deviation of the pixel noise
POTTS = 1.5  # strength of the untrained post-processing edges
LR, LR_TUNE = 3e-3, 1e-3  # Adam: one-cycle pretraining, cosine for the last steps

PER_PIXEL = "per-pixel (cross-entropy)"
POST = "CRF post-processing (untrained Potts edges)"


def crf_row(method: str) -> str:
    return f"CRF ({method}), end to end"


def make_scenes(
    n: int,
    size: int,
    digits: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    noise: float = NOISE,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes: images ``(n, size, size)`` float32 in [0, 1] and labels int64 (0 is
    background, ``1 + digit`` a digit's stroke)."""
    imgs = np.empty((n, size, size), np.float32)
    ys = np.zeros((n, size, size), np.int64)
    for k in range(n):
        img = rng.normal(0.15, noise, (size, size))
        # Clutter: unlabelled strokes as bright and as thick as the digits' strokes, so
        # that a pixel's neighbourhood alone cannot tell stroke of a digit from clutter.
        for _ in range(rng.integers(2, 6)):
            r, c = rng.integers(0, size, 2)
            length = rng.integers(4, size // 2)
            v = rng.uniform(0.6, 1.0)
            if rng.random() < 0.5:
                img[r : r + 2, c : c + length] = v
            else:
                img[r : r + length, c : c + 2] = v
        taken = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(0, len(digits))
            d = np.kron(digits[i] / 16.0, np.ones((2, 2)))
            # Digits do not overlap (a few tries for a free spot), so every labelled pixel
            # has one right answer.
            for _ in range(10):
                r, c = rng.integers(0, size - DIGIT + 1, 2)
                if not taken[r : r + DIGIT, c : c + DIGIT].any():
                    break
            else:
                continue
            taken[r : r + DIGIT, c : c + DIGIT] = True
            mask = d > 0.3
            patch = img[r : r + DIGIT, c : c + DIGIT]
            patch[mask] = d[mask] + rng.normal(0, noise, mask.sum())
            ys[k, r : r + DIGIT, c : c + DIGIT][mask] = labels[i] + 1
        imgs[k] = np.clip(img, 0, 1)
    return imgs, ys


def contrast(imgs: Any) -> tuple[Any, Any]:
    """Contrast-sensitive weights ``exp(-dI^2 / 2 sigma^2)`` of the horizontal
    ``(..., H, W-1)`` and vertical ``(..., H-1, W)`` edges (numpy or torch)."""
    dh = imgs[..., :, 1:] - imgs[..., :, :-1]
    dv = imgs[..., 1:, :] - imgs[..., :-1, :]
    exp = np.exp if isinstance(imgs, np.ndarray) else type(imgs).exp
    return exp(-(dh**2) / (2 * SIGMA**2)), exp(-(dv**2) / (2 * SIGMA**2))


def _seg_net_class():
    import torch
    from torch import nn

    def _block(i: int, o: int, dilation: int = 1):
        conv = nn.Conv2d(i, o, 3, padding=dilation, dilation=dilation)
        return nn.Sequential(conv, nn.BatchNorm2d(o), nn.ReLU())

    class SegNet(nn.Module):
        """Node head ``f_n`` and edge head ``f_e`` of one network.

        ``forward(x (B, 1, H, W))`` returns ``(node (B, C, H, W), horizontal (B, H, W-1),
        vertical (B, H-1, W), table (C, C))``: node scores, and the per-edge weights and
        the learned table of the weighted edge scores ``w_e * table``; with
        ``edges=False`` only ``(node,)``."""

        def __init__(self, c: int = C, width: int = 32, edge_features: int = 8) -> None:
            super().__init__()
            # Dilations 1, 2, 4, 1: receptive field 1 + 2 * (1 + 2 + 4 + 1) = 17 px, a digit
            # (16 px) and its border. Batch norm for quick training.
            self.node = nn.Sequential(
                _block(1, width), _block(width, width, 2), _block(width, width, 4),
                _block(width, width, 1), nn.Conv2d(width, c, 1),
            )  # fmt: skip
            self.edge_features = nn.Sequential(
                nn.Conv2d(1, edge_features, 3, padding=1), nn.ReLU(),
                nn.Conv2d(edge_features, edge_features, 3, padding=1),
            )  # fmt: skip
            # An edge's weight from |f_i - f_j| and the pixels' contrast.
            self.edge_mix = nn.Linear(edge_features + 1, 1)
            self.table = nn.Parameter(torch.eye(c))

        def edges(self, x):
            f = self.edge_features(x)
            ch, cv = contrast(x[:, 0])
            dh = (f[..., :, 1:] - f[..., :, :-1]).abs()
            dv = (f[..., 1:, :] - f[..., :-1, :]).abs()
            wh = self.edge_mix(torch.cat([dh, ch[:, None]], 1).movedim(1, -1))
            wv = self.edge_mix(torch.cat([dv, cv[:, None]], 1).movedim(1, -1))
            sp = nn.functional.softplus
            return sp(wh[..., 0]), sp(wv[..., 0])

        def forward(self, x, edges: bool = True):
            if not edges:
                return (self.node(x),)
            # The table is returned through an autograd node (not read off the module by
            # the caller) so that DistributedDataParallel sees it used inside forward.
            return (self.node(x), *self.edges(x), self.table.clone())

    return SegNet


def __getattr__(name: str):
    # torch stays optional: the module class is built on first use.
    if name == "SegNet":
        return _seg_net_class()
    raise AttributeError(name)


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(C, C)`` counts: rows truth, columns prediction."""
    return np.bincount(truth.ravel() * C + pred.ravel(), minlength=C * C).reshape(C, C)


def iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU ``(C,)``; NaN for a class absent from both truth and prediction."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def scores(conf: np.ndarray) -> tuple[float, float]:
    """Pixel accuracy and mean IoU over the classes present in truth or prediction."""
    return float(np.trace(conf) / conf.sum()), float(np.nanmean(iou(conf)))


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        return fn(*a, **kw)


def main(argv=None) -> dict:
    """Run the demo; returns ``{"results": {row: (pixel accuracy, mean IoU)},
    "per_class_iou": {row: (C,) array}, "steps": {row: optimiser steps}, "history":
    {row: losses per step, method: its exponential-softmax steps' losses, "pretraining":
    the shared cross-entropy steps' losses}, "figure": path, "seconds": wall time}``
    (``{}`` on ranks > 0)."""
    ap = argparse.ArgumentParser(
        prog="python -m expsoftmax.demo",
        description="Segment digit scenes: a per-pixel CNN against the same CNN with a CRF "
        "(edge scores from the network) trained end to end with the exponential-softmax loss.",
    )
    ap.add_argument("--size", type=int, default=32, help="scene height and width (>= 16)")
    ap.add_argument("--train", type=int, default=1000, help="training scenes")
    ap.add_argument("--test", type=int, default=200, help="held-out scenes")
    ap.add_argument("--steps", type=int, default=1500, help="optimiser steps of every row")
    ap.add_argument(
        "--crf-steps",
        type=int,
        default=400,
        help="of those, the last steps the CRF rows train with the exponential-softmax loss",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=32, help="channels of the node head")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["bp", "trw"],
        choices=["bp", "trw", "mean_field"],
        help="CRF inference methods trained end to end",
    )
    ap.add_argument("--bp-iters", type=int, default=10, help="message-passing iterations")
    ap.add_argument("--threads", type=int, default=0, help="threads (0: all cores)")
    ap.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="train with N DistributedDataParallel processes (gloo, CPU, localhost); "
        "each takes 1/N of every global batch",
    )
    ap.add_argument("--out", type=Path, default=Path("expsoftmax_demo"), help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.size < DIGIT:
        ap.error(f"--size must be at least {DIGIT} (digits are {DIGIT} x {DIGIT})")
    if not 0 <= args.crf_steps <= args.steps:
        ap.error("--crf-steps must be between 0 and --steps")
    if args.world_size < 1 or args.batch % args.world_size:
        ap.error("--world-size must be >= 1 and divide --batch")
    if args.world_size == 1:
        return _run(args, 0, 1, None)
    import socket

    import torch.multiprocessing as tmp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp.spawn(_worker, args=(args, port), nprocs=args.world_size, join=True)
    return {}


def _worker(rank: int, args, port: int) -> None:
    _run(args, rank, args.world_size, port)


def _run(args, rank: int, world: int, port) -> dict:
    import copy

    import torch
    from sklearn.datasets import load_digits
    from tqdm.auto import tqdm

    from expsoftmax.torch import exp_softmax_loss, grid_scores

    if args.threads:
        torch.set_num_threads(args.threads)
        es.set_num_threads(args.threads)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    lead = rank == 0
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    d = load_digits()
    split = 1400  # held-out scenes are composed from held-out scans
    x_tr, y_tr = make_scenes(args.train, args.size, d.images[:split], d.target[:split], rng)
    x_te, y_te = make_scenes(args.test, args.size, d.images[split:], d.target[split:], rng)
    h = w = args.size
    graph = es.Graph.grid(h, w)
    opts = dict(max_iter=args.bp_iters, tol=1e-4, damping=0.3)

    def train(model, steps: int, label: str, loss_fn, seed: int, lr: float, warmup: bool) -> list:
        """``steps`` Adam steps of ``loss_fn(model, x, y)``; each rank draws the same global
        batch (from its own seeded stream) and keeps its share."""
        net = model
        if world > 1:
            # The cross-entropy steps leave the edge head unused.
            net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        if warmup:
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(steps, 1))
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
        net.train()
        draw = np.random.default_rng([args.seed, seed])
        losses = []
        bar = tqdm(range(steps), desc=f"{label:>14}", disable=not lead or args.no_progress)
        t0 = time.perf_counter()
        for step in bar:
            idx = draw.integers(0, len(x_tr), args.batch)[rank::world]
            xb, yb = torch.from_numpy(x_tr[idx, None]), torch.from_numpy(y_tr[idx])
            loss = loss_fn(net, xb, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            rate = (step + 1) * args.batch / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{rate:.0f}")
        return losses

    def cross_entropy(net, xb, yb):
        return torch.nn.functional.cross_entropy(net(xb, edges=False)[0], yb)

    def crf_loss(method):
        def fn(net, xb, yb):
            s_n, s_e = grid_scores(*net(xb))
            y = yb.reshape(len(yb), -1)
            loss = _quiet(exp_softmax_loss, s_n, s_e, y, graph, method, **opts)
            return loss / (h * w)  # per pixel, on the scale of the cross-entropy

        return fn

    torch.manual_seed(args.seed)
    model = _seg_net_class()(C, args.width)
    pre = args.steps - args.crf_steps
    history = {"pretraining": train(model, pre, "cross-entropy", cross_entropy, 1, LR, True)}
    checkpoint = copy.deepcopy(model.state_dict())
    history[PER_PIXEL] = history["pretraining"] + train(
        model, args.crf_steps, "cross-entropy", cross_entropy, 2, LR_TUNE, False
    )
    steps = {PER_PIXEL: len(history[PER_PIXEL]), POST: len(history[PER_PIXEL])}
    models = {PER_PIXEL: model}
    for method in args.methods:
        crf = _seg_net_class()(C, args.width)
        crf.load_state_dict(checkpoint)
        name = crf_row(method)
        # history[method]: the exponential-softmax losses alone; history[row]: all steps.
        history[method] = train(
            crf, args.crf_steps, f"CRF ({method})", crf_loss(method), 2, LR_TUNE, False
        )
        history[name] = history["pretraining"] + history[method]
        steps[name] = len(history[name])
        models[name] = crf

    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if not lead:
        return {}

    x = torch.from_numpy(x_te[:, None])
    for m in models.values():
        m.eval()
    with torch.no_grad():
        out = {name: m(x) for name, m in models.items()}
    node = out[PER_PIXEL][0]
    preds = {PER_PIXEL: node.argmax(1).numpy()}
    # Post-processing: the per-pixel network's scores, fixed contrast-sensitive Potts edges.
    ch, cv = contrast(x_te)
    s_n, (wt, _) = grid_scores(node, torch.from_numpy(ch), torch.from_numpy(cv), torch.eye(C))
    potts = np.eye(C, dtype=np.float32) * POTTS
    preds[POST] = _quiet(es.decode, graph, s_n.numpy(), (wt.numpy(), potts), "bp", **opts)
    entropy = None
    for method in args.methods:
        name = crf_row(method)
        s_n, (wt, tb) = grid_scores(*out[name][:3], out[name][3].detach())
        s_n, s_e = s_n.numpy(), (wt.numpy(), tb.numpy())
        preds[name] = _quiet(es.decode, graph, s_n, s_e, "bp", **opts)
        if entropy is None:
            marg = _quiet(es.infer, graph, s_n, s_e, method, **opts).node_marginals
            entropy = -(marg * np.log(np.maximum(marg, 1e-12))).sum(-1).reshape(-1, h, w)
    preds = {k: v.reshape(-1, h, w) for k, v in preds.items()}
    confs = {k: confusion(v, y_te) for k, v in preds.items()}
    results = {k: scores(c) for k, c in confs.items()}
    per_class = {k: iou(c) for k, c in confs.items()}

    elapsed = time.perf_counter() - t_start
    print(f"\nHeld-out scenes: {args.test} ({h}x{w}, C = {C}); {elapsed:.0f} s")
    print(f"{'model':<45} {'steps':>5} {'pixel acc':>9} {'mean IoU':>9}")
    for name, (acc, miou) in results.items():
        print(f"{name:<45} {steps[name]:>5} {acc:9.4f} {miou:9.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    fig = args.out / "segmentation.png"
    draw_figure(x_te[:5], y_te[:5], {k: v[:5] for k, v in preds.items()}, entropy, fig)
    print(f"figure: {fig}")
    return {
        "results": results,
        "per_class_iou": per_class,
        "steps": steps,
        "history": history,
        "figure": fig,
        "seconds": elapsed,
    }


def draw_figure(imgs, truth, preds: dict, entropy, path: Path) -> None:
    """Rows of held-out scenes; columns: input, truth, each row's prediction and (when a
    CRF was trained) its marginal entropy; a class legend and an entropy colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[: C - 1]
    cmap = ListedColormap(np.vstack([[0, 0, 0, 1], colours]))
    cols = [("input", imgs, "gray"), ("truth", truth, cmap)]
    cols += [(name.replace(", ", ",\n").replace(" (", "\n("), p, cmap) for name, p in preds.items()]
    n_cols = len(cols) + (entropy is not None)
    fig, axes = plt.subplots(len(imgs), n_cols, figsize=(1.9 * n_cols, 1.9 * len(imgs) + 1.2))
    axes = np.atleast_2d(axes)
    for j, (title, data, cm) in enumerate(cols):
        for i in range(len(imgs)):
            kw = {"vmin": 0, "vmax": 1} if cm == "gray" else {"vmin": 0, "vmax": C - 1}
            axes[i, j].imshow(data[i], cmap=cm, interpolation="nearest", **kw)
        axes[0, j].set_title(title, fontsize=8)
    if entropy is not None:
        for i in range(len(imgs)):
            im = axes[i, -1].imshow(entropy[i], cmap="magma", vmin=0, vmax=np.log(C))
        axes[0, -1].set_title("CRF marginal\nentropy (nats)", fontsize=8)
        fig.colorbar(im, ax=axes[:, -1], fraction=0.05, shrink=0.6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    names = ["background"] + [f"digit {k}" for k in range(10)]
    handles = [Patch(color=cmap(k), label=names[k]) for k in range(C)]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
