"""torch.compile(fullgraph=True) of models that call the loss and ExpSoftmax.log_partition:
the core calls are torch custom operators (expsoftmax::loss_and_grad,
expsoftmax::log_partition) with fake and autograd registrations, so there is no graph
break, and values and gradients equal eager mode's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import expsoftmax as es  # noqa: E402
from expsoftmax.torch import ExpSoftmax, ExpSoftmaxLoss, exp_softmax_loss  # noqa: E402

F64 = torch.float64


def _grads(f, params, *args):
    out = f(*args)
    return out.detach(), torch.autograd.grad(out, params)


def _same(fn, params, *args, backend="aot_eager"):
    torch._dynamo.reset()
    ref, gref = _grads(fn, params, *args)
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    for _ in range(2):  # the second call runs the cached graph
        out, g = _grads(compiled, params, *args)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        for a, b in zip(g, gref):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_a_model_with_the_loss_and_log_partition_compiles_with_inductor():
    g = es.Graph.chain(5)
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(4, 3).double()
    x = torch.randn(2, 5, 4, generator=gen, dtype=F64)
    s_e = torch.randn(1, 3, 3, generator=gen, dtype=F64, requires_grad=True)
    y = torch.randint(0, 3, (2, 5), generator=gen)

    def model(x, s_e, y):
        s_n = lin(x).tanh()
        loss = exp_softmax_loss(s_n, s_e, y, g)
        return loss + 0.1 * ExpSoftmax(g, s_n, s_e).log_partition.sum()

    _same(model, [s_e, *lin.parameters()], x, s_e, y, backend="inductor")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_forms_under_compile(reduction):
    g = es.Graph.chain(6)
    gen = torch.Generator().manual_seed(1)
    s_n = torch.randn(3, 6, 4, generator=gen, dtype=F64, requires_grad=True)
    shared = torch.randn(1, 4, 4, generator=gen, dtype=F64, requires_grad=True)
    per_edge = torch.randn(3, 5, 4, 4, generator=gen, dtype=F64, requires_grad=True)
    w = torch.rand(3, 5, generator=gen, dtype=F64, requires_grad=True)
    t = torch.randn(4, 4, generator=gen, dtype=F64, requires_grad=True)
    y = torch.randint(0, 4, (3, 6), generator=gen)
    mask = torch.arange(6) < torch.tensor([6, 3, 5])[:, None]
    k = torch.tensor([1.0, 2.0, -0.5], dtype=F64)  # a non-uniform upstream gradient

    def weigh(loss):
        return (loss * k).sum() if reduction == "none" else loss

    mod = ExpSoftmaxLoss(g, reduction=reduction)
    _same(lambda a, b: weigh(mod(a, b, y, mask=mask)), [s_n, shared], s_n, shared)
    _same(lambda a, b: weigh(mod(a, b, y)), [s_n, per_edge], s_n, per_edge)
    _same(lambda a, w, t: weigh(mod(a, (w, t), y)), [s_n, w, t], s_n, w, t)


def test_loopy_method_with_options_under_compile():
    g = es.Graph.grid(3, 3)
    gen = torch.Generator().manual_seed(2)
    s_n = torch.randn(2, 9, 3, generator=gen, dtype=F64, requires_grad=True)
    s_e = torch.randn(2, g.num_edges, 3, 3, generator=gen, dtype=F64, requires_grad=True)
    y = torch.randint(0, 3, (2, 9), generator=gen)

    def fn(a, b):
        lz = ExpSoftmax(g, a, b, method="bp", damping=0.5, max_iter=200).log_partition
        return exp_softmax_loss(a, b, y, g, method="trw", tol=1e-9) + lz.sum()

    _same(fn, [s_n, s_e], s_n, s_e)
