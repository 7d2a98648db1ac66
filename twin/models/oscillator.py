"""Exact zero-order-hold step of the damped oscillator m x'' = F - c x' - k x, in closed form.

With p = c / 2m, w2 = k / m and A = [[0, 1], [-w2, -2p]], Cayley-Hamilton gives
exp(A t) = c0 I + s (A + p I), where, with q = p^2 - w2 (> 0: overdamped),
c0 = exp(-p t) cosh(sqrt(q) t) and s = exp(-p t) sinh(sqrt(q) t) / sqrt(q) (Moler & Van Loan,
"Nineteen dubious ways to compute the exponential of a matrix, twenty-five years later",
SIAM Review 45(1), 2003). The input column is A^-1 (Phi - I) B = [d / k, s / m] with
d = 1 - Phi11, so one step is x' = x + s v + d (F/k - x) and v' = (c0 - p s) v + s (F/m - w2 x).

Each piece is computed, where it is selected, without cancellation, overflow or 0/0: cos/sin
when underdamped; the real eigenvalues when overdamped, the slow one as w2 / fast and d from
expm1 of it; Taylor series in q t^2 near critical damping (through sqrt(q) the gradient would
lose its digits there); and a series for d when both eigenvalues times dt are small, where
1 - Phi11 cancels. The series are polynomials in dt whose coefficients depend on the parameters
only, evaluated as one matmul; branches are joined by `lerp`/`where`. Few, wide operations keep
the step cheap under `vmap` over a population of parameter vectors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from twin.models.base import DTYPE

NEAR_CRITICAL = 0.01  # |q| t^2 below which c0, s and (unless small) d avoid sqrt|q|
SMALL = 0.5  # (p + sqrt|q|) t, a bound on |eigenvalue| t, below which d comes from its series
TINY = 1e-300  # keeps sqrt|q| off zero; a branch that would divide by it is not selected
DEGREE = 16  # both series stop at t^16: truncation below 1e-17 (relative) in their regions
Q_TERMS = 6  # q^0..q^5: enough for |q| t^2 < NEAR_CRITICAL
W_TERMS = DEGREE // 2  # powers of w2 in the series of d


def _series_matrix() -> Tensor:
    """The constant (monomials, 3 * (DEGREE + 1)) matrix that maps the monomials
    [1, q^1..q^N, w2^1..w2^M, p^i w2^j for i = 1..DEGREE - 2, j = 1..M] (`_monomials`) to the
    t^0..t^DEGREE coefficients of

    cosh(sqrt(q) t) = sum q^n t^2n / (2n)!,  sinh(sqrt(q) t) / sqrt(q) = sum q^n t^(2n+1) / (2n+1)!,
    d = w2 t^2 sum_n h_n t^n / (n + 2)!,  h_n = sum_j C(n-j, j) (-2p)^(n-2j) (-w2)^j.

    d / (w2 t^2) is the divided difference of expm1(z) / z at the two eigenvalues times t, and
    h_n is the complete homogeneous polynomial of degree n in the eigenvalues (sum -2p, product
    w2), so the series holds in every regime and has no cancellation when they are small.
    """
    n_p, n_w = DEGREE - 2, W_TERMS
    matrix = torch.zeros(Q_TERMS + n_w * (n_p + 1), 3, DEGREE + 1, dtype=DTYPE)
    for n in range(Q_TERMS):  # row n: q^n
        matrix[n, 0, 2 * n] = 1 / math.factorial(2 * n)
        if 2 * n + 1 <= DEGREE:
            matrix[n, 1, 2 * n + 1] = 1 / math.factorial(2 * n + 1)
    for i in range(n_p + 1):  # row Q_TERMS + i n_w + j: p^i w2^(j+1), = w2 (-2p)^i (-w2)^j / sign
        for j in range(n_w):
            n = i + 2 * j
            if n <= DEGREE - 2:
                sign = (-2.0) ** i * (-1.0) ** j
                value = sign * math.comb(i + j, j) / math.factorial(n + 2)
                matrix[Q_TERMS + i * n_w + j, 2, n + 2] = value
    return matrix.reshape(matrix.shape[0], -1)


_SERIES = _series_matrix()
_ONE = torch.ones(1, dtype=DTYPE)


def _monomials(q: Tensor, p: Tensor, w2: Tensor) -> Tensor:
    """The monomials `_SERIES` expects, by cumulative products (pow is slow under vmap)."""
    powers = torch.cumprod(torch.stack([q, p, w2])[:, None].expand(3, DEGREE - 2), 1)  # (3, n)
    w_powers = powers[2, :W_TERMS]  # w2^1..w2^M
    return torch.cat(
        [_ONE, powers[0, : Q_TERMS - 1], w_powers, torch.outer(powers[1], w_powers).flatten()]
    )


def oscillator_step(
    m: Tensor, c: Tensor, k: Tensor, x: Tensor, v: Tensor, force: Tensor, dt: Tensor
) -> Tensor:
    """(B, 2) position and velocity after dt from (x, v) under a held force: m, c, k are ()
    and positive, the rest (B,). Exact up to rounding for any dt >= 0, smooth in m, c, k."""
    p = c / (2 * m)  # half the damping rate
    w2 = k / m  # natural frequency squared
    q = p * p - w2  # > 0 overdamped, < 0 underdamped
    root = q.abs().clamp_min(TINY).sqrt()
    fast = -(p + root)  # overdamped eigenvalues: fast, and slow = w2 / fast without cancellation
    slow = w2 / fast
    over = (q > 0).to(DTYPE)
    coefficients = (_monomials(q, p, w2) @ _SERIES).reshape(3, DEGREE + 1)

    t = dt  # (B,)
    t_powers = torch.cumprod(t[:, None].expand(-1, DEGREE), dim=1)  # (B, DEGREE): t^1..t^DEGREE
    series = coefficients @ torch.cat([torch.ones_like(t)[:, None], t_powers], dim=1).T  # (3, B)
    decay = torch.exp(-p * t)
    e_fast = torch.exp(fast * t)
    slow_m1 = torch.expm1(slow * t)  # exp(slow t) - 1, accurate when the slow mode barely moves
    e_slow = slow_m1 + 1
    wt = root * t
    c0 = torch.lerp(decay * torch.cos(wt), torch.lerp(e_slow, e_fast, 0.5), over)
    s = torch.lerp(decay * torch.sin(wt), 0.5 * (e_slow - e_fast), over) / root
    near = t < math.sqrt(NEAR_CRITICAL) / root  # |q| t^2 < NEAR_CRITICAL
    scaled = decay * series[:2]  # (2, B)
    c0 = torch.where(near, scaled[0], c0)
    s = torch.where(near, scaled[1], s)
    ps = p * s
    d = torch.where(near | (q < 0), 1 - c0 - ps, slow * s - slow_m1)  # 1 - Phi11
    d = torch.where(t < -SMALL / fast, series[2], d)  # (p + root) t < SMALL
    x_next = torch.addcmul(torch.addcmul(x, s, v), d, torch.addcmul(-x, force, 1 / k))
    v_next = torch.addcmul(s * torch.addcmul(force / m, x, -w2), c0 - ps, v)
    return torch.stack([x_next, v_next], dim=1)
