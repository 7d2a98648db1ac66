"""Drift metrics: rolling and exponentially weighted error statistics, change detectors on
standardized residuals (Page-Hinkley, Bayesian online change point detection), and parameter
change since the first converged estimate.

Everything is incremental (O(1) amortized per observation) and every class round-trips its state
through plain JSON-friendly dicts, so a restarted service resumes exactly where it stopped.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from twin.detectors import ADWIN, BOCPD, PageHinkley
from twin.detectors_together import bocpd_together

__all__ = [
    "ADWIN",
    "BOCPD",
    "DriftEvent",
    "DriftMonitor",
    "ErrorStats",
    "PageHinkley",
    "ParameterTracker",
]


def _decay(half_life: float) -> float:
    """Per-observation factor of an exponential average whose weights halve every `half_life`."""
    assert half_life > 0, "half_life must be positive"
    return 0.5 ** (1.0 / half_life)


def _moments(r: np.ndarray) -> np.ndarray:
    """(m,) residuals -> (m, 3): r, |r| and r^2, the sums every metric needs."""
    mom = np.empty((r.shape[0], 3))
    mom[:, 0] = r
    np.abs(r, out=mom[:, 1])
    np.multiply(r, r, out=mom[:, 2])
    return mom


class ErrorStats:
    """Rolling-window and exponentially weighted RMSE, MAE and bias (mean residual) per output.

    Each output is its own stream: a NaN residual (an observation the twin could not predict
    yet, or an output the sensor did not report) is skipped for that output only, so the window
    holds each output's last `window` residuals. The window sums are recomputed from the ring
    buffer every `window` residuals so rounding errors cannot pile up. The EW means are
    bias-corrected (divided by the total weight 1 - beta^n, as in Adam).
    """

    def __init__(self, n_outputs: int, window: int = 100, half_life: float = 50.0):
        assert n_outputs >= 1 and window >= 1, "need at least one output and a window of 1"
        self.n_outputs, self.window, self.half_life = n_outputs, int(window), float(half_life)
        self._beta = _decay(half_life)
        self._buf = np.zeros((self.window, n_outputs))  # ring buffers; empty slots hold zeros
        self._pos = np.zeros(n_outputs, dtype=np.int64)  # slot each output's next value goes to
        self._filled = np.zeros(n_outputs, dtype=np.int64)
        self._total = np.zeros(n_outputs, dtype=np.int64)
        self._since_sync = np.zeros(n_outputs, dtype=np.int64)
        self._sums = np.zeros((3, n_outputs))  # window sums of r, |r|, r^2
        self._ew = np.zeros((3, n_outputs))  # EW sums of r, |r|, r^2 (not bias-corrected)
        self._ew_weight = np.zeros(n_outputs)  # 1 - beta^n: the total weight given so far
        self._weights: dict[int, np.ndarray] = {}  # m -> the EW weights of m new residuals

    def update(self, residuals: np.ndarray) -> None:
        r = np.asarray(residuals, dtype=np.float64).reshape(-1, self.n_outputs)  # (N, n_out)
        seen = np.isfinite(r)
        everything = bool(seen.all())
        for j in range(self.n_outputs):
            self._update_output(j, r[:, j] if everything else r[seen[:, j], j])

    def _update_output(self, j: int, r: np.ndarray) -> None:
        """Add the finite residuals r (m,) of output j, oldest first."""
        m = r.shape[0]
        if m == 0:
            return
        mom = _moments(r)  # (m, 3)
        decay_m = self._beta**m
        weights = self._weights.get(m)
        if weights is None:  # newest weighs 1
            weights = self._weights[m] = self._beta ** np.arange(m - 1, -1, -1, dtype=np.float64)
        self._ew[:, j] = decay_m * self._ew[:, j] + (1.0 - self._beta) * (weights @ mom)
        self._ew_weight[j] = decay_m * self._ew_weight[j] + (1.0 - decay_m)
        self._total[j] += m
        if m >= self.window:
            self._buf[:, j] = r[-self.window :]
            self._pos[j], self._filled[j] = 0, self.window
            self._sync(j)
            return
        pos = int(self._pos[j])
        if pos + m <= self.window:  # the slots pos .. pos + m - 1, without wrapping around
            slots: slice | np.ndarray = slice(pos, pos + m)
        else:
            slots = (pos + np.arange(m)) % self.window
        self._sums[:, j] += mom.sum(axis=0) - _moments(self._buf[slots, j]).sum(axis=0)
        self._buf[slots, j] = r
        self._pos[j] = (pos + m) % self.window
        self._filled[j] = min(self._filled[j] + m, self.window)
        self._since_sync[j] += m
        if self._since_sync[j] >= self.window:
            self._sync(j)

    def _sync(self, j: int) -> None:
        self._sums[:, j] = _moments(self._buf[:, j]).sum(axis=0)
        self._since_sync[j] = 0

    def summary(self, names: list[str]) -> dict[str, dict[str, float | int | None]]:
        """{name: {rmse, mae, bias, ew_rmse, ew_mae, ew_bias, n, total}}; None where no data.

        n: residuals in the rolling window; total: residuals seen since creation.
        """
        assert len(names) == self.n_outputs, "one name per output"
        out = {}
        for j, name in enumerate(names):
            row: dict[str, float | int | None] = dict.fromkeys(
                ("rmse", "mae", "bias", "ew_rmse", "ew_mae", "ew_bias")
            )
            filled = int(self._filled[j])
            if filled:
                s1, sa, s2 = self._sums[:, j] / filled
                e1, ea, e2 = self._ew[:, j] / self._ew_weight[j]
                row.update(rmse=math.sqrt(max(s2, 0.0)), mae=float(sa), bias=float(s1))
                row.update(ew_rmse=math.sqrt(max(e2, 0.0)), ew_mae=float(ea), ew_bias=float(e1))
            row.update(n=filled, total=int(self._total[j]))
            out[name] = row
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_outputs": self.n_outputs,
            "window": self.window,
            "half_life": self.half_life,
            "buf": self._buf.tolist(),
            "pos": self._pos.tolist(),
            "filled": self._filled.tolist(),
            "total": self._total.tolist(),
            "since_sync": self._since_sync.tolist(),
            "sums": self._sums.tolist(),
            "ew": self._ew.tolist(),
            "ew_weight": self._ew_weight.tolist(),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Also reads state saved when the outputs shared one count (plain numbers)."""
        assert d["n_outputs"] == self.n_outputs and d["window"] == self.window, "shape mismatch"
        self.half_life = float(d["half_life"])
        self._beta = _decay(self.half_life)
        self._weights = {}
        self._buf = np.array(d["buf"], dtype=np.float64).reshape(self.window, self.n_outputs)
        shape = (self.n_outputs,)
        for name in ("pos", "filled", "total", "since_sync"):
            setattr(self, f"_{name}", np.broadcast_to(np.array(d[name], np.int64), shape).copy())
        self._sums = np.array(d["sums"], dtype=np.float64).reshape(3, self.n_outputs)
        self._ew = np.array(d["ew"], dtype=np.float64).reshape(3, self.n_outputs)
        self._ew_weight = np.broadcast_to(np.array(d["ew_weight"], np.float64), shape).copy()


@dataclass(frozen=True)
class DriftEvent:
    """A detector alarm on one output, at the observation where it fired; `start_seq` is the
    detector's estimate of the first observation of the new regime (<= seq)."""

    seq: int
    ts: float
    output: str
    detector: str  # "page_hinkley" or "bocpd"
    statistic: float
    start_seq: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Page-Hinkley on residuals in scale units: ignore shifts below 1.5 scales, fire once the excess
# adds up to 10. A 5-scale jump is flagged within 3-4 observations, the learner's cue to jump;
# two clipped spikes (10 scales) in a row are needed to fire without a change. Smaller shifts are
# tracked by the learner without a jump, and BOCPD reports them when it is sure of them.
PH_DELTA = 1.5
PH_THRESHOLD = 10.0


class DriftMonitor:
    """Error metrics of the twin and of its frozen first guess, and change detectors per output.

    Each output's residual is standardized by a slowly adapting EW root-mean-square scale, taken
    before the residual is added, with an absolute floor; the scale update clips residuals at
    `clip` scales so one sensor spike barely moves it. Two detectors watch the standardized
    residual, clipped at `clip`: Page-Hinkley, a fast alarm for a shift in the mean (the learner's
    cue to jump), and BOCPD (Adams & MacKay's run-length posterior), which locates changes in the
    residuals' mean or spread. Detectors start once the scale has seen `warmup` residuals. After
    an alarm on an output its scale keeps only `warmup` observations' worth of weight, so it
    learns the new regime in tens of observations instead of drifting for thousands. NaN
    residuals are skipped.
    """

    def __init__(
        self,
        outputs: list[str],
        window: int = 100,
        half_life: float = 50.0,
        scale_half_life: float = 500.0,
        warmup: int = 30,
        scale_floor: float = 1e-12,
        ph_delta: float = PH_DELTA,
        ph_threshold: float = PH_THRESHOLD,
        bocpd_lam: float = 1000.0,
        clip: float = 10.0,
    ):
        self.outputs = list(outputs)
        n = len(self.outputs)
        self.twin = ErrorStats(n, window, half_life)
        self.frozen = ErrorStats(n, window, half_life)
        self.scale_half_life, self.warmup = float(scale_half_life), int(warmup)
        self.scale_floor, self.clip = float(scale_floor), float(clip)
        self._beta = _decay(scale_half_life)
        self._sq = [0.0] * n  # EW sums of r^2, not bias-corrected
        self._sq_weight = [0.0] * n
        self._count = [0] * n
        self.ph = [PageHinkley(ph_delta, ph_threshold) for _ in range(n)]
        self.bocpd = [BOCPD(bocpd_lam) for _ in range(n)]
        self.alarms = 0
        # Staged by `observe` for `settle`: BOCPD's inputs per output, where each came from
        # (observe call, row, (seq, ts, output)), and per observe call the events fired so far
        # with their place ((output, row, detector), event).
        self._staged: list[list[float]] = [[] for _ in range(n)]
        self._staged_at: list[list[tuple]] = [[] for _ in range(n)]
        self._batches: list[list[tuple]] = []

    def update(
        self,
        seq: np.ndarray,
        ts: np.ndarray,
        residuals: np.ndarray,
        frozen_residuals: np.ndarray | None = None,
    ) -> list[DriftEvent]:
        """Add N residual rows (N, n_outputs); return the events fired, in `seq` order."""
        self.observe(seq, ts, residuals, frozen_residuals)
        return self.settle()

    def observe(
        self,
        seq: np.ndarray,
        ts: np.ndarray,
        residuals: np.ndarray,
        frozen_residuals: np.ndarray | None = None,
    ) -> list[DriftEvent]:
        """`update` up to BOCPD: the error statistics, the scales and Page-Hinkley take the rows
        at once, and Page-Hinkley's alarms are returned (in `seq` order); BOCPD's inputs wait
        for `settle` (nothing else depends on them), which runs them for many monitors at once
        (`settle_together`) and returns all the events in the order `update` would have."""
        n = len(self.outputs)
        seq, ts = np.asarray(seq).reshape(-1), np.asarray(ts, dtype=np.float64).reshape(-1)
        r = np.asarray(residuals, dtype=np.float64).reshape(-1, n)  # (N, n_out)
        assert seq.shape[0] == ts.shape[0] == r.shape[0], "seq, ts and residuals must align"
        self.twin.update(r)
        if frozen_residuals is not None:
            self.frozen.update(np.asarray(frozen_residuals, dtype=np.float64).reshape(-1, n))
        batch, alarms = len(self._batches), []
        self._batches.append([])
        seqs, times = seq.tolist(), ts.tolist()
        for j, name in enumerate(self.outputs):
            for i, x in enumerate(r[:, j].tolist()):
                if not math.isfinite(x):
                    continue
                z = self._standardize(j, x)
                if z is None:
                    continue
                at = (int(seqs[i]), times[i], name)
                self._staged[j].append(z)
                self._staged_at[j].append((batch, i, at))
                stat = self.ph[j].update(z)
                if stat is not None:
                    start = max(at[0] - self.ph[j].run_length + 1, 0)
                    alarms.append(DriftEvent(*at, "page_hinkley", stat, start))
                    self._batches[batch].append(((j, i, 0), alarms[-1]))
                    self._rewarm(j)  # BOCPD learns each regime's spread itself
        alarms.sort(key=lambda e: e.seq)  # stable: output order within one observation
        self.alarms += len(alarms)
        return alarms

    @property
    def pending(self) -> bool:
        """Whether `observe` has run since the last `settle`."""
        return bool(self._batches)

    def settle(self) -> list[DriftEvent]:
        """BOCPD over the values `observe` staged; all events since the last `settle`, in the
        order of `update`: by `observe` call, then `seq`, output, observation, detector."""
        return settle_together([self])[0]

    def _standardize(self, j: int, x: float) -> float | None:
        """The residual in scale units, clipped at +-clip (None while warming up)."""
        seen = self._count[j]
        scale = math.sqrt(self._sq[j] / self._sq_weight[j]) if seen else 0.0
        if seen >= self.warmup:
            bound = self.clip * scale
            x_in = min(max(x, -bound), bound)
        else:
            x_in = x
        self._sq[j] = self._beta * self._sq[j] + (1.0 - self._beta) * x_in * x_in
        self._sq_weight[j] = self._beta * self._sq_weight[j] + (1.0 - self._beta)
        self._count[j] = seen + 1
        if seen < self.warmup:
            return None
        z = x / max(scale, self.scale_floor)
        return min(max(z, -self.clip), self.clip)

    def _rewarm(self, j: int) -> None:
        """Shrink the scale's history to `warmup` observations' worth of weight."""
        keep = (1.0 - self._beta ** max(self.warmup, 1)) / self._sq_weight[j]
        if keep < 1.0:
            self._sq[j] *= keep
            self._sq_weight[j] *= keep

    def scales(self) -> dict[str, float | None]:
        """The current residual scale per output (None before the first residual)."""
        return {
            name: math.sqrt(self._sq[j] / self._sq_weight[j]) if self._count[j] else None
            for j, name in enumerate(self.outputs)
        }

    def summary(self) -> dict[str, Any]:
        twin, frozen = self.twin.summary(self.outputs), self.frozen.summary(self.outputs)
        outputs = {name: {"twin": twin[name], "first_guess": frozen[name]} for name in self.outputs}
        return {"outputs": outputs, "alarms": self.alarms}

    def state_dict(self) -> dict[str, Any]:
        assert not self.pending, "settle the monitor first"
        return {
            "outputs": list(self.outputs),
            "twin": self.twin.state_dict(),
            "frozen": self.frozen.state_dict(),
            "sq": list(self._sq),
            "sq_weight": list(self._sq_weight),
            "count": list(self._count),
            "ph": [d.state_dict() for d in self.ph],
            "bocpd": [d.state_dict() for d in self.bocpd],
            "alarms": self.alarms,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        assert list(d["outputs"]) == self.outputs, "state is for other outputs"
        self.twin.load_state_dict(d["twin"])
        self.frozen.load_state_dict(d["frozen"])
        self._sq = [float(v) for v in d["sq"]]
        self._sq_weight = [float(v) for v in d["sq_weight"]]
        self._count = [int(v) for v in d["count"]]
        for det, s in zip(self.ph, d["ph"], strict=True):
            det.load_state_dict(s)
        for det, s in zip(self.bocpd, d.get("bocpd", ()), strict=False):  # none before BOCPD
            det.load_state_dict(s)
        self.alarms = int(d["alarms"])


def settle_together(monitors: list[DriftMonitor]) -> list[list[DriftEvent]]:
    """`monitor.settle()` for each, their BOCPD detectors run together (`bocpd_together`)."""
    taken = [(m._staged, m._staged_at, m._batches) for m in monitors]
    for m in monitors:  # taken first: whatever happens next, no value is run twice
        m._staged, m._staged_at = [[] for _ in m.outputs], [[] for _ in m.outputs]
        m._batches = []
    owners = [(m, j, t) for m, t in zip(monitors, taken, strict=True) for j in range(len(t[0]))]
    owners = [(m, j, t) for m, j, t in owners if t[0][j]]
    found = bocpd_together([m.bocpd[j] for m, j, _ in owners], [t[0][j] for _, j, t in owners])
    for (m, j, (_, staged_at, batches)), changes in zip(owners, found, strict=True):
        for k, stat, run_length in changes:
            batch, i, at = staged_at[j][k]
            start = max(at[0] - run_length + 1, 0)
            batches[batch].append(((j, i, 1), DriftEvent(*at, "bocpd", stat, start)))
            m.alarms += 1
    out = []
    for _, _, batches in taken:
        events = []
        for fired in batches:
            fired.sort(key=lambda f: f[0])  # output, row, detector: the order of update's loop
            events.extend(sorted((e for _, e in fired), key=lambda e: e.seq))  # stable
        out.append(events)
    return out


class ParameterTracker:
    """Named parameter values across versions, from the first guess on: change since the first
    converged estimate and over the last `history` updates.

    Change is not measured from the first guess: a guess set from a few observations is rough,
    and a twin that merely refines it has not seen its plant change. The twin says when its
    estimate has converged (`converge`); until then change since it is None.
    """

    def __init__(self, history: int = 20):
        assert history >= 1, "history must be at least 1"
        self.history = int(history)
        self.first_guess: dict[str, float] = {}
        self.converged: dict[str, float] | None = None
        self.recent: dict[str, deque[float]] = {}

    def update(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            value = float(value)
            if name not in self.first_guess:
                self.first_guess[name] = value
                self.recent[name] = deque(maxlen=self.history + 1)
            self.recent[name].append(value)

    def converge(self, values: dict[str, float]) -> None:
        """Record the first converged estimate (later calls change nothing)."""
        if self.converged is None:
            self.converged = {name: float(v) for name, v in values.items()}

    def summary(self) -> dict[str, dict[str, float | None]]:
        """{name: {first_guess, converged, current, change, relative_change, recent_change,
        recent_relative_change}}: change is since the first converged estimate (None before
        it); relative changes are None where the reference value is 0."""
        out = {}
        for name, guess in self.first_guess.items():
            v, past = self.recent[name][-1], self.recent[name][0]
            v0 = None if self.converged is None else self.converged.get(name)
            out[name] = {
                "first_guess": guess,
                "converged": v0,
                "current": v,
                "change": None if v0 is None else v - v0,
                "relative_change": (v - v0) / abs(v0) if v0 else None,
                "recent_change": v - past,
                "recent_relative_change": (v - past) / abs(past) if past != 0 else None,
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        recent = {k: list(v) for k, v in self.recent.items()}
        return {
            "history": self.history,
            "first_guess": dict(self.first_guess),
            "converged": None if self.converged is None else dict(self.converged),
            "recent": recent,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.history = int(d["history"])
        guess = d.get("first_guess", d.get("initial", {}))  # "initial" before first guesses
        self.first_guess = {k: float(v) for k, v in guess.items()}
        converged = d.get("converged")
        self.converged = None if converged is None else {k: float(v) for k, v in converged.items()}
        self.recent = {
            k: deque((float(x) for x in v), maxlen=self.history + 1) for k, v in d["recent"].items()
        }
