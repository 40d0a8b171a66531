"""Smoke test of an installed wheel or sdist in a fresh environment: the numpy API against
closed forms and brute force, the metadata, and the torch loss where torch is installed."""

import importlib.util
import itertools
import sys
from importlib import metadata

import numpy as np

import expsoftmax as es

checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"smoke: FAILED {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1


es.show_config()
check(es.__version__ == metadata.version("expsoftmax"), "one version source")
files = metadata.files("expsoftmax") or []
check(any(f.name.startswith("LICENSE") for f in files), "license file installed")

# Uniform scores: log Z = I log C exactly.
g = es.Graph.chain(5)
r = es.infer(g, np.zeros((5, 3)), np.zeros((3, 3)))
check(abs(float(r.log_z) - 5 * np.log(3)) < 1e-12, "log Z of uniform scores")

# A 2x2 grid (a cycle) against enumeration: exact (junction tree), BP, Gibbs samples.
rng = np.random.default_rng(0)
grid = es.Graph.grid(2, 2)
s_n, s_e = rng.normal(size=(4, 2)), rng.normal(size=(4, 2, 2)) * 0.3
scores = []
for y in itertools.product(range(2), repeat=4):
    s = sum(s_n[i, y[i]] for i in range(4))
    s += sum(s_e[k, y[a], y[b]] for k, (a, b) in enumerate(grid.edges))
    scores.append(s)
log_z = np.logaddexp.reduce(scores)
bp = es.infer(grid, s_n, s_e, method="bp")
check(abs(float(bp.log_z) - log_z) < 0.05, "BP log Z near enumeration")
check(es.sample(grid, s_n, s_e, 3, seed=1, method="gibbs").shape == (3, 4), "Gibbs samples")
exact = es.infer(grid, s_n, s_e)
check(exact.method == "exact" and abs(float(exact.log_z) - log_z) < 1e-12, "exact on a cycle")

# Chain loss and gradients: gradient = marginals - gold.
s_n = rng.normal(size=(4, 6, 3)).astype(np.float32)
y = rng.integers(0, 3, (4, 6))
loss, gn, ge = es.loss_and_grad(es.Graph.chain(6), s_n, np.zeros((1, 3, 3), np.float32), y)
m = es.infer(es.Graph.chain(6), s_n, np.zeros((1, 3, 3), np.float32)).node_marginals
check(np.allclose(gn, m - np.eye(3)[y], atol=1e-6), "gradient = marginals - gold")

if importlib.util.find_spec("torch") is not None:
    import torch

    from expsoftmax.torch import exp_softmax_loss

    t_n = torch.tensor(s_n, requires_grad=True)
    t_e = torch.zeros(1, 3, 3, requires_grad=True)
    exp_softmax_loss(t_n, t_e, torch.tensor(y), es.Graph.chain(6), reduction="sum").backward()
    check(np.allclose(t_n.grad.numpy(), gn, atol=1e-6), "torch loss gradient")

print(f"smoke: {checks} passed, 0 failed")
