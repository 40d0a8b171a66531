"""Inference methods, their options (keyword arguments) and validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import NotForestError, OptionError
from .graph import Graph


class ConvergenceWarning(RuntimeWarning):
    """A loopy method stopped at ``max_iter`` before its messages settled below ``tol``."""


_LOOPY = {"max_iter": 100, "tol": 1e-6, "damping": 0.0, "schedule": "checkerboard"}

#: Methods and the option names (with defaults) each accepts.
METHODS: dict[str, dict[str, Any]] = {
    "exact": {},
    "bp": dict(_LOOPY),
    "trw": dict(_LOOPY, edge_appearance=None),
    "mean_field": dict(_LOOPY),
    "gibbs": {
        "num_samples": 1000,
        "burn_in": 100,
        "thin": 1,
        "num_chains": 4,
        "seed": None,
        "init": "random",
        "ais_steps": 100,
        "ais_runs": 16,
    },
}
LOOPY_METHODS = ("bp", "trw", "mean_field", "gibbs")
SCHEDULES = ("checkerboard", "parallel")
# Other names users reach for: flooding is the parallel update; a colour-by-colour sweep is
# the checkerboard on grids (and its greedy-colouring generalisation elsewhere).
_SCHEDULE_ALIASES = {"flooding": "parallel", "colour": "checkerboard", "color": "checkerboard",
                     "sequential": "checkerboard"}  # fmt: skip

# Which methods each entry point offers.
_SUPPORTED = {
    "infer": ("exact", "bp", "trw", "mean_field", "gibbs"),
    "loss_and_grad": ("exact", "bp", "trw", "mean_field", "gibbs"),
    "decode": ("exact", "bp", "trw", "mean_field", "gibbs"),
    "sample": ("exact", "gibbs"),
}


@dataclass(frozen=True)
class Resolved:
    method: str
    options: dict[str, Any]

    @property
    def loopy(self) -> bool:
        return self.method != "exact"

    def core_args(self, graph: Graph) -> Optional[tuple]:
        """The options tuple the extension takes (None for exact inference)."""
        if not self.loopy:
            return None
        if self.method == "gibbs":
            o = self.options
            seed = o["seed"]
            if seed is None:
                seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
            return (
                o["num_samples"],
                o["burn_in"],
                o["thin"],
                o["num_chains"],
                int(seed) % (1 << 64),
                o["init"] == "gold",
                o["ais_steps"],
                o["ais_runs"],
            )
        o = self.options
        rho = None
        if self.method == "trw":
            rho = o["edge_appearance"]
            if rho is None:
                rho = graph.default_edge_appearance()
            rho = np.ascontiguousarray(
                np.broadcast_to(np.asarray(rho, dtype=np.float64), (graph.num_edges,))
            )
        return (self.method, o["max_iter"], o["tol"], o["damping"], o["schedule"], rho)


def resolve(graph: Graph, method: str, options: dict[str, Any], entry: str) -> Resolved:
    """Checks ``method`` and ``options`` for ``entry``; fills in defaults."""
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be an expsoftmax.Graph, got {type(graph).__name__}")
    if not isinstance(method, str):
        raise OptionError(f"method must be a string, got {type(method).__name__}")
    if method == "auto":
        method = "exact" if graph.is_forest else "bp"
    offered = _SUPPORTED[entry]
    if method not in METHODS or method not in offered:
        known = ", ".join(["auto", *offered])
        raise OptionError(f"unknown method {method!r} for {entry}; known methods: {known}")
    allowed = METHODS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise OptionError(
            f"unknown option(s) {', '.join(unknown)} for method {method!r} (accepted: {names})"
        )
    if method == "exact" and not graph.is_forest:
        raise NotForestError(
            "method='exact' needs a forest, but the graph is not a forest (it has a cycle); "
            "use a loopy method: " + ", ".join(f"method={m!r}" for m in LOOPY_METHODS)
        )
    opts = {**allowed, **options}
    if method == "gibbs":
        _check_gibbs(opts, entry)
    elif method != "exact":
        _check_loopy(opts)
    return Resolved(method, opts)


def _check_loopy(o: dict[str, Any]) -> None:
    mi = o["max_iter"]
    if isinstance(mi, bool) or not isinstance(mi, (int, np.integer)) or mi < 0:
        raise OptionError(f"max_iter must be a non-negative integer, got {mi!r}")
    o["max_iter"] = int(mi)
    for name, lo, hi in (("tol", 0.0, np.inf), ("damping", 0.0, 1.0)):
        v = o[name]
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise OptionError(f"{name} must be a number, got {v!r}") from None
        if not (lo <= v < hi) or np.isnan(v):
            raise OptionError(f"{name} must lie in [{lo}, {hi}), got {v}")
        o[name] = v
    o["schedule"] = _SCHEDULE_ALIASES.get(o["schedule"], o["schedule"])
    if o["schedule"] not in SCHEDULES:
        raise OptionError(f"schedule must be one of {SCHEDULES}, got {o['schedule']!r}")
    rho = o.get("edge_appearance")
    if rho is not None:
        r = np.asarray(rho, dtype=np.float64)
        if np.any(~(r > 0) | (r > 1)):
            raise OptionError("edge_appearance must lie in (0, 1]")


def _check_gibbs(o: dict[str, Any], entry: str) -> None:
    for name, least in (("num_samples", 1), ("burn_in", 0), ("thin", 1), ("num_chains", 1),
                        ("ais_steps", 0), ("ais_runs", 1)):  # fmt: skip
        v = o[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise OptionError(f"{name} must be an integer >= {least}, got {v!r}")
        o[name] = int(v)
    seed = o["seed"]
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise OptionError(f"seed must be a non-negative integer or None, got {seed!r}")
    if o["init"] not in ("random", "gold"):
        raise OptionError(f"init must be 'random' or 'gold', got {o['init']!r}")
    if o["init"] == "gold" and entry != "loss_and_grad":
        raise OptionError("init='gold' starts chains at the gold labels: loss_and_grad only")
