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
from expsoftmax.demo import SegNet  # noqa: E402
from expsoftmax.torch import exp_softmax_loss, grid_scores  # noqa: E402

H = W = 8
C = 3


def _batch():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((4, 1, H, W)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, C, (4, H, W)))
    return x, y


def _net():
    # The demo's network (node head, edge head, table); batch norm in eval mode so that
    # a step does not depend on how the batch is split.
    torch.manual_seed(0)
    return SegNet(C, width=4).eval()


def _step(model, opt, x, y):
    """One step of the demo's CRF loss: the mean over the local batch (DDP averages the
    gradients over ranks, so equal halves give the whole batch's step)."""
    s_n, s_e = grid_scores(*model(x))
    loss = exp_softmax_loss(s_n, s_e, y.reshape(len(y), -1), es.Graph.grid(H, W), "bp", max_iter=20)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()


def _rank(rank, world, port, q):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    model = torch.nn.parallel.DistributedDataParallel(_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    part = slice(rank * 2, rank * 2 + 2)
    _step(model, opt, x[part], y[part])
    q.put((rank, _params(model.module)))
    dist.destroy_process_group()


def test_two_ranks_match_a_single_process_step():
    ref = _net()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    _step(ref, opt, *_batch())
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
