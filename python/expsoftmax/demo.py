"""Train a CRF segmentation network end to end with the exponential-softmax loss.

    python -m expsoftmax.demo [--help]

Data: scikit-learn's handwritten digits (1797 real 8x8 scans shipped inside the package,
nothing downloaded) composed into scenes: one or two digits, upscaled, on a noisy
background with clutter strokes. Each pixel is labelled with its digit's class (1-10) or
background (0), so C = 11. Digits are real handwriting, so shapes vary the way real
segmentation targets do, while the whole run fits in minutes on two CPU cores.

A small CNN writes node scores (B, C, H, W). Its receptive field (9x9) is smaller than a
digit (16x16), so per-pixel classification is locally ambiguous; the CRF's edges let
evidence flow across the digit. Edge scores are contrast-sensitive Potts-style
``w_e * table``: ``w_e = exp(-|I_i - I_j|^2 / 2 sigma^2)`` from the image and a learned
(C, C) table. The CNN is first trained with per-pixel cross-entropy (the baseline), then
fine-tuned with the exponential-softmax loss (loopy BP by default) together with the table.
Held-out scenes are decoded per pixel (baseline) and by MAP (max-product BP) for the CRF;
pixel accuracy and mean IoU are printed, and a PNG shows input, truth, both predictions
and the CRF's marginal uncertainty (entropy).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

import expsoftmax as es

C = 11  # background + ten digits


def make_scenes(n: int, size: int, digits: np.ndarray, labels: np.ndarray, rng) -> tuple:
    """``n`` scenes ``(n, size, size)`` in [0, 1] and their pixel labels."""
    imgs = np.zeros((n, size, size))
    ys = np.zeros((n, size, size), dtype=np.int64)
    for k in range(n):
        img = rng.normal(0.1, 0.12, (size, size))
        # Clutter: short unlabelled strokes.
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size, 2)
            length = rng.integers(3, max(4, size // 3))
            if rng.random() < 0.5:
                img[r, c : c + length] += 0.5
            else:
                img[r : r + length, c] += 0.5
        for _ in range(rng.integers(1, 3)):
            i = rng.integers(0, len(digits))
            d = np.kron(digits[i] / 16.0, np.ones((2, 2)))  # 16 x 16
            r, c = rng.integers(0, size - 15, 2)
            mask = d > 0.3
            patch = img[r : r + 16, c : c + 16]
            patch[mask] = d[mask] + rng.normal(0, 0.1, mask.sum())
            ys[k, r : r + 16, c : c + 16][mask] = labels[i] + 1
        imgs[k] = np.clip(img, 0, 1)
    return imgs.astype(np.float32), ys


def edge_weights(imgs: np.ndarray, sigma: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Contrast-sensitive weights for horizontal (B, H, W-1) and vertical (B, H-1, W) edges."""
    dh = imgs[:, :, 1:] - imgs[:, :, :-1]
    dv = imgs[:, 1:, :] - imgs[:, :-1, :]
    return np.exp(-(dh**2) / (2 * sigma**2)), np.exp(-(dv**2) / (2 * sigma**2))


def _cnn(c: int):
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 5, padding=2), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=2, dilation=2), torch.nn.ReLU(),
        torch.nn.Conv2d(32, c, 1),
    )  # fmt: skip


def _crf_net_class():
    import torch

    class CRFNet(torch.nn.Module):
        """The CNN (node scores) and the learned (C, C) edge table, as one module so that
        DistributedDataParallel synchronises both."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.cnn = _cnn(c)
            self.table = torch.nn.Parameter(torch.eye(c) * 0.5)

        def forward(self, x):
            return self.cnn(x)

    return CRFNet


def __getattr__(name: str):
    # torch stays optional: the module class is built on first use.
    if name == "CRFNet":
        return _crf_net_class()
    raise AttributeError(name)


def crf_step(model, opt, graph, xb, yb, wh, wv, method: str, opts: dict) -> float:
    """One optimiser step of the exponential-softmax loss (mean over the local batch;
    under DistributedDataParallel the gradients are averaged over ranks, so equal local
    batches give the global-batch step). Returns the loss per pixel."""
    from expsoftmax.torch import exp_softmax_loss, grid_scores

    net = getattr(model, "module", model)
    s_n, s_e = grid_scores(model(xb), wh, wv, net.table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", es.ConvergenceWarning)
        loss = exp_softmax_loss(s_n, s_e, yb.reshape(len(yb), -1), graph, method, **opts)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item() / yb[0].numel()


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.bincount(truth.ravel() * C + pred.ravel(), minlength=C * C).reshape(C, C)


def scores(conf: np.ndarray) -> tuple[float, float]:
    """Pixel accuracy and mean IoU over classes present in truth or prediction."""
    acc = np.trace(conf) / conf.sum()
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float(acc), float((inter[present] / union[present]).mean())


def progress(step: int, total: int, loss: float, label: str, t0: float) -> None:
    width = 30
    done = int(width * step / total)
    sys.stderr.write(
        f"\r{label:>14} [{'#' * done}{'.' * (width - done)}] {step}/{total} "
        f"loss {loss:.4f} {time.perf_counter() - t0:5.1f}s"
    )
    if step == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]],
    dtype=np.uint8,
)  # fmt: skip


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Minimal PNG writer (stdlib zlib), so the demo needs no imaging library."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def figure(imgs, truth, pix, crf, unc, path: Path, scale: int = 6) -> None:
    """Rows of examples; columns: input, truth, per-pixel, CRF, uncertainty."""
    rows = []
    for k in range(len(imgs)):
        gray = (np.clip(imgs[k], 0, 1) * 255).astype(np.uint8)
        u = (np.clip(unc[k] / np.log(C), 0, 1) * 255).astype(np.uint8)
        panels = [
            np.stack([gray] * 3, -1),
            PALETTE[truth[k]],
            PALETTE[pix[k]],
            PALETTE[crf[k]],
            np.stack([u, u // 2, 255 - u], -1),
        ]
        sep = np.full((imgs.shape[1], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([p for pan in panels for p in (pan, sep)][:-1], axis=1))
    grid = np.concatenate(rows, axis=0)
    write_png(path, np.kron(grid, np.ones((scale, scale, 1), np.uint8)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m expsoftmax.demo",
        description="Train a CNN + CRF on digit scenes with the exponential-softmax loss and "
        "compare it with the same CNN trained per pixel.",
    )
    ap.add_argument("--size", type=int, default=24, help="scene height and width (>= 16)")
    ap.add_argument("--train", type=int, default=512, help="training scenes")
    ap.add_argument("--test", type=int, default=128, help="held-out scenes")
    ap.add_argument("--steps", type=int, default=250, help="cross-entropy optimiser steps")
    ap.add_argument("--crf-steps", type=int, default=120, help="CRF fine-tuning steps per method")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["bp", "trw"],
        choices=["bp", "trw", "mean_field"],
        help="CRF inference methods to train",
    )
    ap.add_argument("--bp-iters", type=int, default=10, help="message-passing iterations per step")
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
    args = ap.parse_args(argv)
    if args.size < 16:
        ap.error("--size must be at least 16 (digits are 16 x 16)")
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
    import torch
    from sklearn.datasets import load_digits

    from expsoftmax.torch import grid_scores

    if args.threads:
        torch.set_num_threads(args.threads)
        es.set_num_threads(args.threads)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )

    def wrap(m):
        return torch.nn.parallel.DistributedDataParallel(m) if world > 1 else m

    lead = rank == 0
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    d = load_digits()
    split = 1400
    x_tr, y_tr = make_scenes(args.train, args.size, d.images[:split], d.target[:split], rng)
    x_te, y_te = make_scenes(args.test, args.size, d.images[split:], d.target[split:], rng)
    h = w = args.size
    graph = es.Graph.grid(h, w)

    def batches(steps):
        # Every rank draws the same global batch and keeps its share.
        for _ in range(steps):
            idx = rng.integers(0, len(x_tr), args.batch)[rank::world]
            yield torch.from_numpy(x_tr[idx, None]), torch.from_numpy(y_tr[idx]), idx

    def show(*a):
        if lead:
            progress(*a)

    t_start = time.perf_counter()
    # Stage 1: per-pixel cross-entropy.
    torch.manual_seed(args.seed)
    base = wrap(_cnn(C))
    opt = torch.optim.Adam(base.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for step, (xb, yb, _) in enumerate(batches(args.steps), 1):
        loss = torch.nn.functional.cross_entropy(base(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        show(step, args.steps, loss.item(), "cross-entropy", t0)

    wh_tr, wv_tr = edge_weights(x_tr)
    wh_te, wv_te = edge_weights(x_te)
    opts = dict(max_iter=args.bp_iters, tol=1e-4, damping=0.3)
    results = {}
    with torch.no_grad():
        logits = getattr(base, "module", base)(torch.from_numpy(x_te[:, None])).numpy()
    pix = logits.argmax(1)
    results["per-pixel (cross-entropy)"] = scores(confusion(pix, y_te))
    history = {}
    crf_out = {}
    for method in args.methods:
        torch.manual_seed(args.seed)
        net = _crf_net_class()(C)
        net.cnn.load_state_dict(getattr(base, "module", base).state_dict())
        model = wrap(net)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        losses = []
        for step, (xb, yb, idx) in enumerate(batches(args.crf_steps), 1):
            wh, wv = torch.from_numpy(wh_tr[idx]), torch.from_numpy(wv_tr[idx])
            losses.append(crf_step(model, opt, graph, xb, yb, wh, wv, method, opts))
            show(step, args.crf_steps, losses[-1], f"CRF ({method})", t0)
        table = net.table
        history[method] = losses
        if not lead:
            continue
        with torch.no_grad():
            node = net(torch.from_numpy(x_te[:, None]))
            s_n, (wt, tb) = grid_scores(
                node, torch.from_numpy(wh_te), torch.from_numpy(wv_te), table.detach()
            )
        s_n, wt, tb = s_n.numpy(), wt.numpy(), tb.numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", es.ConvergenceWarning)
            y_map = es.decode(graph, s_n, (wt, tb), method="bp", **opts).reshape(-1, h, w)
            marg = es.infer(graph, s_n, (wt, tb), method=method, **opts).node_marginals
        ent = -(marg * np.log(np.maximum(marg, 1e-12))).sum(-1).reshape(-1, h, w)
        results[f"CRF ({method}), MAP decode"] = scores(confusion(y_map, y_te))
        crf_out[method] = (y_map, ent)

    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if not lead:
        return {}
    elapsed = time.perf_counter() - t_start
    print(f"\nHeld-out scenes: {args.test} ({args.size}x{args.size}, C = {C}); {elapsed:.0f} s")
    print(f"{'model':<32} {'pixel acc':>9} {'mean IoU':>9}")
    for name, (acc, miou) in results.items():
        print(f"{name:<32} {acc:9.4f} {miou:9.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    first = args.methods[0]
    y_map, ent = crf_out[first]
    fig = args.out / "segmentation.png"
    figure(x_te[:6], y_te[:6], pix[:6], y_map[:6], ent[:6], fig)
    print(f"figure: {fig} (columns: input, truth, per-pixel, CRF {first} MAP, uncertainty)")
    return {"results": results, "history": history, "figure": fig, "seconds": elapsed}


if __name__ == "__main__":
    main()
