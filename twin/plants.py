"""Reference plants: simulators whose structure matches the twin's models exactly, for tests,
the demo and benchmarks.

Convention (shared with `twin.models`): the state is the output vector, and over the interval
dt_k from observation k-1 to k the input of observation k-1 is held (zero-order hold), so
x_k = Phi(theta_k, dt_k) x_{k-1} + Gamma(theta_k, dt_k) [u_{k-1}; 1] + e_k exactly, where e_k is
process noise (equation error) of std `noise`. The one-step prediction with the true parameters
is therefore optimal and its error variance, noise^2, is the noise floor. Observations may add
sensor noise and spikes on top of the state. `output_scale`/`input_scale` express the same
system in other units; parameters reported by `true_params` and `Simulation.params` are in the
channels' (scaled) units, the ones a twin would find. All randomness comes from
`np.random.default_rng(seed)`; `stream` continues exactly where a `simulate` of the same length
would stop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from twin.observations import Observations


@dataclass(frozen=True)
class Drift:
    """How one parameter moves from observation to observation; a list of them composes.

    Random walks move the base value (in log space for a positive value, else by steps of
    std * |value0|; `additive=True`: steps of `std` in the parameter's own units); ramps
    (value0 * (1 + rate * k)), steps (factor from observation `at` on) and seasons
    (1 + amplitude * sin(2 pi k / period)) then multiply it.
    """

    kind: str  # "random_walk", "ramp", "step" or "seasonal"
    std: float = 0.0
    rate: float = 0.0
    at: int = 0
    factor: float = 1.0
    additive: bool = False
    amplitude: float = 0.0
    period: float = 1.0

    @classmethod
    def random_walk(cls, std: float, additive: bool = False) -> Drift:
        return cls("random_walk", std=float(std), additive=additive)

    @classmethod
    def ramp(cls, rate: float) -> Drift:
        return cls("ramp", rate=float(rate))

    @classmethod
    def step(cls, at: int, factor: float) -> Drift:
        return cls("step", at=int(at), factor=float(factor))

    @classmethod
    def seasonal(cls, amplitude: float, period: float) -> Drift:
        """A periodic swing of +-amplitude (relative) with `period` observations."""
        if not (0 <= amplitude < 1 and period > 0):
            raise ValueError("a season needs 0 <= amplitude < 1 and period > 0")
        return cls("seasonal", amplitude=float(amplitude), period=float(period))

    def apply(self, value0: float, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """(n,) values at observations 0..n-1, starting at `value0`."""
        return ParamPath(value0, [self], rng or np.random.default_rng(0)).take(n)


class ParamPath:
    """One parameter's values at observations 0, 1, 2, ... under a list of drifts, produced in
    chunks: consecutive `take` calls continue one path, the same whatever the chunk sizes."""

    def __init__(self, value0: float, drifts: Sequence[Drift], rng: np.random.Generator):
        self.value0 = float(value0)
        self.drifts = list(drifts)
        self.walks = [d for d in self.drifts if d.kind == "random_walk"]
        self.rng = rng
        self.k = 0
        self.cum = np.zeros(len(self.walks))  # summed standard-normal steps of each walk

    def take(self, n: int) -> np.ndarray:
        k = self.k + np.arange(n)  # (n,) observation indices
        z = self.rng.standard_normal((n, len(self.walks)))  # (n, walks)
        if self.k == 0 and n:
            z[0] = 0.0  # the path starts at value0
        cum = np.cumsum(np.vstack([self.cum[None], z]), axis=0)[1:]  # (n, walks), sequential
        if n:
            self.cum = cum[-1]
        log_move, add_move = np.zeros(n), np.zeros(n)
        for w, d in enumerate(self.walks):
            if d.additive:
                add_move += d.std * cum[:, w]
            elif self.value0 > 0:
                log_move += d.std * cum[:, w]
            else:
                add_move += d.std * (abs(self.value0) or 1.0) * cum[:, w]
        v = self.value0 * np.exp(log_move) + add_move
        for d in self.drifts:
            if d.kind == "ramp":
                v = v * (1.0 + d.rate * k)
            elif d.kind == "step":
                v = np.where(k >= d.at, v * d.factor, v)
            elif d.kind == "seasonal":
                v = v * (1.0 + d.amplitude * np.sin(2 * np.pi * k / d.period))
        self.k += n
        return v


@dataclass(frozen=True)
class Simulation:
    """A simulated run: the observations, the true parameters in force at each observation (the
    ones that produced it from the previous one) in channel units, the noise floor (the
    process-noise variance averaged over outputs, sensor noise and spikes excluded), and the
    oracle: each observation's one-step prediction from the true parameters and the previous
    true state, (n, n_out), NaN for the first. Without sensor noise the oracle is the optimal
    one-step predictor, and `observations.outputs - oracle` is the realized process noise."""

    observations: Observations
    params: dict[str, np.ndarray]
    noise_floor: float
    plant: Plant
    oracle: np.ndarray

    def spec_dict(self, **model_options: Any) -> dict[str, Any]:
        return self.plant.spec_dict(**model_options)


class Plant:
    """Base of the reference plants. Subclasses set the class attributes, `_transition` and
    `_to_units` (physical parameters to the channels' units).

    Options: `dt` nominal seconds and `jitter` (dt_k = dt * U(1 - jitter, 1 + jitter)); `noise`
    process noise std per output and `sensor_noise` measurement noise std, in physical output
    units; `spikes` the probability per measurement of an outlier of `spike_size * noise`;
    excitation within `input_mean` +- `input_amplitude`: random levels held for `hold` samples
    (inclusive range) plus a sinusoid of `period` samples; `output_scale`/`input_scale` units;
    `t0` the first timestamp; `drift` {param: [Drift, ...]}.
    """

    kind: ClassVar[str]  # the twin model kind with the same structure
    model_options: ClassVar[dict[str, Any]] = {}
    inputs: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[str, ...]]
    positive: ClassVar[tuple[str, ...]] = ()  # parameters that must stay positive

    def __init__(
        self,
        params: dict[str, float],
        *,
        dt: float,
        noise: float | Sequence[float],
        input_mean: float | Sequence[float],
        input_amplitude: float | Sequence[float],
        drift: dict[str, list[Drift]] | None = None,
        jitter: float = 0.0,
        sensor_noise: float | Sequence[float] = 0.0,
        spikes: float = 0.0,
        spike_size: float = 20.0,
        hold: tuple[int, int] = (5, 60),
        period: float = 400.0,
        output_scale: float = 1.0,
        input_scale: float | Sequence[float] = 1.0,
        t0: float = 1.7e9,
    ):
        n_in, n_out = len(self.inputs), len(self.outputs)
        self.params = {k: float(v) for k, v in params.items()}
        self.drift = {k: list(v) for k, v in (drift or {}).items()}
        unknown = set(self.drift) - set(self.params)
        if unknown:
            raise ValueError(f"drift names unknown parameters {sorted(unknown)}")
        for name in self.positive:
            if not self.params[name] > 0:
                raise ValueError(f"{name} must be positive")
        if not (dt > 0 and 0 <= jitter <= 0.9 and 0 <= spikes <= 1 and output_scale > 0):
            raise ValueError("need dt > 0, 0 <= jitter <= 0.9, 0 <= spikes <= 1, output_scale > 0")
        if not (1 <= hold[0] <= hold[1] and period > 0):
            raise ValueError("need 1 <= hold[0] <= hold[1] and period > 0")
        self.dt, self.jitter, self.t0 = float(dt), float(jitter), float(t0)
        self.noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), (n_out,)).copy()
        self.sensor_noise = np.broadcast_to(np.asarray(sensor_noise, float), (n_out,)).copy()
        self.spikes, self.spike_size = float(spikes), float(spike_size)
        self.input_mean = np.broadcast_to(np.asarray(input_mean, float), (n_in,)).copy()
        self.input_amplitude = np.broadcast_to(np.asarray(input_amplitude, float), (n_in,)).copy()
        self.hold, self.period = (int(hold[0]), int(hold[1])), float(period)
        self.output_scale = float(output_scale)
        self.input_scale = np.broadcast_to(np.asarray(input_scale, float), (n_in,)).copy()
        if (self.input_scale <= 0).any() or (self.noise < 0).any() or (self.sensor_noise < 0).any():
            raise ValueError("input scales must be positive and noise levels non-negative")

    @property
    def channels(self) -> tuple[list[str], list[str]]:
        return list(self.inputs), list(self.outputs)

    @property
    def noise_floor(self) -> float:
        """Variance of the optimal one-step prediction error, averaged over outputs."""
        return float(np.mean((self.noise * self.output_scale) ** 2))

    def spec_dict(self, **model_options: Any) -> dict[str, Any]:
        """A spec for `TwinSpec.from_dict` with this plant's channels and model kind (no params)."""
        model = {"kind": self.kind, **self.model_options, **model_options}
        return {"inputs": list(self.inputs), "outputs": list(self.outputs), "model": model}

    def true_params(self, k: int, seed: int = 0) -> dict[str, float]:
        """Parameters (channel units) in force at observation k of a run with this seed."""
        run = _Run(self, seed)
        values = {name: path.take(k + 1)[-1:] for name, path in run.paths.items()}
        return {name: float(v[0]) for name, v in self._to_units(values).items()}

    def simulate(self, n: int, seed: int = 0) -> Simulation:
        run = _Run(self, seed)
        obs, params = run.next(n)
        return Simulation(obs, params, self.noise_floor, self, run.oracle)

    def stream(self, batch: int = 100, seed: int = 0) -> Iterator[Observations]:
        """Observations batches forever, the drift continuing (the first `simulate` run, cut up)."""
        run = _Run(self, seed)
        while True:
            yield run.next(batch)[0]

    # -- subclass hooks: physical units, arrays over observations ---------------------------------
    def _transition(self, theta: dict[str, np.ndarray], dt: np.ndarray):
        """(n, n_out, n_out) Phi and (n, n_out, n_in + 1) Gamma of the exact discretization."""
        raise NotImplementedError

    def _to_units(self, theta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class _Run:
    """The state of one seeded run of a plant; `next(n)` produces the following n observations."""

    def __init__(self, plant: Plant, seed: int):
        self.plant = plant
        n_in = len(plant.inputs)
        rngs = np.random.default_rng(seed).spawn(4 + n_in + len(plant.params))
        self.rng_dt, self.rng_noise, self.rng_sensor, self.rng_spikes = rngs[:4]
        self.rng_u = rngs[4 : 4 + n_in]
        self.paths = {
            name: ParamPath(v0, plant.drift.get(name, []), rng)
            for (name, v0), rng in zip(plant.params.items(), rngs[4 + n_in :], strict=True)
        }
        self.phase = np.array([r.uniform(0.0, 2 * np.pi) for r in self.rng_u])
        self.level, self.remaining = np.zeros(n_in), np.zeros(n_in, dtype=np.int64)
        self.k, self.t = 0, plant.t0
        self.x: np.ndarray | None = None  # state at the last observation, physical units
        self.oracle = np.empty((0, len(plant.outputs)))  # (k, n_out) noise-free predictions
        self.u_prev = np.zeros(n_in)

    def next(self, n: int) -> tuple[Observations, dict[str, np.ndarray]]:
        p = self.plant
        j = p.jitter
        steps = p.dt * self.rng_dt.uniform(1.0 - j, 1.0 + j, n)  # (n,)
        if self.k == 0 and n:
            steps[0] = 0.0
        ts = np.cumsum(np.concatenate([[self.t], steps]))  # sequential sums: chunk-invariant
        dt = np.diff(ts)  # (n,) the intervals a twin will see, after rounding
        ts = ts[1:]
        u = self._inputs(n)  # (n, n_in)
        theta = {name: path.take(n) for name, path in self.paths.items()}
        for name in p.positive:
            if not (theta[name] > 0).all():
                raise ValueError(f"drift drives {name} to a non-positive value")
        phi, gamma = p._transition(theta, np.where(dt > 0, dt, p.dt))
        u_prev = np.vstack([self.u_prev[None], u[:-1]])  # (n, n_in): held over each interval
        clean = np.einsum("nij,nj->ni", gamma, np.hstack([u_prev, np.ones((n, 1))]))
        drive = clean + self.rng_noise.standard_normal((n, len(p.outputs))) * p.noise
        x = np.empty((n, len(p.outputs)))  # (n, n_out) states
        oracle = np.full_like(x, np.nan)  # (n, n_out) noise-free one-step predictions
        for i in range(n):
            if self.k + i == 0:  # start at rest under the first input and parameters
                rest = gamma[0] @ np.append(u[0], 1.0)
                x[i] = np.linalg.lstsq(np.eye(len(p.outputs)) - phi[0], rest, rcond=None)[0]
                continue
            x_prev = x[i - 1] if i else self.x
            x[i] = phi[i] @ x_prev + drive[i]
            oracle[i] = phi[i] @ x_prev + clean[i]
        self.oracle = np.vstack([self.oracle, oracle * p.output_scale])
        y = x + self.rng_sensor.standard_normal(x.shape) * p.sensor_noise
        spikes = self.rng_spikes.random((*x.shape, 2))  # (n, n_out, [occurs, sign])
        sign = np.where(spikes[..., 1] < 0.5, -1.0, 1.0)
        y += (spikes[..., 0] < p.spikes) * sign * p.spike_size * p.noise
        seq = self.k + 1 + np.arange(n)
        obs = Observations(ts, u * p.input_scale, y * p.output_scale, seq)
        if n:
            self.k, self.t, self.x, self.u_prev = self.k + n, ts[-1], x[-1], u[-1]
        return obs, p._to_units(theta)

    def _inputs(self, n: int) -> np.ndarray:
        """(n, n_in) excitation: random steps held 'hold' samples, plus a slow sinusoid."""
        p = self.plant
        levels = np.empty((n, len(p.inputs)))
        for c, rng in enumerate(self.rng_u):
            pos = 0
            while pos < n:
                if self.remaining[c] == 0:
                    self.remaining[c] = rng.integers(p.hold[0], p.hold[1] + 1)
                    self.level[c] = rng.uniform(-1.0, 1.0)
                take = min(int(self.remaining[c]), n - pos)
                levels[pos : pos + take, c] = self.level[c]
                self.remaining[c] -= take
                pos += take
        k = self.k + np.arange(n)[:, None]  # (n, 1)
        wave = np.sin(2 * np.pi * k / p.period + self.phase)  # (n, n_in)
        return p.input_mean + p.input_amplitude * (0.7 * levels + 0.3 * wave)


class FirstOrderPlant(Plant):
    """y' = (K u + b - y) / tau; input [u], output [y]; the `first_order` kind."""

    kind = "first_order"
    inputs, outputs = ("u",), ("y",)
    positive = ("K", "tau")

    def __init__(self, K: float = 2.0, tau: float = 20.0, b: float = 1.0, **options: Any):
        defaults = dict(dt=1.0, noise=0.02, input_mean=1.0, input_amplitude=1.0)
        super().__init__({"K": K, "tau": tau, "b": b}, **{**defaults, **options})

    def _transition(self, theta, dt):
        a = np.exp(-dt / theta["tau"])  # (n,)
        gain = -np.expm1(-dt / theta["tau"])
        gamma = np.stack([gain * theta["K"], gain * theta["b"]], axis=-1)  # (n, 2)
        return a[:, None, None], gamma[:, None, :]

    def _to_units(self, theta):
        ys, us = self.output_scale, self.input_scale[0]
        return {"K": theta["K"] * ys / us, "tau": theta["tau"], "b": theta["b"] * ys}


class ThermalRCPlant(Plant):
    """C T' = (T_amb - T) / R + Q; inputs [Q, T_amb], output [T]; the `thermal_rc` kind.

    `input_scale` scales the heat Q only: T_amb is a temperature, in the output's units.
    """

    kind = "thermal_rc"
    inputs, outputs = ("Q", "T_amb"), ("T",)
    positive = ("R", "C")

    def __init__(self, R: float = 0.05, C: float = 4000.0, **options: Any):
        defaults = dict(dt=10.0, noise=0.05, input_mean=(200.0, 20.0), input_amplitude=(200.0, 5.0))
        options = {**defaults, **options}
        q_scale = float(options.pop("input_scale", 1.0))
        out_scale = float(options.get("output_scale", 1.0))
        super().__init__({"R": R, "C": C}, input_scale=(q_scale, out_scale), **options)

    def _transition(self, theta, dt):
        tau = theta["R"] * theta["C"]  # (n,)
        a = np.exp(-dt / tau)
        gain = -np.expm1(-dt / tau)
        gamma = np.stack([gain * theta["R"], gain, np.zeros_like(gain)], axis=-1)  # (n, 3)
        return a[:, None, None], gamma[:, None, :]

    def _to_units(self, theta):
        ratio = self.output_scale / self.input_scale[0]  # output units per heat unit
        return {"R": theta["R"] * ratio, "C": theta["C"] / ratio}


class MassSpringDamperPlant(Plant):
    """m x'' = F - c x' - k x; input [F], outputs [x, v]; the `mass_spring_damper` kind.

    Exact zero-order hold by the Van Loan matrix exponential of [[A, B], [0, 0]] dt.
    """

    kind = "mass_spring_damper"
    inputs, outputs = ("F",), ("x", "v")
    positive = ("m", "c", "k")

    def __init__(self, m: float = 1.0, c: float = 0.4, k: float = 2.0, **options: Any):
        defaults = dict(dt=0.1, noise=(0.004, 0.008), input_mean=0.0, input_amplitude=1.0)
        super().__init__({"m": m, "c": c, "k": k}, **{**defaults, **options})

    def _transition(self, theta, dt):
        n = dt.shape[0]
        m, c, k = theta["m"], theta["c"], theta["k"]
        aug = np.zeros((n, 4, 4))  # [[A, B], [0, 0]] with B acting on [F, 1]
        aug[:, 0, 1] = 1.0
        aug[:, 1, 0], aug[:, 1, 1], aug[:, 1, 2] = -k / m, -c / m, 1.0 / m
        expm = torch.linalg.matrix_exp(torch.from_numpy(aug * dt[:, None, None])).numpy()
        return expm[:, :2, :2], expm[:, :2, 2:]

    def _to_units(self, theta):
        ratio = self.input_scale[0] / self.output_scale  # force units per length unit
        return {name: theta[name] * ratio for name in ("m", "c", "k")}


class LinearPlant(Plant):
    """ARX(1,1): y_t = a y_{t-1} + b u_{t-1} + c + e_t, regularly sampled; the `arx` kind with
    na = nb = nk = 1, the plant on which a Kalman filter is the optimal tracker."""

    kind = "arx"
    model_options = {"na": 1, "nb": 1, "nk": 1}
    inputs, outputs = ("u",), ("y",)

    def __init__(self, a: float = 0.9, b: float = 0.5, c: float = 0.0, **options: Any):
        defaults = dict(dt=1.0, noise=0.1, input_mean=0.0, input_amplitude=1.0)
        options = {**defaults, **options}
        if options.get("jitter", 0.0):
            raise ValueError("LinearPlant is regularly sampled: jitter must be 0")
        super().__init__({"a": a, "b": b, "c": c}, **options)

    def _transition(self, theta, dt):
        gamma = np.stack([theta["b"], theta["c"]], axis=-1)  # (n, 2)
        return theta["a"][:, None, None], gamma[:, None, :]

    def _to_units(self, theta):
        ys, us = self.output_scale, self.input_scale[0]
        return {"a": theta["a"], "b": theta["b"] * ys / us, "c": theta["c"] * ys}
