"""BOCPD for many streams at once: `BOCPD.update` over each detector's values in turn, the
detectors' run-length posteriors stacked as rows of one array.

A detector's numbers are those its own `update` gives, bit for bit: every operation on its
posterior is elementwise along its own row, a sum over run lengths is `np.logaddexp.reduce`
along that row (in the same order; the columns past a young detector's runs hold a log
probability of -inf, which leaves the sum as it is), and the scalars `update` takes from the
`math` module (the hazard's logs, log Gamma, the declared change's probability) still come from
it, one detector at a time.
"""

from __future__ import annotations

import math

import numpy as np

from twin.detectors import BOCPD, _run_constants

BLOCK = 128  # detectors per array: a (4, BLOCK, values + max_run) posterior stays in cache


def bocpd_together(
    detectors: list[BOCPD], values: list[list[float]]
) -> list[list[tuple[int, float, int]]]:
    """`detector.update(x)` for each of its `values` in order, for all detectors at once. Returns
    per detector its changes: (index of the value that declared it, the statistic `update`
    returned, the detector's `run_length` then)."""
    changes: list[list[tuple[int, float, int]]] = [[] for _ in detectors]
    groups: dict[tuple, list[int]] = {}
    for i, (det, vals) in enumerate(zip(detectors, values, strict=True)):
        if vals:
            key = (det.lam, det.min_segment, det.max_run, det.clip, det.prior)
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: -len(values[i]))  # stable: the live rows are a prefix
        for at in range(0, len(members), BLOCK):
            block = members[at : at + BLOCK]
            found = _run([detectors[i] for i in block], [values[i] for i in block])
            for i, got in zip(block, found, strict=True):
                changes[i] = got
    return changes


def _run(dets: list[BOCPD], values: list[list[float]]) -> list[list[tuple[int, float, int]]]:
    """The updates of detectors with the same settings, sorted by number of values (most first)."""
    first = dets[0]
    mu0, kappa0, alpha0, beta0 = first.prior
    lam, min_segment, W, clip = first.lam, first.min_segment, first.max_run, first.clip
    D, T = len(dets), len(values[0])
    counts = np.array([len(v) for v in values])
    # Row r's run length k sits in column off + k, where off starts at T and moves left by one
    # per update, as a detector's own buffer grows leftwards; its first T columns are room.
    buf = np.empty((4, D, T + W + 1))
    buf[0], buf[1], buf[2], buf[3] = -np.inf, 0.0, mu0, beta0
    size = np.array([det._size for det in dets])
    for r, det in enumerate(dets):
        buf[:, r, T : T + det._size] = det._buf[:, det._lo : det._lo + det._size]
    x = np.zeros((D, T))
    for r, vals in enumerate(values):
        x[r, : len(vals)] = [min(max(float(v), -clip), clip) for v in vals]
    const = np.repeat(_run_constants(first.prior, W)[:, None, :], D, axis=1)  # (8, D, W)
    t = np.array([det.t for det in dets])
    start = np.array([det.start for det in dets])
    run_length = np.array([det.run_length for det in dets])
    declared = np.array([det.changes for det in dets])
    found: list[list[tuple[int, float, int]]] = [[] for _ in dets]
    off = T
    for k in range(T):
        A = int((counts > k).sum())
        log_r, n, mu, beta = buf[:, :A, off : off + W]  # (A, W) each
        full = np.flatnonzero(size[:A] == W)
        if full.size:  # the last run holds merged ones, a fractional number of values
            const[:, full, W - 1] = _constants(n[full, W - 1], kappa0, alpha0)
        kappa, kp1, ak, pi_nu, nu, half_nu1, two_kp1, gamma_ratio = const[:, :A]
        xk = x[:A, k : k + 1]
        scale2 = beta * kp1 / ak
        d2 = np.square(xk - mu)
        log_pred = gamma_ratio - 0.5 * np.log(pi_nu * scale2)
        log_pred -= half_nu1 * np.log1p(d2 / (nu * scale2))
        log_r += log_pred
        hazard = np.minimum(1.0 + declared[:A], 1.0 + t[:A] / lam) / (lam + t[:A])
        hazard_list = hazard.tolist()
        change = np.logaddexp.reduce(log_r, axis=1) + [math.log(h) for h in hazard_list]
        log_r += np.array([math.log1p(-h) for h in hazard_list])[:, None]
        beta += kappa * d2 / two_kp1
        mu *= kappa
        mu += xk
        mu /= kp1
        n += 1
        off -= 1
        buf[0, :A, off] = change
        buf[1, :A, off], buf[2, :A, off], buf[3, :A, off] = 0.0, mu0, beta0
        size[:A] += 1
        merging = np.flatnonzero(size[:A] > W)
        if merging.size:  # the two longest runs share the last slot
            last = off + W - 1
            tail = buf[0, merging, last : last + 2]  # (M, 2)
            total = np.logaddexp.reduce(tail, axis=1)
            w = np.exp(tail - total[:, None])
            for row in (1, 2, 3):
                pair = buf[row, merging, last : last + 2]
                buf[row, merging, last] = w[:, 0] * pair[:, 0] + w[:, 1] * pair[:, 1]
            buf[0, merging, last] = total
            size[merging] = W
        log_r = buf[0, :A, off : off + W]
        log_r -= np.logaddexp.reduce(log_r, axis=1)[:, None]
        t[:A] += 1
        run = np.argmax(log_r, axis=1)
        new = (run != W - 1) & (run >= min_segment) & (t[:A] - run > start[:A] + min_segment)
        for r in np.flatnonzero(new).tolist():
            length = int(run[r])
            start[r], run_length[r] = t[r] - length, length
            declared[r] += 1
            found[r].append((k, float(math.exp(log_r[r, length])), length))
    for r, det in enumerate(dets):
        s, lo = int(size[r]), T - int(counts[r])
        det._lo, det._size = det._buf.shape[1] - s, s
        det._buf[:, det._lo :] = buf[:, r, lo : lo + s]
        det.t, det.start = int(t[r]), int(start[r])
        det.run_length, det.changes = int(run_length[r]), int(declared[r])
    return found


def _constants(n: np.ndarray, kappa0: float, alpha0: float) -> np.ndarray:
    """(8, M) `twin.detectors._set_run_constants` of runs of n (M,) values, in its operations."""
    kappa, alpha = kappa0 + n, alpha0 + n / 2
    nu = 2 * alpha
    ratio = [math.lgamma(a + 0.5) - math.lgamma(a) for a in alpha.tolist()]
    return np.stack(
        [kappa, kappa + 1, alpha * kappa, np.pi * nu, nu, (nu + 1) / 2, 2 * (kappa + 1), ratio]
    )
