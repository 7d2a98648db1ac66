"""PGPE: policy gradients with parameter-based exploration (Sehnke et al. 2010,
"Parameter-exploring policy gradients", Neural Networks 23(4)).

The policy is a Gaussian N(center, diag(sigma^2)) over the model's flat parameters in scaled
coordinates z = theta / parameter_scales. Each iteration draws `popsize` antithetic pairs, scores
the center and every sample by the window loss in one batched model call, and steps the center
(Adam or ClipUp) and sigma (multiplicatively). No model gradients are needed.

Rewards (-loss) are divided by their standard deviation rather than replaced by centered ranks:
the loss is already robust (Huber on standardized residuals), and a linear normalization keeps
how much better one sample is than another, so the antithetic difference stays proportional to
the directional derivative and steps shrink smoothly near the optimum. On a first-order plant
with an abrupt and a slow drift it gave slightly lower one-step error than ranks.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import Tensor

from twin.learners.base import Learner, Pending
from twin.learners.objective import Objective
from twin.learners.optim import Adam, ClipUp, stack_optimizers
from twin.learners.options import COMMON_OPTIONS, Option, positive
from twin.learners.posterior import MAX_PARAMS as NEWTON_MAX_PARAMS
from twin.learners.posterior import Posterior, fresh_targets, newton_together
from twin.learners.together import StackedObjective, stack_key
from twin.models.base import DTYPE, TwinModel
from twin.spec import SpecError

ITERATIONS = 6
LR = 0.005  # with 4-observation updates: a smaller step per update, less jitter at rest
# Antithetic pairs per iteration: 2 per parameter, at least 8 and at most 16. On the linear
# plants of bench/tracking.py (3 parameters, seeds 0-7), 8 pairs tracked as 16 did within the
# seeds' spread (excess MSE over the Kalman filter's: random walk 1.70x against 1.69x, step
# 0.94x against 0.92x), as on the physical plants, and a mass_spring_damper update takes 13%
# less time.
POPSIZE_PER_PARAM, POPSIZE_MIN, POPSIZE_MAX = 2, 8, 16
SIGMA = 0.05
SIGMA_MIN = 1e-4
SIGMA_MAX = 0.5
LR_SIGMA = 0.1
# Directions are drawn a block of iterations at a time, at most this many numbers (2 MB) or one
# iteration's, so memory does not grow with `iterations`; the default settings fit one block.
BLOCK_SAMPLES = 1 << 18

OPTIONS: dict[str, Option] = {
    **COMMON_OPTIONS,
    "iterations": Option("int", ITERATIONS, 1, 10_000),
    "lr": positive(LR, 10.0),
    "popsize": Option("int", None, 1, 10_000),  # None: from the number of parameters
    "sigma": positive(SIGMA, 10.0),
    "sigma_min": positive(SIGMA_MIN, 10.0),
    "sigma_max": positive(SIGMA_MAX, 10.0),
    "lr_sigma": Option("float", LR_SIGMA, 0.0, 10.0),
    # "newton": the search distribution as a posterior (twin.learners.posterior). None: "newton"
    # for a model linear in its parameters (arx) of at most 16, whose loss the samples' second
    # differences give exactly, else "adam"
    "optimizer": Option("choice", None, choices=("adam", "clipup", "newton")),
    "max_speed": positive(None, 100.0),  # None: 2 * lr
}


class PGPELearner(Learner):
    """Gaussian search over the parameters with antithetic sampling and adaptive per-parameter
    sigma; the center is the model's parameters, sigma is relative to `parameter_scales()`."""

    method = "pgpe"
    OPTIONS = OPTIONS

    def __init__(self, model: TwinModel, options: dict, seed: int):
        super().__init__(model, options, seed)
        n = self.model.parameter_scales().numel()
        o = self.options
        if o["optimizer"] is None:
            linear = bool(getattr(model, "linear_in_parameters", False))
            o["optimizer"] = "newton" if linear and n <= NEWTON_MAX_PARAMS else "adam"
        elif o["optimizer"] == "newton" and n > NEWTON_MAX_PARAMS:
            raise SpecError(
                "learner.optimizer",
                f"newton takes models of at most {NEWTON_MAX_PARAMS} parameters; this one has {n}",
            )
        if self.newton and "update_size" not in options:
            # a filter folds each target in as it comes, so the next is predicted from all
            # before it (tuning seeds, 4 hard linear plants: 2.26x -> 1.77x, geometric mean)
            o["update_size"] = 1
        self.sigma = torch.full((n,), o["sigma"], dtype=DTYPE)
        self.optimizer = ClipUp(n) if o["optimizer"] == "clipup" else Adam(n)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.posterior = Posterior(n)  # the "newton" optimizer's filters

    @classmethod
    def derive_method_defaults(cls, options: dict, n_params: int | None) -> dict:
        if options["popsize"] is None:
            by_params = POPSIZE_MAX if n_params is None else POPSIZE_PER_PARAM * n_params
            options["popsize"] = min(max(by_params, POPSIZE_MIN), POPSIZE_MAX)
        return options

    @classmethod
    def resolve_options(cls, options: dict, n_params: int | None = None) -> dict:
        o = super().resolve_options(options, n_params)
        if o["sigma_min"] > o["sigma_max"]:
            raise SpecError("learner.sigma_min", "must not exceed sigma_max")
        if not o["sigma_min"] <= o["sigma"] <= o["sigma_max"]:
            raise SpecError("learner.sigma", "must lie within [sigma_min, sigma_max]")
        return o

    def on_drift(self, start_seq: int | None = None) -> None:
        """Boost lr and widen sigma (within sigma_max), both decaying back over `boost_updates`,
        and drop the optimizer's momentum (it belongs to the regime before the change)."""
        before = self.boost_factor(self.boost_left)  # a running boost is replaced, not stacked
        super().on_drift(start_seq)
        widen = self.boost_factor(self.boost_left) / before
        self.sigma = (self.sigma * widen).clamp(max=self.options["sigma_max"])
        self.optimizer.drop_momentum()

    def _learn(self, objective: Objective, lr: float, boost: float) -> tuple[Tensor, float]:
        return self.learn_together([Pending(self, objective, lr, boost, 0)])[0]

    def batch_key(self, objective: Objective) -> Hashable:
        """Twins with the same number of parameters and options step in lockstep; their losses
        share one model call where `stack_key` agrees too."""
        key = (self.sigma.numel(), tuple(sorted(self.options.items())), stack_key(objective))
        if self.options["optimizer"] == "newton":  # scored on the newest targets alone
            return (*key, fresh_targets(self, objective))
        return key

    @classmethod
    def learn_together(cls, pending: list[Pending]) -> list[tuple[Tensor, float]]:
        """Sehnke's iterations for K twins in lockstep, on (K, ...) tensors: each twin draws its
        own directions from its own generator and has its own sigma, optimizer state, step size
        and boost; a twin whose losses stop being informative (no spread, none finite) stops
        there, as it would alone, while the others go on."""
        learners: list[PGPELearner] = [p.learner for p in pending]  # type: ignore[misc]
        o = learners[0].options
        if o["optimizer"] == "newton":
            return newton_together(pending)
        n, P, iterations = o["popsize"], learners[0].sigma.numel(), o["iterations"]
        stacked = StackedObjective([p.objective for p in pending])
        scale, theta = stacked.scale, stacked.theta_prev  # (K, P)
        for p, loss in zip(pending, stacked.losses(theta[:, None])[:, 0].tolist(), strict=True):
            p.objective.center_loss = loss  # the loss before, scored together
        sigma = torch.stack([learner.sigma for learner in learners])
        optimizer = stack_optimizers([learner.optimizer for learner in learners])
        lrs = [p.lr for p in pending]
        max_speeds = [(o["max_speed"] or 2 * o["lr"]) * p.boost for p in pending]
        active = torch.ones(len(pending), dtype=torch.bool)
        block = max(BLOCK_SAMPLES // (n * P), 1)  # iterations whose directions are drawn at once
        for i in range(iterations):
            if i % block == 0:  # the next block's directions, drawn as it starts
                count = min(block, iterations - i)
                signed, to_gradient, to_log_sigma = _directions(learners, count)
            j = i % block
            z = theta / scale
            samples = z[:, None] + signed[:, j] * sigma[:, None]  # (K, 1 + 2n, P)
            losses = stacked.losses(stacked.clamp(samples * scale[:, None]))  # (K, 1 + 2n)
            finite = torch.isfinite(losses)
            if not bool(finite.all()):  # a non-finite loss counts as the worst finite one
                worst = torch.where(finite, losses, -math.inf).amax(dim=-1, keepdim=True)
                losses = torch.where(finite, losses, worst)
            spread = _std(losses)  # NaN where no loss is finite
            active = active & (spread > 0)
            if not bool(active.any()):
                break
            # Rewards are -losses divided by their standard deviation (see the module docstring).
            losses = (losses / spread[:, None])[:, None]  # (K, 1, 1 + 2n)
            # The loss gradient times sigma (Sehnke's symmetric estimate divided by sigma) is
            # O(1) whatever sigma is, so the optimizer's moments do not drift as sigma adapts.
            g_mu = (to_gradient[:, j] * losses).sum(dim=-1)  # (K, P)
            # sigma steps along d E[reward] / d log sigma (Sehnke's sigma gradient / sigma).
            widen = (to_log_sigma[:, j] * losses).sum(dim=-1).exp_()
            moved = (sigma * widen).clamp_(o["sigma_min"], o["sigma_max"])
            delta = optimizer.step(g_mu, lrs, max_speeds, active)
            keep = active[:, None]
            sigma = torch.where(keep, moved, sigma)
            theta = torch.where(keep, stacked.clamp((z - delta) * scale), theta)
        optimizer.write_back()
        loss_after = stacked.losses(theta[:, None])[:, 0]
        out = []
        for k, (learner, p) in enumerate(zip(learners, pending, strict=True)):
            # undo this update's share of boost
            decay = learner.boost_factor(learner.boost_left - 1) / p.boost
            learner.sigma = (sigma[k] * decay).clamp(o["sigma_min"], o["sigma_max"])
            out.append((theta[k].clone(), float(loss_after[k])))
        return out

    @property
    def newton(self) -> bool:
        return self.options["optimizer"] == "newton"

    def steps_with_lr(self) -> bool:
        return not self.newton  # its steps are Newton's

    def _sigma_summary(self) -> float:
        return float(self.sigma.mean())

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "sigma": self.sigma.clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "posterior": self.posterior.state_dict() if self.newton else None,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sigma = state["sigma"].clone().to(DTYPE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].clone())
        # A checkpoint without a bank (written by Adam, or before there was one: an arx pgpe
        # twin's, which runs newton now) starts it from the prior about its center.
        self.posterior = Posterior(self.sigma.numel())
        if self.newton and state.get("posterior") is not None:
            self.posterior.load_state_dict(state["posterior"])


def _directions(learners: list[PGPELearner], iterations: int) -> tuple[Tensor, Tensor, Tensor]:
    """Directions of K twins for their next `iterations` iterations, each drawn from its own
    generator, (K, ...): rows [0, zeta, -zeta] score the center, z + eps and z - eps, and the
    matrices that turn their losses into Sehnke's estimates of the center's and log sigma's
    gradients. The same numbers for a twin whatever K: elementwise operations, and a sum along
    the rows of its own block."""
    o = learners[0].options
    n, P = o["popsize"], learners[0].sigma.numel()
    zetas = [torch.randn(iterations, n, P, generator=x.generator, dtype=DTYPE) for x in learners]
    zetas = torch.stack(zetas)  # (K, iterations, n, P)
    zero = torch.zeros(len(learners), iterations, 1, P, dtype=DTYPE)
    signed = torch.cat([zero, zetas, -zetas], dim=2)
    # Sehnke's estimates are products with the losses l = [l0, l+, l-]:
    # signed.T @ l = sum_i zeta_i (l+_i - l-_i); with zeta2 = zeta^2 - 1 on rows 1.. and
    # minus their sum on row 0, zeta2.T @ l = sum_i (zeta_i^2 - 1) (l+_i + l-_i - 2 l0).
    zeta2 = signed * signed - 1
    zeta2[:, :, 0] = -zeta2[:, :, 1:].sum(dim=2)
    # laid out contiguously, as stacking each twin's made them: the sums along their last
    # dimension then take the same path as they did
    to_gradient = (signed.mT / (2 * n)).contiguous()  # (K, iterations, P, 1 + 2n)
    to_log_sigma = (zeta2.mT * (-o["lr_sigma"] / (2 * n))).contiguous()
    return signed, to_gradient, to_log_sigma


def _std(x: Tensor) -> Tensor:
    """(K, N) -> (K,) population standard deviation of each row, by sums along the row: torch's
    own `std` takes another path for several rows than for one, and a twin's numbers must not
    depend on how many twins share the call (products and sums along the last dimension, as
    everywhere in `learn_together`, do not)."""
    centered = x - x.sum(dim=-1, keepdim=True) / x.shape[-1]
    return ((centered * centered).sum(dim=-1) / x.shape[-1]).sqrt()
