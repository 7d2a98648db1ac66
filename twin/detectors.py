"""Change detectors for streams of standardized residuals: Page-Hinkley, ADWIN and BOCPD.

Page-Hinkley and ADWIN are O(1) amortized per value, BOCPD O(max_run); all round-trip their
state through JSON-friendly dicts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class PageHinkley:
    """Two-sided Page-Hinkley test for a change in the mean of a stream (Page 1954, "Continuous
    inspection schemes"; Hinkley 1971), meant for standardized input.

    m_t = sum_i (x_i - mean_i - delta) and its mirror with + delta; the test fires when m_t rises
    more than `threshold` above its running minimum, or the mirror falls that far below its
    running maximum, and then starts afresh. The value after that minimum (maximum) is the
    estimated start of the change, as in CUSUM; `run_length` counts the values since, up to the
    one that fired.
    """

    def __init__(self, delta: float = 0.25, threshold: float = 25.0, min_instances: int = 30):
        self.delta, self.threshold, self.min_instances = (
            float(delta),
            float(threshold),
            min_instances,
        )
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.sum_up = self.min_up = 0.0
        self.sum_down = self.max_down = 0.0
        self.n_min_up = self.n_max_down = 0  # n at the running extremes
        self.run_length = 0
        self.changes = 0  # changes declared

    def update(self, x: float) -> float | None:
        """Add one value; return the test statistic if a change is detected (then reset)."""
        # the same operations in the same order as on the attributes, on local names
        n = self.n + 1
        mean = self.mean + (x - self.mean) / n
        sum_up = self.sum_up + (x - mean - self.delta)
        sum_down = self.sum_down + (x - mean + self.delta)
        self.n, self.mean, self.sum_up, self.sum_down = n, mean, sum_up, sum_down
        if sum_up < self.min_up:
            self.min_up, self.n_min_up = sum_up, n
        if sum_down > self.max_down:
            self.max_down, self.n_max_down = sum_down, n
        up, down = sum_up - self.min_up, self.max_down - sum_down
        stat = max(up, down)
        if n >= self.min_instances and stat > self.threshold:
            run = n - (self.n_min_up if up >= down else self.n_max_down)
            self.reset()
            self.run_length = run
            return float(stat)
        return None

    def state_dict(self) -> dict[str, Any]:
        keys = ("n", "mean", "sum_up", "min_up", "sum_down", "max_down")
        return {k: getattr(self, k) for k in (*keys, *_PH_COUNTS)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.n = int(d["n"])
        for k in ("mean", "sum_up", "min_up", "sum_down", "max_down"):
            setattr(self, k, float(d[k]))
        for k in _PH_COUNTS:  # absent from states saved before they were kept: 0
            setattr(self, k, int(d.get(k, 0)))


_PH_COUNTS = ("n_min_up", "n_max_down", "run_length")


class ADWIN:
    """Adaptive windowing (Bifet & Gavaldà 2007, "Learning from time-changing data with adaptive
    windowing"), ADWIN2 with its exponential histogram of buckets. After a change, the width of
    the window it keeps is its estimate of how many values the new regime has (`run_length`).

    The window is a list of rows; row i holds up to `max_buckets` buckets of 2^i values each
    (oldest first), a bucket being [sum, sum of squared deviations]. Every `clock` values, each
    split of the window into old and new parts is checked with the paper's Hoeffding/Bernstein
    bound; while one is significant, the oldest bucket is dropped.
    """

    def __init__(
        self, delta: float = 0.002, clock: int = 16, max_buckets: int = 5, min_window: int = 10
    ):
        assert 0 < delta < 1 and clock >= 1 and max_buckets >= 2 and min_window >= 1
        self.delta, self.clock = float(delta), int(clock)
        self.max_buckets, self.min_window = int(max_buckets), int(min_window)
        self.rows: list[list[list[float]]] = [[]]
        self.total = 0.0
        self.variance = 0.0  # sum of squared deviations from the window mean
        self.ticks = 0
        self.n_detections = 0

    @property
    def width(self) -> int:
        return sum(len(row) << i for i, row in enumerate(self.rows))

    @property
    def run_length(self) -> int:
        return self.width

    @property
    def mean(self) -> float:
        width = self.width
        return self.total / width if width else 0.0

    def update(self, x: float) -> float | None:
        """Add one value; on a change, drop the old part of the window and return the largest
        absolute difference of sub-window means among the significant splits."""
        x = float(x)
        width = self.width
        if width:
            self.variance += width * (x - self.total / width) ** 2 / (width + 1)
        self.total += x
        self.rows[0].append([x, 0.0])
        self._compress()
        self.ticks += 1
        if self.ticks % self.clock or self.width < 2 * self.min_window:
            return None
        return self._detect()

    def _compress(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) <= self.max_buckets:
                return
            (s1, v1), (s2, v2) = row.pop(0), row.pop(0)
            n = 1 << i  # values per bucket in row i
            merged = [s1 + s2, v1 + v2 + n * n * (s1 / n - s2 / n) ** 2 / (2 * n)]
            if i + 1 == len(self.rows):
                self.rows.append([])
            self.rows[i + 1].append(merged)

    def _drop_oldest(self) -> None:
        i = len(self.rows) - 1
        s, v = self.rows[i].pop(0)
        n = 1 << i
        width = self.width
        self.total -= s
        if width:
            self.variance -= v + n * width * (s / n - self.total / width) ** 2 / (n + width)
        else:
            self.total, self.variance = 0.0, 0.0
        self.variance = max(self.variance, 0.0)
        while len(self.rows) > 1 and not self.rows[-1]:
            self.rows.pop()

    def _detect(self) -> float | None:
        largest = None
        while self.width >= 2 * self.min_window:
            cut = self._find_cut()
            if cut is None:
                break
            largest = cut if largest is None else max(largest, cut)
            self._drop_oldest()
        if largest is not None:
            self.n_detections += 1
        return largest

    def _find_cut(self) -> float | None:
        width = self.width
        n0, u0, n1, u1 = 0, 0.0, width, self.total
        dd = math.log(2.0 * math.log(width) / self.delta)
        v = self.variance / width
        for i in range(len(self.rows) - 1, -1, -1):  # oldest rows first
            n = 1 << i
            for s, _ in self.rows[i]:
                n0, u0, n1, u1 = n0 + n, u0 + s, n1 - n, u1 - s
                if n1 < self.min_window:
                    return None
                if n0 < self.min_window:
                    continue
                diff = abs(u0 / n0 - u1 / n1)
                m = 1.0 / (n0 - self.min_window + 1) + 1.0 / (n1 - self.min_window + 1)
                eps = math.sqrt(2.0 * m * v * dd) + 2.0 / 3.0 * dd * m
                if diff > eps:
                    return diff
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": [[list(b) for b in row] for row in self.rows],
            "total": self.total,
            "variance": self.variance,
            "ticks": self.ticks,
            "n_detections": self.n_detections,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.rows = [[[float(s), float(v)] for s, v in row] for row in d["rows"]] or [[]]
        self.total, self.variance = float(d["total"]), float(d["variance"])
        self.ticks, self.n_detections = int(d["ticks"]), int(d["n_detections"])


class BOCPD:
    """Bayesian online change point detection (Adams & MacKay 2007, "Bayesian online changepoint
    detection") for a stream of standardized values, with a Normal-Gamma prior on each regime's
    mean and precision, so a change in either the level or the spread of the stream is a change.

    The posterior over the current run length is kept for run lengths below `max_run`; longer
    runs share the last slot (their sufficient statistics merged), so the cost is O(max_run) per
    value. The hazard is not a constant: it is the posterior mean of a rate with a prior worth
    `lam` values at 1/`lam`, given the changes declared so far (the idea of Wilson, Nassar and
    Gold 2010, "Bayesian online learning of the hazard rate in change-point problems", in its
    simplest form), so a long quiet stream expects fewer changes than a short one.

    A change is declared when the most probable run began more than `min_segment` values after
    the last declared start and has lasted `min_segment` values: an outlier that the next values
    contradict is not a change, and regimes shorter than that are not told apart. Its start is
    the change's location (`run_length` counts the values since, up to the one that declared
    it). The prior's defaults are those van den Burg and Williams (2020) run bocpd with (mean 0,
    kappa 1, alpha 1, beta 1: a unit scale, which standardized input has).
    """

    def __init__(
        self,
        lam: float = 1000.0,
        min_segment: int = 10,
        max_run: int = 256,
        clip: float = 4.0,
        mu0: float = 0.0,
        kappa0: float = 1.0,
        alpha0: float = 1.0,
        beta0: float = 1.0,
    ):
        assert lam > 1 and min_segment >= 1 and max_run > 2 * min_segment
        self.lam, self.min_segment, self.max_run = float(lam), int(min_segment), int(max_run)
        self.clip = float(clip)
        self.prior = (float(mu0), float(kappa0), float(alpha0), float(beta0))
        self.reset()

    def reset(self) -> None:
        mu0, _, _, beta0 = self.prior
        # The posterior lives in the columns lo .. lo + size - 1 of a buffer with room to grow
        # leftwards: a new run length 0 is one column to the left, and every other run keeps its
        # column, so an update moves nothing. Rows: log posterior, values in the run, mu, beta.
        self._buf = np.empty((4, _SPARE * self.max_run))
        self._lo, self._size = self._buf.shape[1] - 1, 1
        self._buf[:, self._lo] = (0.0, 0.0, mu0, beta0)
        # The constants of each run length's predictive (see _run_constants); the last run's
        # are rewritten on each update, since merged runs hold a fractional number of values.
        self._const = _run_constants(self.prior, self.max_run).copy()
        self.t = 0  # values seen
        self.start = 0  # t at the start of the current (declared) regime
        self.run_length = 0
        self.changes = 0  # changes declared

    # log posterior of run lengths 0..len-1 (the last slot: >= that), values in each run, and
    # each run's posterior mean and beta (views of the live columns)
    @property
    def log_r(self) -> np.ndarray:
        return self._buf[0, self._lo : self._lo + self._size]

    @property
    def n(self) -> np.ndarray:
        return self._buf[1, self._lo : self._lo + self._size]

    @property
    def mu(self) -> np.ndarray:
        return self._buf[2, self._lo : self._lo + self._size]

    @property
    def beta(self) -> np.ndarray:
        return self._buf[3, self._lo : self._lo + self._size]

    def update(self, x: float) -> float | None:
        """Add one value; return the posterior probability of the new run's length when a change
        is declared (the detector carries on: its posterior already holds the new run)."""
        mu0, kappa0, alpha0, beta0 = self.prior
        x = min(max(float(x), -self.clip), self.clip)
        size, lo = self._size, self._lo
        log_r, n, mu, beta = self._buf[:, lo : lo + size]
        kappa, kp1, ak, pi_nu, nu, half_nu1, two_kp1, gamma_ratio = self._const[:, :size]
        _set_run_constants(self._const[:, size - 1], float(n[-1]), kappa0, alpha0)
        # Student-t predictive with 2 alpha dof: scale2 = beta (kappa + 1) / (alpha kappa)
        scale2 = beta * kp1 / ak
        d2 = np.square(x - mu)
        log_pred = gamma_ratio - 0.5 * np.log(pi_nu * scale2)
        log_pred -= half_nu1 * np.log1p(d2 / (nu * scale2))
        log_r += log_pred  # the joint of each run and x
        # the hazard's posterior mean, never above the prior's: a change makes it no likelier
        hazard = min(1.0 + self.changes, 1.0 + self.t / self.lam) / (self.lam + self.t)
        change = np.logaddexp.reduce(log_r) + math.log(hazard)
        log_r += math.log1p(-hazard)  # each run grows by one
        beta += kappa * d2 / two_kp1
        mu *= kappa
        mu += x
        mu /= kp1
        n += 1
        if lo == 0:  # out of room on the left: move the live columns to the right end
            lo = self._buf.shape[1] - size
            self._buf[:, lo:] = self._buf[:, :size]
        lo -= 1
        self._buf[:, lo] = (change, 0.0, mu0, beta0)  # run length 0: a change at x
        size += 1
        if size > self.max_run:  # the two longest runs share the last slot
            last = lo + self.max_run - 1
            tail = self._buf[0, last : last + 2]
            total = np.logaddexp.reduce(tail)
            w = np.exp(tail - total)
            for row in (1, 2, 3):
                self._buf[row, last] = w @ self._buf[row, last : last + 2]
            self._buf[0, last] = total
            size = self.max_run
        self._lo, self._size = lo, size
        log_r = self._buf[0, lo : lo + size]
        log_r -= np.logaddexp.reduce(log_r)
        self.t += 1
        run = int(np.argmax(log_r))
        if run == self.max_run - 1:
            return None  # the longest runs' slot: no start to locate
        if run >= self.min_segment and self.t - run > self.start + self.min_segment:
            self.start, self.run_length = self.t - run, run
            self.changes += 1
            return float(math.exp(log_r[run]))
        return None

    def state_dict(self) -> dict[str, Any]:
        arrays = {k: getattr(self, k).tolist() for k in ("log_r", "n", "mu", "beta")}
        counts = {k: getattr(self, k) for k in ("t", "start", "run_length", "changes")}
        return {**arrays, **counts}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        rows = np.array([d[k] for k in ("log_r", "n", "mu", "beta")], dtype=np.float64)
        size = rows.shape[1]
        assert 1 <= size <= self.max_run, "more run lengths than max_run"
        assert np.array_equal(rows[1, :-1], np.arange(size - 1)), "runs of whole values"
        self._lo, self._size = self._buf.shape[1] - size, size
        self._buf[:, self._lo :] = rows
        for k in ("t", "start", "run_length", "changes"):
            setattr(self, k, int(d[k]))


_SPARE = 4  # the posterior's buffer holds this many max_run columns: one move per 3 max_run values


def _set_run_constants(out: np.ndarray, n: float, kappa0: float, alpha0: float) -> None:
    """Write into out (8,) the constants of a run of n values (whole or, merged, fractional):
    kappa, kappa + 1, alpha kappa, pi nu, nu, (nu + 1) / 2, 2 (kappa + 1) and
    log Gamma(alpha + 1/2) - log Gamma(alpha), where kappa = kappa0 + n, alpha = alpha0 + n / 2
    and nu = 2 alpha, in the operations the table of `_run_constants` takes, so equal bits."""
    kappa, alpha = kappa0 + n, alpha0 + n / 2
    nu = 2 * alpha
    out[:] = (
        kappa,
        kappa + 1,
        alpha * kappa,
        np.pi * nu,
        nu,
        (nu + 1) / 2,
        2 * (kappa + 1),
        math.lgamma(alpha + 0.5) - math.lgamma(alpha),
    )


def _run_constants(prior: tuple[float, ...], max_run: int) -> np.ndarray:
    """(8, max_run) the constants of `_set_run_constants` for runs of 0 .. max_run - 1 values."""
    key = (*prior, max_run)
    table = _CONSTANTS.get(key)
    if table is None:
        _, kappa0, alpha0, _ = prior
        table = np.empty((8, max_run))
        for k in range(max_run):
            _set_run_constants(table[:, k], float(k), kappa0, alpha0)
        _CONSTANTS[key] = table
    return table


_CONSTANTS: dict[tuple[float, ...], np.ndarray] = {}
