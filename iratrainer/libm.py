"""Elementary functions from the C library, element by element, for the numbers the
simulation is built from.

NumPy evaluates ``sin``, ``cos``, ``tan``, ``exp``, ``log``... of float64 arrays with its own
SIMD code on processors with AVX-512, and with the C library elsewhere. The two can differ in
the last bit (numpy/numpy issue 23523). A last-bit difference in the atlas's arch, or in a
device's rest shape, changes nothing a user could see at once, but the rods' trajectories over
minutes of navigation are chaotic: the same seed then reached the M1 on one machine and gave
up on another. The functions here call Python's :mod:`math` (the C library) for every element,
as the compiled kernels do, so the same inputs give the same bits on every x86-64 machine
with the same C library.

They are meant for the small arrays the models are built from (the atlas's centrelines, a
device's rest curvature, the C-arm's frame), not for images: for a megapixel image NumPy's
own functions are kept (a last-bit difference in a rendered pixel does not feed back into the
simulation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import overload

import numpy as np

__all__ = ["sin", "cos", "tan", "exp", "log", "arccos", "power"]


@overload
def _apply(fn: Callable[[float], float], a: float) -> float: ...


@overload
def _apply(fn: Callable[[float], float], a: np.ndarray) -> np.ndarray: ...


def _apply(fn: Callable[[float], float], a: float | np.ndarray) -> float | np.ndarray:
    """``fn`` of every element of ``a`` (a float for a scalar, an array of ``a``'s shape else)."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 0:
        return fn(float(arr))
    flat = arr.ravel()
    return np.fromiter((fn(v) for v in flat.tolist()), np.float64, flat.size).reshape(arr.shape)


def sin(a: float | np.ndarray) -> float | np.ndarray:
    """Sine of ``a`` (rad), element by element, from the C library."""
    return _apply(math.sin, a)


def cos(a: float | np.ndarray) -> float | np.ndarray:
    """Cosine of ``a`` (rad), element by element, from the C library."""
    return _apply(math.cos, a)


def tan(a: float | np.ndarray) -> float | np.ndarray:
    """Tangent of ``a`` (rad), element by element, from the C library."""
    return _apply(math.tan, a)


def exp(a: float | np.ndarray) -> float | np.ndarray:
    """``e`` to the power ``a``, element by element, from the C library."""
    return _apply(math.exp, a)


def log(a: float | np.ndarray) -> float | np.ndarray:
    """Natural logarithm of ``a`` (> 0), element by element, from the C library."""
    return _apply(math.log, a)


def arccos(a: float | np.ndarray) -> float | np.ndarray:
    """Arc cosine of ``a`` (in [-1, 1]), rad, element by element, from the C library."""
    return _apply(math.acos, a)


def power(a: float | np.ndarray, p: float) -> float | np.ndarray:
    """``a`` to the power ``p`` (a float), element by element, from the C library (NumPy's
    ``a ** p`` for an array goes through its AVX-512 code too)."""
    return _apply(lambda v: math.pow(v, p), a)
