"""Exceptions raised by expsoftmax.

Every one is a ``ValueError`` (so ``except ValueError`` catches all bad input); the ones
about types and option names are also ``TypeError``, as Python itself raises for those.
"""

from __future__ import annotations

from ._core import InfeasibleError, NotForestError, ShapeError


class DTypeError(TypeError, ValueError):
    """An array has a dtype the library does not accept (scores: float32/float64;
    labels, edges, lengths: integers)."""


class OptionError(TypeError, ValueError):
    """An unknown inference method or option name, or an option value out of range."""


__all__ = ["DTypeError", "InfeasibleError", "NotForestError", "OptionError", "ShapeError"]
