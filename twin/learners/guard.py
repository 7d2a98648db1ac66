"""Numeric guards: which observed output values lie too far outside their channel's robust range
to be learned from, and a Cholesky factorization that survives a matrix on the edge of
positive definiteness.

A value is an outlier when it is not finite, when its magnitude exceeds MAX_MAGNITUDE (no
channel in any unit measures that much, and the loss could not square it), or when it lies more
than FAR channel scales from the channel's median over the learner's window, the channel scale
being the larger of the window's robust spread (1.4826 times the median absolute deviation) and
the median's own magnitude. The median and the MAD break down only when half the window is
outlying (Hampel 1974), so a burst of garbage shorter than half the window is never learned,
while a real change of level, however large, is accepted once it fills half the window.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

MAX_MAGNITUDE = 1e100
# Channel scales beyond the median that mark a value as an outlier: a sensor reading 20 (units)
# is refused from about 20,000 on, one spread around 0 with scale 1 from about 1,000 on. Values
# this far out are faults, not the plant; the Huber loss handles ordinary spikes.
FAR = 1e3
MAD_TO_STD = 1.4826
TINY = 1e-12
JITTERS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)  # relative to the mean diagonal, tried in turn


def outlying(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(N, C) -> (N, C) bool: which values are outliers of their column. The robust range is
    taken from `reference` (M, C) when given (e.g. the window a new chunk joins), else from
    `values` themselves. In numpy: on arrays this small it is several times faster than torch."""
    ref = values if reference is None else reference
    with np.errstate(invalid="ignore"):
        usable = np.abs(ref) <= MAX_MAGNITUDE  # False for NaN and inf
        if usable.all() and ref.shape[0]:
            median = _median(ref)
            mad = _median(np.abs(ref - median))
        else:
            x = np.where(usable, ref, np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a column of nothing usable
                median = np.nanmedian(x, axis=0)  # (C,), NaN where a column has nothing usable
                mad = np.nanmedian(np.abs(x - median), axis=0)
        scale = np.maximum(np.maximum(MAD_TO_STD * mad, np.abs(median)), TINY)
        # NaN compares False: a NaN value or a column without a median is not "within"
        return ~((np.abs(values) <= MAX_MAGNITUDE) & (np.abs(values - median) <= FAR * scale))


def any_outlying(values: np.ndarray) -> np.ndarray:
    """(K, N, C) -> (K,) bool: whether `outlying(values[k])` has any outlier, for all k at once
    (the same medians: a selection's value does not depend on the other rows)."""
    with np.errstate(invalid="ignore"):
        usable = np.abs(values) <= MAX_MAGNITUDE  # False for NaN and inf: outliers
        x = values if usable.all() else np.where(usable, values, 0.0)
        median = _median(x, axis=1)[:, None]  # (K, 1, C)
        mad = _median(np.abs(x - median), axis=1)[:, None]
        scale = np.maximum(np.maximum(MAD_TO_STD * mad, np.abs(median)), TINY)
        within = usable & (np.abs(values - median) <= FAR * scale)
    return ~within.all(axis=(1, 2))


def _median(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """(M, C) finite values, M >= 1 -> (C,) the median of each column (of the rows along
    `axis` of any array): np.median's result (the middle value, or the mean of the two middle
    values), without its checks and overhead, which cost ten times the selection on a window
    of a few hundred values."""
    half = x.shape[axis] // 2
    if x.shape[axis] % 2:
        return np.partition(x, half, axis=axis).take(half, axis=axis)
    part = np.partition(x, (half - 1, half), axis=axis)
    return (part.take(half - 1, axis=axis) + part.take(half, axis=axis)) / 2


def cholesky(matrix: Tensor) -> Tensor:
    """Lower Cholesky factor of a batch (..., n, n) of symmetric matrices that should be positive
    definite; where rounding makes one fail, jitter (a multiple of its mean diagonal, growing
    from 1e-10 to 1e-2) is added to that one. Raises torch.linalg.LinAlgError if even that fails
    (a matrix with non-finite entries)."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    if not bool(info.any()):
        return chol
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype)
    size = matrix.diagonal(dim1=-2, dim2=-1).abs().mean(dim=-1).clamp(min=TINY)  # (...,)
    for jitter in JITTERS:
        failed = (info > 0)[..., None, None]
        bumped = matrix + (jitter * size)[..., None, None] * eye
        retry, info_retry = torch.linalg.cholesky_ex(bumped)
        chol = torch.where(failed, retry, chol)
        info = torch.where(info > 0, info_retry, info)
        if not bool(info.any()):
            return chol
    raise torch.linalg.LinAlgError("matrix is not positive definite, even with jitter")
