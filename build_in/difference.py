"""How far one model's output maps are from another's: the one routine behind the build's fidelity
check, ``isnet compare``'s drift and ``isnet npz-compare``.

Differences are computed in float64. Values that are NaN or infinite on either side are counted
(``nonfinite``) and left out of the other figures, so one broken value cannot hide the rest; with no
finite value at all, the figures are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OutputDifference:
    """Max and mean |difference|, cosine similarity, values compared and non-finite values."""

    name: str
    max_abs: float
    mean_abs: float
    cosine: float
    count: int
    nonfinite: int = 0


def _cosine(dot: float, norm_a: float, norm_b: float) -> float:
    if norm_a == 0.0 or norm_b == 0.0:
        return 1.0 if norm_a == norm_b else 0.0
    return dot / (np.sqrt(norm_a) * np.sqrt(norm_b))


class DifferenceAccumulator:
    """Adds up reference / candidate pairs; :meth:`add` returns the pair's figures, :meth:`total` all of them."""

    def __init__(self):
        self._max = self._abs = self._dot = self._aa = self._bb = 0.0
        self._count = self._nonfinite = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray, name: str = "") -> OutputDifference:
        """Compare two arrays of the same shape (``ValueError`` otherwise)."""
        a = np.asarray(reference, dtype=np.float64).ravel()
        b = np.asarray(candidate, dtype=np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {np.shape(reference)} vs {np.shape(candidate)}")
        finite = np.isfinite(a) & np.isfinite(b)
        nonfinite = int(finite.size - np.count_nonzero(finite))
        if nonfinite:
            a, b = a[finite], b[finite]
        diff = np.abs(a - b)
        dot, aa, bb = float(a @ b), float(a @ a), float(b @ b)
        total_abs = float(diff.sum())
        max_abs = float(diff.max(initial=0.0))
        self._max = max(self._max, max_abs)
        self._abs += total_abs
        self._dot, self._aa, self._bb = self._dot + dot, self._aa + aa, self._bb + bb
        self._count += int(diff.size)
        self._nonfinite += nonfinite
        return _difference(name, max_abs, total_abs, dot, aa, bb, int(diff.size), nonfinite)

    def total(self, name: str = "overall") -> OutputDifference:
        """The figures over every pair added so far."""
        return _difference(name, self._max, self._abs, self._dot, self._aa, self._bb, self._count, self._nonfinite)


def _difference(name, max_abs, total_abs, dot, aa, bb, count, nonfinite) -> OutputDifference:
    if count == 0 and nonfinite:
        return OutputDifference(name, float("nan"), float("nan"), float("nan"), 0, nonfinite)
    return OutputDifference(name, max_abs, total_abs / count if count else 0.0, _cosine(dot, aa, bb), count,
                            nonfinite)
