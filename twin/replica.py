"""The twin: one replica of one real system — its model, learner, scaler and drift monitor.

`Twin.step` is the prequential calibration loop of DESIGN.md for a run of new observations:
predict each one with the weights in force, feed the residuals to the drift monitor, then learn,
in steps of at most `update_size` observations. Everything it holds round-trips through
`to_bytes`/`from_bytes`, so a restarted service resumes exactly where the last version left off.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from twin import checkpoint
from twin.drift import DriftEvent, DriftMonitor, ParameterTracker
from twin.learners import UpdateReport, legacy_method, make_learner, with_method
from twin.models import model_class
from twin.models.base import DTYPE, TwinModel
from twin.models.initial import initial_guess, open_parameters
from twin.observations import Observations
from twin.requests import Detect, OneStep, answer_together, predict_together
from twin.scaling import ChannelScaler
from twin.spec import TwinSpec

# The estimate has converged once it moves less than this (relative) over one learner window's
# updates, or after this many learner windows since the first guess, whichever comes first.
SETTLED, CONVERGE_WINDOWS = 0.01, 4
PREDICT_PATHS = 64  # Monte Carlo noise paths behind a what-if's std
GUESS_AFTER = 32  # observations the first guess of open physical parameters looks at
# Alarms the learner reacts to. Page-Hinkley flags a shift in the residuals' mean: the model is
# off, and the learner should move fast. ADWIN on |residual| also flags changes in the error's
# size, which happen while a twin converges or the noise changes; reacting to those too cost
# 0.2-0.5x a Kalman filter's excess error before the step of bench/tracking.py's step plant.
REACT_TO = ("page_hinkley",)


@dataclass
class StepResult:
    """Prequential outcome of one `Twin.step`: per observation, what the twin predicted before
    learning it and what its frozen first guess predicted (NaN where it had no context or no
    first guess yet)."""

    seq: np.ndarray  # (N,)
    predictions: np.ndarray  # (N, n_out)
    residuals: np.ndarray  # (N, n_out)
    frozen_predictions: np.ndarray  # (N, n_out)
    events: list[DriftEvent] = field(default_factory=list)
    reports: list[UpdateReport] = field(default_factory=list)

    @property
    def loss(self) -> float | None:
        return self.reports[-1].loss_after if self.reports else None


class Twin:
    def __init__(self, spec: TwinSpec):
        spec = with_method(spec)  # the learner named, whatever a kind's default becomes
        self.spec = spec
        self.model: TwinModel = model_class(spec.model.kind).from_spec(spec)
        self.frozen: TwinModel = copy.deepcopy(self.model).requires_grad_(False)
        self.learner = make_learner(spec, self.model)
        self.input_scaler = ChannelScaler(len(spec.inputs))
        self.output_scaler = ChannelScaler(len(spec.outputs))
        self.monitor = DriftMonitor(list(spec.outputs))
        self.tracker = ParameterTracker()
        self.watermark = 0
        self.late_skipped = 0  # observations that came after the twin had learned past them
        # The first guess: physical parameters the spec left open are set from the first
        # observations; black-box coefficients the spec left open mean "zero on the channels
        # standardized by the first observations" (arx: their mean). Until then there is none.
        open_params = open_parameters(self.model, set(spec.model.params))
        guess_later = open_params or (not self.model.physical and not spec.model.params)
        self.guessed: list[str] | None = None if guess_later else []
        self.guess_seq = 0  # watermark when the first guess was made
        self.settling: list[list[float]] = []  # parameters after recent updates, till converged
        if self.guessed is not None:
            self.tracker.update(self.model.named_values())
        self.update_size = int(self.learner.options["update_size"])

    @classmethod
    def create(cls, spec: TwinSpec) -> Twin:
        return cls(spec)

    # -- calibration --------------------------------------------------------------------------
    def step(self, obs: Observations, deadline: float | None = None) -> StepResult:
        """Predict, monitor and learn the observations past the watermark, in time order (see
        `stepping`); `step_together` does the same for many twins, their learner updates
        batched."""
        run = self.stepping(obs, deadline)
        answer: object = None
        while True:
            try:
                failed = isinstance(answer, Exception)  # then raised where it was asked for
                request = run.throw(answer) if failed else run.send(answer)
            except StopIteration as done:
                return done.value
            if isinstance(request, Observations):
                try:
                    answer = self.learner.update(request)
                except Exception as exc:
                    answer = exc
            else:
                answer = answer_together([request])[0]

    def stepping(
        self, obs: Observations, deadline: float | None = None
    ) -> Generator[Observations | Detect | OneStep, object, StepResult]:
        """`step` as a generator that hands out each learner update instead of making it: it
        yields the chunk the learner should update on and takes back that update's report
        (`self.learner.update(chunk)`, made alone or together with other twins'), and likewise
        the requests of `twin.requests` (its drift detections, `Detect`) and their answers; it
        returns the StepResult. An exception thrown in where an answer was due is raised there.

        Predict, monitor and learn the observations past the watermark, in time order.

        Observations at or before the newest one the twin has seen arrived too late to be
        learned in time order: they are skipped (NaN predictions) and counted. The watermark
        becomes the largest `seq` given, learned or skipped.

        With a `deadline` (a `time.monotonic()` value), stop at the first update boundary after
        it has passed and return only what was done (at least one update). The cut falls on a
        multiple of `update_size`, where an uncut run starts a chunk too, so learning the rest
        in a later call gives the same parameters as one call over all of it; and only where
        every `seq` done is below every `seq` left (late observations put seqs out of order),
        so that the watermark covers exactly what was done."""
        try:
            return (yield from self._stepping(obs, deadline))
        except BaseException:
            if self.monitor.pending:  # the detections of what was done, as `update` ran them
                self.monitor.settle()
            raise

    def _stepping(
        self, obs: Observations, deadline: float | None
    ) -> Generator[Observations | Detect | OneStep, object, StepResult]:
        n_out = len(self.spec.outputs)
        preds = np.full((len(obs), n_out), np.nan)
        frozen = np.full((len(obs), n_out), np.nan)
        result = StepResult(obs.seq, preds, preds, frozen)
        newest = self.context_ts
        skip = 0 if newest is None else int(np.searchsorted(obs.ts, newest, side="right"))
        self.late_skipped += skip
        for start in range(skip, len(obs), self.update_size):
            chunk = self._hold_inputs(obs[start : start + self.update_size])
            part = slice(start, start + len(chunk))
            predicted, frozen_predicted, filled, outliers = yield from self._predict_one_step(chunk)
            if self.guessed is not None:  # no first guess, no prediction: NaN, not a placeholder
                preds[part], frozen[part] = predicted, frozen_predicted
            # Values far outside a channel's robust range are faults, not the plant: they are
            # stored and shown, but neither learned nor fed to the drift statistics and scalers.
            seen = np.where(outliers, np.nan, chunk.outputs)
            alarms = self.monitor.observe(
                chunk.seq, chunk.ts, seen - preds[part], seen - frozen[part]
            )  # Page-Hinkley's at once; all events, BOCPD's too, at the end (`Detect`)
            shifts = [e for e in alarms if e.detector in REACT_TO]
            if shifts:
                self.learner.on_drift(min(e.start_seq for e in shifts))
            self.input_scaler.update(chunk.inputs)
            self.output_scaler.update(seen)  # each channel over its measured, sound values
            chunk = Observations.checked(chunk.ts, chunk.inputs, filled, chunk.seq, chunk.observed)
            scaling = (
                self.output_scaler.mean,
                self.output_scaler.std,
                self.input_scaler.mean,
                self.input_scaler.std,
            )
            for m in (self.model, self.frozen):
                m.set_normalization(*scaling, keep_function=self.guessed is not None)
            self.watermark = max(self.watermark, int(chunk.seq.max()))
            if self.guessed is None:  # first a guess from the data
                self.learner.observe(chunk)
                physical_ready = len(self.learner.window) >= self._guess_at and self._clean_tail()
                if not self.model.physical or physical_ready:
                    self._first_guess()
            else:
                result.reports.append((yield chunk))  # self.learner.update(chunk)
                self._maybe_converged()
            done = start + len(chunk)
            if (
                deadline is not None
                and done < len(obs)
                and time.monotonic() > deadline
                and obs.seq[:done].max() < obs.seq[done:].min()
            ):
                obs = obs[:done]
                preds, frozen = preds[:done], frozen[:done]
                result.seq, result.predictions, result.frozen_predictions = obs.seq, preds, frozen
                break
        result.events = yield Detect(self.monitor)
        result.residuals = obs.outputs - preds
        if len(obs):
            self.watermark = max(self.watermark, int(obs.seq.max()))
        if len(obs) and self.guessed is not None:
            self.tracker.update(self.model.named_values())
        return result

    @property
    def _guess_at(self) -> int:
        """Observations the first guess of open physical parameters waits for: GUESS_AFTER, or
        a learner window that holds fewer (which would otherwise never fill up to it)."""
        return min(GUESS_AFTER, self.learner.window.capacity)

    def _clean_tail(self) -> bool:
        """Whether the newest GUESS_AFTER observations hold no outlier to guess from (a value
        no sensor has reported yet is not one: `_first_guess` leaves its rows out)."""
        y = self.learner.window.last(GUESS_AFTER)[0]
        return not (self.learner.outlying(y) & np.isfinite(y)).any()

    def _maybe_converged(self) -> None:
        """The first converged estimate, which parameter change is measured from: after a
        learner window of observations since the first guess, once the estimate has stopped
        moving (within SETTLED over the last window's updates), and at the latest after
        CONVERGE_WINDOWS windows (a plant that drifts from the start never settles)."""
        if self.tracker.converged is not None:
            return
        learned = self.watermark - self.guess_seq
        window = self.learner.options["window"]
        values = self.model.named_values()
        self.settling.append([float(v) for v in values.values()])
        del self.settling[: -max(window // self.update_size, 2)]  # one window of updates
        if learned < window:
            return
        # per parameter over the recent updates (plain floats: max and min select exactly, so
        # this is what numpy's reductions over the (updates, P) array give)
        if learned >= CONVERGE_WINDOWS * window or all(
            max(column) - min(column) <= SETTLED * max(max(map(abs, column)), 1e-12)
            for column in zip(*self.settling, strict=True)
        ):
            self.tracker.converge(values)
            self.settling = []

    def _first_guess(self) -> None:
        """Set the parameters the spec left open from the first observations; the frozen copy
        of this first guess is what the drift metrics compare against."""
        if self.model.physical:
            y, u, ts = self.learner.window.last(GUESS_AFTER)
            unknown = np.flatnonzero(~(np.isfinite(y).all(axis=1) & np.isfinite(u).all(axis=1)))
            start = unknown[-1] + 1 if unknown.size else 0  # rows with no value to hold: first
            seen = Observations(ts[start:], u[start:], y[start:])
            self.guessed = initial_guess(self.model, seen, set(self.spec.model.params))
        else:  # the scaler of the first observations is the guess
            self.guessed = sorted(set(self.model.named_values()) - set(self.spec.model.params))
        self.guess_seq = self.watermark
        self.frozen.load_state_dict(self.model.state_dict())
        self.tracker = ParameterTracker()
        self.tracker.update(self.model.named_values())

    def _hold_inputs(self, chunk: Observations) -> Observations:
        """The chunk with each missing input (NaN) held from the previous observation's; one
        with no earlier value stays NaN, and the predictions that need it are not made."""
        if np.isfinite(chunk.inputs).all():
            return chunk
        u = np.concatenate([self.learner.context_arrays()[1][-1:], chunk.inputs])
        for i in range(1, u.shape[0]):
            u[i] = np.where(np.isnan(u[i]), u[i - 1], u[i])
        held = u[u.shape[0] - len(chunk) :]
        return Observations.checked(chunk.ts, held, chunk.outputs, chunk.seq, chunk.observed)

    def _predict_one_step(
        self, chunk: Observations
    ) -> Generator[OneStep, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]:
        """(N, n_out) one-step predictions of the twin and of the frozen model, before learning
        (NaN before the first guess: none are asked for, `OneStep`); the outputs with each
        missing one filled in as context for what follows; and which of the chunk's outputs are
        outliers (`Learner.outlying`; a missing output is not one).

        A prediction from a context holding an outlier would be as wrong as it: it is not made
        (NaN). A missing output is filled with the twin's own prediction of it once the twin has
        its first guess (the state a Kalman filter carries through a missing measurement:
        holding the last value would claim the system stood still), else with the last value
        held."""
        context = self.learner.context_arrays()
        y_old = context[0]
        measured = np.where(chunk.observed, chunk.outputs, np.nan)
        outliers = self.learner.outlying(np.concatenate([y_old, measured]))
        outliers[len(y_old) :] &= chunk.observed
        unsound = outliers.any(axis=1)  # (N_old + N,) rows no prediction may start from
        y = chunk.outputs
        missing = np.flatnonzero(~chunk.observed.all(axis=1))
        if missing.size:
            y = y.copy()
            for i in missing:  # a row's prediction depends only on the rows before it
                gap = ~chunk.observed[i]
                none = np.full_like(y[i], np.nan)
                held = y[i - 1] if i else (y_old[-1] if len(y_old) else none)
                guess = held
                rows = self._one_step_rows(chunk, y, unsound, context)
                if self.guessed is not None and rows is not None:
                    [(yhat, _)] = predict_together([rows[0]])
                    guess = self._placed(yhat, rows, len(chunk))[i]
                y[i, gap] = np.where(np.isfinite(guess), guess, held)[gap]
        pred, frozen = np.full(y.shape, np.nan), np.full(y.shape, np.nan)
        rows = self._one_step_rows(chunk, y, unsound, context)  # the same for both models
        if self.guessed is not None and rows is not None:
            yhat, yhat_frozen = yield rows[0]  # predict_together([rows[0]])[0]
            pred = self._placed(yhat, rows, len(chunk))
            frozen = self._placed(yhat_frozen, rows, len(chunk))
        return pred, frozen, y, outliers[len(y_old) :]

    @staticmethod
    def _placed(yhat: np.ndarray, rows: tuple, n: int) -> np.ndarray:
        """(n, n_out) the chunk's one-step predictions from a `OneStep` answer (N_old + N - L,
        n_out) on `_one_step_rows`: NaN where no full or no sound context came before."""
        _, blind, first = rows
        pred = np.full((n, yhat.shape[1]), np.nan)
        yhat[blind] = np.nan
        pred[first:] = yhat[len(yhat) - (n - first) :]
        return pred

    def _one_step_rows(
        self,
        chunk: Observations,
        y_chunk: np.ndarray,
        unsound: np.ndarray,
        context: tuple[np.ndarray, ...],
    ) -> tuple | None:
        """The `OneStep` request of the chunk's rows with a full context before them (N_old + N
        - L rows), which of those rows see an `unsound` one (N_old + N,) in it, and the first
        chunk row predicted; None when no row has a full context. `context` is
        `learner.context_arrays()`."""
        y_old, u_old, ts_old = context
        L = self.model.context
        n_old = ts_old.shape[0]
        n = n_old + len(chunk)
        if n <= L:
            return None
        ts = np.concatenate([ts_old, chunk.ts])
        u = np.concatenate([u_old, chunk.inputs])
        y = np.concatenate([y_old, y_chunk])
        bad = np.cumsum(np.concatenate([[0], unsound]))
        blind = bad[L:n] - bad[: n - L] > 0  # (N_old + N - L,)
        return OneStep(self.model, self.frozen, ts, u, y), blind, max(L - n_old, 0)

    # -- what-if ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Roll the twin forward from its latest observed state under future inputs.

        inputs: (H, n_in); dt: (H,) seconds between steps. Returns mean and std, (H, n_out).
        The std propagates the twin's recent one-step residual scale (its EW RMSE) through the
        dynamics by Monte Carlo; it covers noise and recent model error, not parameter doubt.
        """
        if self.guessed is None:
            raise ValueError("the twin has no first guess of its parameters yet")
        y_old, u_old, _ = self.learner.context_arrays()
        L = self.model.context
        if y_old.shape[0] < L:
            raise ValueError("the twin has not seen enough observations to roll forward")
        H = inputs.shape[0]
        K = PREDICT_PATHS
        gen = torch.Generator().manual_seed(self.spec.learner.seed)
        noise_std = _tensor(self._residual_scale())  # (n_out,)
        y_ctx = _tensor(y_old[-L:]).expand(K + 1, L, -1).clone()  # (K+1, L, n_out); row 0 mean
        u_ctx = _tensor(u_old[-L:]).expand(K + 1, L, -1).clone()
        u_future, dts = _tensor(inputs), _tensor(np.array(np.broadcast_to(dt, (H,))))
        paths = torch.empty(K + 1, H, y_ctx.shape[-1], dtype=DTYPE)
        for h in range(H):
            u_h = u_future[h].expand(K + 1, -1)
            y_next = self.model(y_ctx, u_ctx, u_h, dts[h].expand(K + 1))
            noise = torch.randn(K, y_next.shape[-1], generator=gen, dtype=DTYPE) * noise_std
            y_next = torch.cat([y_next[:1], y_next[1:] + noise])
            paths[:, h] = y_next
            y_ctx = torch.cat([y_ctx[:, 1:], y_next[:, None]], dim=1)
            u_ctx = torch.cat([u_ctx[:, 1:], u_h[:, None]], dim=1)
        return paths[0].numpy(), paths[1:].std(dim=0).numpy()

    def _residual_scale(self) -> np.ndarray:
        stats = self.monitor.summary()["outputs"]
        return np.array([(stats[name]["twin"].get("ew_rmse") or 0.0) for name in self.spec.outputs])

    # -- reading ------------------------------------------------------------------------------
    @property
    def context_ts(self) -> float | None:
        ts = self.learner.window.ts  # the newest of `context_arrays()`
        return float(ts[-1]) if ts.shape[0] else None

    def parameters(self) -> dict[str, float | None]:
        """Named parameters in channel units; None for those the first guess has yet to set."""
        values = self.model.named_values()
        if self.guessed is None:
            given = set(self.spec.model.params)
            return {name: (v if name in given else None) for name, v in values.items()}
        return values

    def learner_summary(self) -> dict:
        return {"method": self.learner.method, **self.learner.summary()}

    def metrics(self) -> dict:
        """Drift metrics: error of the twin and of its frozen first guess per output, and
        parameter change since the first converged estimate and over recent versions."""
        summary = self.monitor.summary()
        return {
            "outputs": summary["outputs"],
            "alarms": summary["alarms"],
            "parameters": self.tracker.summary(),
            "late": {"skipped": self.late_skipped},
        }

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "model": self.model.state_dict(),
            "frozen": self.frozen.state_dict(),
            "learner": self.learner.state_dict(),
            "input_scaler": self.input_scaler.state_dict(),
            "output_scaler": self.output_scaler.state_dict(),
            "monitor": self.monitor.state_dict(),
            "tracker": self.tracker.state_dict(),
            "watermark": self.watermark,
            "guessed": self.guessed,
            "guess_seq": self.guess_seq,
            "settling": [list(row) for row in self.settling],
            "late_skipped": self.late_skipped,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Twin:
        spec = TwinSpec.from_dict(state["spec"])
        if spec.learner.method is None:  # written before specs named it
            spec = with_method(spec, legacy_method(spec.model.kind))
        twin = cls(spec)
        twin.model.load_state_dict(state["model"])
        twin.frozen.load_state_dict(state["frozen"])
        twin.learner.load_state_dict(state["learner"])
        twin.input_scaler.load_state_dict(state["input_scaler"])
        twin.output_scaler.load_state_dict(state["output_scaler"])
        twin.monitor.load_state_dict(state["monitor"])
        twin.tracker.load_state_dict(state["tracker"])
        twin.watermark = int(state["watermark"])
        twin.guessed = state["guessed"]
        twin.guess_seq = int(state.get("guess_seq", 0))
        twin.settling = [list(row) for row in state.get("settling", [])]
        twin.late_skipped = int(state.get("late_skipped", 0))
        return twin

    def to_bytes(self) -> bytes:
        """The state as checkpoint bytes (`twin.checkpoint`: plain values, no code)."""
        return checkpoint.dumps(self.state_dict())

    @classmethod
    def from_bytes(cls, blob: bytes) -> Twin:
        """The twin of checkpoint bytes, in either format ever stored."""
        return cls.from_state_dict(checkpoint.loads(blob))


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=DTYPE)
