"""Training under torch.distributed (DistributedDataParallel, gloo, CPU): two ranks on
localhost take one step on halves of a global batch; afterwards their parameters are
identical and equal a single-process step on the whole batch (to 1e-6)."""

from __future__ import annotations

import multiprocessing as mp
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import expsoftmax as es  # noqa: E402
from expsoftmax.demo import CRFNet, crf_step  # noqa: E402

H = W = 8
C = 3


def _batch():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((4, 1, H, W)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, C, (4, H, W)))
    wh = torch.from_numpy(rng.random((4, H, W - 1)).astype(np.float32))
    wv = torch.from_numpy(rng.random((4, H - 1, W)).astype(np.float32))
    return x, y, wh, wv


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()


def _rank(rank, world, port, q):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(CRFNet(C))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y, wh, wv = _batch()
    part = slice(rank * 2, rank * 2 + 2)
    crf_step(
        model,
        opt,
        es.Graph.grid(H, W),
        x[part],
        y[part],
        wh[part],
        wv[part],
        "bp",
        {"max_iter": 20},
    )
    q.put((rank, _params(model.module)))
    dist.destroy_process_group()


def test_two_ranks_match_a_single_process_step():
    torch.manual_seed(0)
    ref = CRFNet(C)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    crf_step(ref, opt, es.Graph.grid(H, W), *_batch(), "bp", {"max_iter": 20})
    want = _params(ref)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Spawned (not forked) ranks: a fork of a process that has run torch's thread pool
    # can deadlock inside torch.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_allclose(got[0], want, atol=1e-6)
