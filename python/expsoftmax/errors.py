"""Exceptions raised by expsoftmax (the core raises these same classes).

Every one is a ``ValueError`` (so ``except ValueError`` catches all bad input); the ones
about types and option names are also ``TypeError``, as Python itself raises for those.
Besides these, a request whose output or working memory cannot be allocated raises
``MemoryError`` naming the array and its size, and Ctrl-C during a long call raises
``KeyboardInterrupt`` promptly.
"""

from __future__ import annotations


class ShapeError(ValueError):
    """Array shapes that do not fit together (or do not fit the graph)."""


class DTypeError(TypeError, ValueError):
    """An array has a dtype the library does not accept (scores: float32/float64;
    labels, edges, lengths: integers)."""


class OptionError(TypeError, ValueError):
    """An unknown inference method or option name, or an option value out of range."""


class NotForestError(ValueError):
    """An exact method was asked for on a graph with a cycle."""


class InfeasibleError(ValueError):
    """The scores forbid every labelling (all have score -inf), so Z = 0."""


__all__ = ["DTypeError", "InfeasibleError", "NotForestError", "OptionError", "ShapeError"]
