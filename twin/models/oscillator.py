"""Exact zero-order-hold step of the damped oscillator m x'' = F - c x' - k x, in closed form.

With p = c / 2m, w2 = k / m and A = [[0, 1], [-w2, -2p]], Cayley-Hamilton gives
exp(A t) = c0 I + s (A + p I), where, with q = p^2 - w2 (> 0: overdamped),
c0 = exp(-p t) cosh(sqrt(q) t) and s = exp(-p t) sinh(sqrt(q) t) / sqrt(q) (Moler & Van Loan,
"Nineteen dubious ways to compute the exponential of a matrix, twenty-five years later",
SIAM Review 45(1), 2003). The input column is A^-1 (Phi - I) B = [d / k, s / m] with
d = 1 - Phi11 = 1 - c0 - p s, so one step is x' = x + s v + d (F/k - x) and, as
Phi22 = c0 - p s = 1 - d - 2 p s, v' = v - d v + s (F/m - w2 x - 2 p v).

Each piece is computed, where it is selected, without cancellation, overflow or 0/0. When both
eigenvalues times dt are small, s and d (where 1 - Phi11 cancels) come from their Taylor series
in dt: polynomials with no sqrt(q), exact at critical damping, and c0 is not needed. Otherwise:
cos/sin when underdamped; the real eigenvalues when overdamped, the slow one as w2 / fast and d
from expm1 of it; and Taylor series in q t^2 near critical damping (through sqrt(q) the gradient
would lose its digits there). The series are polynomials in dt whose coefficients depend on the
parameters only, evaluated by Horner's rule; branches are joined by `lerp`/`where`. Every
operation is elementwise, so a twin's values are the same stacked with other twins' or alone.

The parameters may carry a population dimension that broadcasts against the rows. Outside vmap,
a branch that no element selects is skipped, decided from extremes of dt and of the parameters:
with the typical short steps only the small-step series is computed, in few wide operations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch._C._functorch import is_batchedtensor

from twin.models.base import DTYPE

NEAR_CRITICAL = 0.01  # |q| t^2 below which c0, s and (unless small) d avoid sqrt|q|
NEAR_RT = math.sqrt(NEAR_CRITICAL)  # the same bound on sqrt|q| t
SMALL = 0.5  # (p + sqrt|q|) t, a bound on |eigenvalue| t, below which s and d are series
TINY = 1e-300  # keeps sqrt|q| off zero; a branch that would divide by it is not selected
DEGREE = 16  # the series stop at t^16: truncation below 1e-17 (relative) in their regions
Q_TERMS = 6  # q^0..q^5: enough for |q| t^2 < NEAR_CRITICAL
W_TERMS = DEGREE // 2  # the highest power of w2 in the small-step series


def _small_series_matrix() -> Tensor:
    """The constant (monomials, 2 * (DEGREE + 1)) matrix that maps the monomials p^i w2^j,
    i = 0..DEGREE - 1 and j = 0..W_TERMS (row i (W_TERMS + 1) + j), to the t^0..t^DEGREE
    coefficients of

    s = sum_n h_(n-1) t^n / n!,  d = w2 t^2 sum_n h_n t^n / (n + 2)!,
    h_n = sum_j C(n-j, j) (-2p)^(n-2j) (-w2)^j.

    h_n is the complete homogeneous polynomial of degree n in the eigenvalues (sum -2p, product
    w2): s is the divided difference of exp(z t) at the two eigenvalues and d / (w2 t^2) that of
    expm1(z) / z, so the series hold in every regime and have no cancellation when they are
    small.
    """
    matrix = torch.zeros(DEGREE, W_TERMS + 1, 2, DEGREE + 1, dtype=DTYPE)
    for n in range(DEGREE):  # h_n, with the monomials p^(n-2j) w2^j (-2)^(n-2j) (-1)^j C(n-j, j)
        for j in range(n // 2 + 1):
            h = (-2.0) ** (n - 2 * j) * (-1.0) ** j * math.comb(n - j, j)
            matrix[n - 2 * j, j, 0, n + 1] = h / math.factorial(n + 1)  # s: t^(n+1)
            if n + 2 <= DEGREE:
                matrix[n - 2 * j, j + 1, 1, n + 2] = h / math.factorial(n + 2)  # d: t^(n+2)
    return matrix.reshape(DEGREE * (W_TERMS + 1), 2 * (DEGREE + 1))


def _near_series_matrix() -> Tensor:
    """The constant (Q_TERMS, 2 * (DEGREE + 1)) matrix that maps q^0..q^(Q_TERMS - 1) to the
    t^0..t^DEGREE coefficients of cosh(sqrt(q) t) = sum q^n t^2n / (2n)! and
    sinh(sqrt(q) t) / sqrt(q) = sum q^n t^(2n+1) / (2n+1)!."""
    matrix = torch.zeros(Q_TERMS, 2, DEGREE + 1, dtype=DTYPE)
    for n in range(Q_TERMS):
        matrix[n, 0, 2 * n] = 1 / math.factorial(2 * n)
        matrix[n, 1, 2 * n + 1] = 1 / math.factorial(2 * n + 1)
    return matrix.reshape(Q_TERMS, 2 * (DEGREE + 1))


def _by_coefficient(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """A (monomials, coefficients) matrix as, per coefficient, the indices of the monomials it
    takes and their weights, (coefficients, width) each; short rows point at monomial 0 (the
    constant 1) with weight 0. A coefficient is then a product and a sum along its own row, for
    each parameter set alone: a matmul's kernel, chosen by the batch's shape, would make a
    twin's numbers depend on the twins stacked with it (and most of the matrix is zeros)."""
    columns = [torch.nonzero(matrix[:, c]).flatten() for c in range(matrix.shape[1])]
    width = max(1, max(len(rows) for rows in columns))
    index = torch.zeros(matrix.shape[1], width, dtype=torch.int64)
    weight = torch.zeros(matrix.shape[1], width, dtype=DTYPE)
    for c, rows in enumerate(columns):
        index[c, : len(rows)] = rows
        weight[c, : len(rows)] = matrix[rows, c]
    return index, weight


_SMALL_SERIES = _by_coefficient(_small_series_matrix())
_NEAR_SERIES = _by_coefficient(_near_series_matrix())
_LAST_TIMES: tuple = ()  # (t, its version, _time_terms(t)) of the last call


def _series(monomials: Tensor, terms: tuple[Tensor, Tensor], t: Tensor) -> tuple[Tensor, ...]:
    """Two (..., B) series in t whose t^0..t^DEGREE coefficients are the monomials' weighted
    sums (`_by_coefficient`), by Horner's rule at the rows' t (..., B)."""
    index, weight = terms
    coefficients = (monomials[..., index] * weight).sum(dim=-1).unflatten(-1, (2, DEGREE + 1))
    t = t.unsqueeze(-2)  # against both series
    acc = coefficients[..., DEGREE:]
    for n in range(DEGREE - 1, -1, -1):
        acc = torch.addcmul(coefficients[..., n : n + 1], acc, t)
    return acc.unbind(-2)


def _time_terms(t: Tensor) -> tuple[Tensor, tuple[float, float] | None]:
    """-t and (min t, max t) of the rows' intervals t (..., B); the extremes are None under
    vmap and for no rows. The last answer is reused while the same, unmodified `t` comes back,
    as it does for every population of one update."""
    global _LAST_TIMES
    last = _LAST_TIMES
    if last and last[0] is t and last[1] == t._version:
        return last[2]
    batched = is_batchedtensor(t)
    extremes = None
    if t.numel() and not batched:
        extremes = tuple(torch.stack(torch.aminmax(t)).tolist())
    terms = (-t, extremes)
    if not (batched or t.requires_grad):
        _LAST_TIMES = (t, t._version, terms)
    return terms


def _branches(times, root: Tensor, rate: Tensor, q: Tensor) -> tuple[bool, ...]:
    """Whether some and whether every element is near (root t < NEAR_RT), small (rate t <
    SMALL) and overdamped (q > 0), from the extremes of t (`times`) and of the (..., 1)
    parameters alone; floating-point products are monotonic, so these agree with the masks.
    Unsure (some but not every) under vmap, for an empty batch and where NaN leaves it open."""
    if times is None or not root.numel() or is_batchedtensor(root):
        return (True, False) * 3
    t_min, t_max = times
    low, high = torch.aminmax(torch.cat([root, rate, q], dim=-1).reshape(-1, 3), dim=0)
    root_min, rate_min, q_min, root_max, rate_max, q_max = torch.cat([low, high]).tolist()
    return (
        not t_min * root_min >= NEAR_RT,
        t_max * root_max < NEAR_RT,
        not t_min * rate_min >= SMALL,
        t_max * rate_max < SMALL,
        not q_max <= 0,
        q_min > 0,
    )


def _all_small(times, p: Tensor, w2: Tensor) -> bool:
    """Whether every element is small (rate t < SMALL), from the bound rate = p + sqrt|q| <=
    p + max(p, sqrt(w2)) and the longest interval: a check in a few operations that settles
    the typical case before the eigenvalues' regimes are sorted out. False where unsure."""
    if times is None or not p.numel() or is_batchedtensor(p):
        return False
    p, w2 = p.detach(), w2.detach()  # a decision, not part of the result
    bound = float((p + torch.maximum(p, w2.sqrt())).max())
    return times[1] * bound < SMALL  # False for NaN


def _select(mask: Tensor | None, value: Tensor, other: Tensor | None) -> Tensor:
    """`value` where `mask`, else `other`; `other` is None where nothing else was computed."""
    return value if other is None else torch.where(mask, value, other)


def oscillator_step(
    m: Tensor, c: Tensor, k: Tensor, x: Tensor, v: Tensor, force: Tensor, dt: Tensor
) -> Tensor:
    """(..., B, 2) position and velocity after dt from (x, v) under a held force.

    m, c, k are positive and shaped (...,): () for one parameter set, (S,) for a population
    that each steps every row; x, v, force, dt are (B,). Exact up to rounding for any dt >= 0,
    smooth in m, c, k."""
    m, c, k = m[..., None], c[..., None], k[..., None]  # (..., 1) against the rows
    neg_t, times = _time_terms(dt)
    p = c / (2 * m)  # half the damping rate
    w2 = k / m  # natural frequency squared
    if _all_small(times, p, w2):
        s, d = _small_series(p, w2, dt)
    else:
        s, d = _large_steps(p, w2, dt, neg_t, times)
    # x' = x + s v + d (F/k - x);  Phi22 = c0 - p s = 1 - d - 2 p s: v' = v - d v + s drive
    drive = torch.addcmul(torch.addcmul(force / m, w2, x, value=-1), p, v, value=-2)
    x_next = torch.addcmul(torch.addcmul(x, s, v), d, force / k - x)
    v_next = torch.addcmul(torch.addcmul(v, s, drive), d, v, value=-1)
    return torch.stack([x_next, v_next]).movedim(0, -1)  # output-major memory


def _small_series(p: Tensor, w2: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """s and d (..., B) from their series in t, for steps where every |eigenvalue| t < SMALL."""
    grid = torch.linalg.vander(p, N=DEGREE).mT * torch.linalg.vander(w2, N=W_TERMS + 1)
    return _series(grid.flatten(-2), _SMALL_SERIES, t)  # monomials p^i w2^j


def _near_series(q: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """cosh(sqrt(q) t) and sinh(sqrt(q) t) / sqrt(q) (..., B) from their series in q t^2: no
    sqrt(q), so exact and smooth through q = 0."""
    return _series(torch.linalg.vander(q, N=Q_TERMS)[..., 0, :], _NEAR_SERIES, t)


def _large_steps(p, w2, dt, neg_t, times) -> tuple[Tensor, Tensor]:
    """s and d (..., B) in every regime, each piece where it is accurate."""
    q = p * p - w2  # > 0 overdamped, < 0 underdamped
    root = q.abs().clamp_min(TINY).sqrt()
    rate = p + root  # -rate is the fast overdamped eigenvalue; w2 / -rate, the slow one
    some_near, all_near, some_small, all_small, some_over, all_over = _branches(
        times, root, rate, q
    )
    s = d = None
    if not all_small:
        decay = torch.exp(p * neg_t)
        c0 = near = wt = None
        if not all_near and not all_over:
            wt = root * dt
            c0, s = decay * torch.cos(wt), decay * torch.sin(wt) * (1 / root)
        if not all_near and some_over:
            over = q > 0
            slow = -w2 / rate
            e_fast = torch.exp(rate * neg_t)
            slow_m1 = torch.expm1(slow * dt)  # exp(slow t) - 1, accurate when slow barely moves
            e_slow = slow_m1 + 1
            c0 = _select(over, torch.lerp(e_slow, e_fast, 0.5), c0)
            s = _select(over, 0.5 * (e_slow - e_fast) / root, s)
        if some_near:
            near = None if all_near else (root * dt if wt is None else wt) < NEAR_RT
            near_c0, near_s = _near_series(q, dt)
            c0, s = _select(near, decay * near_c0, c0), _select(near, decay * near_s, s)
        d = 1 - c0 - p * s  # 1 - Phi11, exact when near or underdamped
        if not all_near and some_over:
            exact = q < 0 if near is None else near | (q < 0)
            d = torch.where(exact, d, slow * s - slow_m1)
    if some_small:
        small_s, small_d = _small_series(p, w2, dt)
        small = None if all_small else rate * dt < SMALL
        s, d = _select(small, small_s, s), _select(small, small_d, d)
    return s, d
