"""What a careless or unlucky caller meets: public exception classes, MemoryError instead of
an abort, Ctrl-C that stops a long call, options that are never silently ignored."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import expsoftmax as es
from expsoftmax import errors

GRID = es.Graph.grid(3, 4)
GN = np.random.default_rng(0).normal(size=(12, 3))
GE = np.random.default_rng(1).normal(size=(GRID.num_edges, 3, 3))


@pytest.mark.parametrize("name", errors.__all__)
def test_error_classes_are_public_and_picklable(name):
    cls = getattr(errors, name)
    assert cls.__module__ == "expsoftmax.errors" and getattr(es, name) is cls
    assert issubclass(cls, ValueError)
    e = pickle.loads(pickle.dumps(cls("why")))
    assert type(e) is cls and str(e) == "why"


def test_the_core_raises_the_public_classes():
    with pytest.raises(errors.ShapeError) as info:
        es.infer(GRID, GN, GE, method="trw", edge_appearance=np.ones(3))
    assert type(info.value) is errors.ShapeError
    with pytest.raises(errors.NotForestError, match="max_states"):
        es.infer(GRID, GN, GE, method="exact", max_states=10)
    with pytest.raises(errors.OptionError, match="max_iters"):
        es.infer(GRID, GN, GE, max_iters=3)
    s_n = np.full((4, 2), -np.inf)
    with pytest.raises(errors.InfeasibleError):
        es.infer(es.Graph.chain(4), s_n, np.zeros((2, 2)))


def test_oversized_requests_raise_memory_error_naming_the_array():
    chain = es.Graph.chain(1000)
    s_n, s_e = np.zeros((1000, 3)), np.zeros((3, 3))
    with pytest.raises(MemoryError, match="samples"):
        es.sample(chain, s_n, s_e, 10**9)
    with pytest.raises(MemoryError, match="samples"):
        es.sample(chain, s_n, s_e, 2**62)
    # 100 000 chains of 1000 nodes, C = 16: the batch comes from `lengths` alone, so the
    # inputs are small while the edge marginals would take 100 GB.
    lengths = np.full(100_000, 1000)
    s_n16 = np.zeros((1, 1000, 16), np.float32)
    with pytest.raises(MemoryError, match="edge marginals"):
        es.infer(chain, s_n16, np.zeros((1, 1, 16, 16), np.float32), lengths=lengths)
    with pytest.raises(MemoryError, match="graph"):
        es.Graph(2**32 - 2, [])
    with pytest.raises(ValueError, match="too many nodes"):
        es.Graph(2**70, [])
    with pytest.raises(OverflowError, match="num_samples"):
        es.sample(chain, s_n, s_e, 2**64)
    # The library is still usable afterwards.
    assert es.sample(chain, s_n, s_e, 2, seed=0).shape == (2, 1000)


def test_ctrl_c_stops_a_long_call_promptly_and_leaves_the_library_usable():
    big = es.Graph.grid(150, 150)
    rng = np.random.default_rng(2)
    s_n = rng.normal(size=(big.num_nodes, 6))
    s_e = rng.normal(size=(big.num_edges, 6, 6))
    # Python's own Ctrl-C handler, whatever this process inherited: a shell that starts
    # a job in the background starts it with SIGINT ignored, and Python then keeps it so.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            # Hours of work without the interrupt.
            es.infer(big, s_n, s_e, method="bp", max_iter=10**7, tol=0.0, damping=0.5)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - start < 10
    r = es.infer(es.Graph.chain(5), np.zeros((5, 3)), np.zeros((3, 3)))
    assert abs(float(r.log_z) - 5 * np.log(3)) < 1e-12


def test_thread_count_is_bounded():
    with pytest.raises(ValueError, match="threads"):
        es.set_num_threads(10**6)
    with pytest.raises(ValueError, match="threads"):
        es.set_num_threads(-1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_edge_weights_are_refused_by_name(bad):
    w = np.ones(GRID.num_edges)
    w[3] = bad
    with pytest.raises(ValueError, match="edge weight contains"):
        es.infer(GRID, GN, es.WeightedEdges(w, np.eye(3)))


def test_loose_arguments_are_refused():
    with pytest.raises(TypeError, match="num_nodes"):
        es.Graph(True, [])
    for bad in (1.5, "3", True):
        with pytest.raises(errors.OptionError, match="seed"):
            es.infer(GRID, GN, GE, method="gibbs", seed=bad, num_samples=5, ais_steps=0)
    for bad in ("4", 2.7, None):
        with pytest.raises(errors.OptionError, match="num_samples"):
            es.infer(GRID, GN, GE, method="gibbs", num_samples=bad)
    for bad in (1.5, "3", True):
        with pytest.raises(TypeError, match="seed"):
            es.sample(GRID, GN, GE, 3, seed=bad)
    with pytest.raises(TypeError, match="num_samples"):
        es.sample(GRID, GN, GE, 2.0)
    with pytest.raises(errors.OptionError, match="ais_runs"):
        es.infer(GRID, GN, GE, method="gibbs", ais_runs=10**12)
    for call in (
        lambda: es.infer(GRID, GN, GE, method="gibbs", num_chains=10**9),
        lambda: es.loss_and_grad(GRID, GN, GE, np.zeros(12, int), method="gibbs", num_chains=10**9),
        lambda: es.decode(GRID, GN, GE, method="gibbs", num_chains=10**9),
        lambda: es.sample(GRID, GN, GE, 4, method="gibbs", num_chains=10**9),
    ):
        with pytest.raises(MemoryError, match="Gibbs"):
            call()


def test_lengths_and_mask_are_honoured_or_refused():
    chain = es.Graph.chain(5)
    s_n, s_e = np.zeros((2, 5, 3)), np.zeros((3, 3))
    lengths = np.array([3, 5])
    for method, call in [
        ("gibbs", lambda **k: es.infer(chain, s_n, s_e, num_samples=5, ais_steps=0, **k)),
        ("gibbs", lambda **k: es.loss_and_grad(chain, s_n, s_e, np.zeros((2, 5), int), **k)),
        ("gibbs", lambda **k: es.decode(chain, s_n, s_e, num_samples=5, **k)),
        ("gibbs", lambda **k: es.sample(chain, s_n, s_e, 3, **k)),
        ("trw", lambda **k: es.decode(chain, s_n, s_e, **k)),
        ("mean_field", lambda **k: es.decode(chain, s_n, s_e, **k)),
        ("bp", lambda **k: es.infer(chain, s_n, s_e, **k)),
    ]:
        with pytest.raises(ValueError, match="lengths"):
            call(method=method, lengths=lengths)
        with pytest.raises(ValueError, match="lengths"):
            call(method=method, mask=np.arange(5) < lengths[:, None])
    with pytest.raises(ValueError, match="not both"):
        es.infer(chain, s_n, s_e, lengths=lengths, mask=np.ones((2, 5), bool))


def test_lengths_and_mask_together_are_refused_by_the_torch_loss():
    torch = pytest.importorskip("torch")
    from expsoftmax.torch import exp_softmax_loss

    chain = es.Graph.chain(5)
    s_n, s_e = torch.zeros(2, 5, 3), torch.zeros(1, 3, 3)
    y = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="not both"):
        exp_softmax_loss(
            s_n, s_e, y, chain, lengths=torch.tensor([3, 5]), mask=torch.ones(2, 5, dtype=bool)
        )
    with pytest.raises(ValueError, match="lengths"):
        exp_softmax_loss(s_n, s_e, y, chain, method="gibbs", lengths=torch.tensor([3, 5]))


def test_sample_on_a_loopy_graph_defaults_to_gibbs_and_reaches_every_gibbs_option():
    # Small enough for the junction tree: exact. Beyond max_states: Gibbs.
    y = es.sample(GRID, GN, GE, 8, seed=3)
    assert np.array_equal(y, es.sample(GRID, GN, GE, 8, seed=3, method="exact"))
    y = es.sample(GRID, GN, GE, 8, seed=3, max_states=10)
    assert y.shape == (8, 12) and y.min() >= 0 and y.max() < 3
    assert np.array_equal(y, es.sample(GRID, GN, GE, 8, seed=3, method="gibbs"))

    def draw(n, **kw):
        return es.sample(GRID, GN, GE, n, seed=7, method="gibbs", burn_in=5, **kw)

    # num_chains: sample s comes from chain s % num_chains, and chain 0's stream does not
    # depend on how many chains run beside it.
    one, two = draw(6, num_chains=1), draw(12, num_chains=2)
    assert np.array_equal(two[0::2], one)
    assert not np.array_equal(two[1::2], one)
    # thin: keeping every second sweep keeps sweeps 2, 4, ... of the unthinned chain.
    thin1, thin2 = draw(8, num_chains=1), draw(4, num_chains=1, thin=2)
    assert np.array_equal(thin2, thin1[1::2])
    # burn_in: one more burn-in sweep drops the first kept sample.
    more = es.sample(GRID, GN, GE, 7, seed=7, method="gibbs", burn_in=6, num_chains=1)
    assert np.array_equal(more, thin1[1:])
    assert es.sample(GRID, GN, GE, 2, seed=1, method="gibbs", init="random").shape == (2, 12)
    with pytest.raises(errors.OptionError, match="gold"):
        es.sample(GRID, GN, GE, 2, method="gibbs", init="gold")


def test_methods_table_is_the_cores():
    assert set(es.METHODS) == {"exact", "bp", "trw", "mean_field", "gibbs"}
    assert es.METHODS["bp"] == {
        "max_iter": 100,
        "tol": 1e-6,
        "damping": 0.0,
        "schedule": "checkerboard",
    }
    assert es.METHODS["gibbs"]["num_samples"] == 1000
    assert es.METHODS["exact"] == {"max_states": 2**22}
