"""The learner updates of many twins made together: prepared and learned in groups.

A small update costs the number of tensor operations, not their arithmetic (a `pgpe` update of
a physical twin is a few hundred operations on tensors of a few hundred numbers). Twins whose
updates have the same shapes and options (`Learner.batch_key`) are learned in one run of the
method's loop over stacked tensors (`Learner.learn_together`), so K twins cost about what one
does. A twin's update is the same whether it is learned alone or in a group of any size: its
numbers go through the same operations on a leading twin axis, and each keeps its own random
generator, optimizer state and step sizes.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from twin.learners.base import Learner, Pending, UpdateReport
from twin.learners.objective import Objective
from twin.learners.stack import Request, objectives_together
from twin.models.base import unflatten
from twin.observations import Observations

# Twins one batched step takes at most: its tensors grow with the group (a `gradient` group's
# Jacobians are twins x window x parameters), so a pass of more twins learns in several groups.
# Each twin's result is the same in any group.
GROUP_TWINS = 64


def update_together(
    learners: list[Learner], chunks: list[Observations]
) -> list[UpdateReport | Exception]:
    """`learner.update(chunk)` for each pair, the learning steps of compatible ones batched.
    What goes wrong is each twin's own: an update that raises gives its exception in place of
    its report, and a group whose batched step raises is learned again twin by twin (the
    step changes nothing before it returns), so only the twin at fault fails."""
    out: list[UpdateReport | Exception | None] = [None] * len(learners)
    groups: dict[object, list[int]] = defaultdict(list)
    prepared: dict[int, Pending] = {}
    requests: dict[int, Request] = {}
    for i, (learner, chunk) in enumerate(zip(learners, chunks, strict=True)):
        try:
            if type(learner).update is not Learner.update:  # its own update (kalman): alone
                out[i] = learner.update(chunk)
            else:
                requests[i] = learner.request(chunk)
        except Exception as exc:
            out[i] = exc
    objectives = _objectives(requests)
    for i, objective in objectives.items():
        try:
            if isinstance(objective, Exception):
                raise objective
            pending = learners[i].pending(objective, len(chunks[i]))
        except Exception as exc:
            out[i] = exc
            continue
        if isinstance(pending, UpdateReport):
            out[i] = pending
            continue
        prepared[i] = pending
        learner = learners[i]
        key = learner.batch_key(pending.objective)
        groups[(type(learner), key) if key is not None else ("alone", i)].append(i)
    for members in (
        g[k : k + GROUP_TWINS] for g in groups.values() for k in range(0, len(g), GROUP_TWINS)
    ):
        batch = [prepared[i] for i in members]
        learned: list = []
        try:
            learned = type(batch[0].learner).learn_together(batch)
        except Exception as exc:  # alone, it is the twin's; in a group, find the twin at fault
            learned = [exc] if len(batch) == 1 else [_alone(p) for p in batch]
        for i, outcome in zip(members, learned, strict=True):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                out[i] = prepared[i].learner.finish(prepared[i], *outcome)
            except Exception as exc:
                out[i] = exc
    return out  # type: ignore[return-value]


def _objectives(requests: dict[int, Request]) -> dict[int, Objective | Exception]:
    """The requests' objectives, built together (`objectives_together`); where that raises,
    one by one, so that only the twin at fault fails."""
    try:
        built = objectives_together(list(requests.values()))
        return dict(zip(requests, built, strict=True))
    except Exception:
        out: dict[int, Objective | Exception] = {}
        for i, request in requests.items():
            try:
                [out[i]] = objectives_together([request])
            except Exception as exc:
                out[i] = exc
        return out


def _alone(pending: Pending) -> tuple[Tensor, float] | Exception:
    try:
        return type(pending.learner).learn_together([pending])[0]
    except Exception as exc:
        return exc


def stack_key(objective: Objective) -> tuple | None:
    """What objectives must share to be scored in one model call (`StackedObjective`): a model
    that `stacks_twins`, the window's shape, the loss's settings; None where the model does not
    or the objective has a random-walk whitening of its own (scored one by one)."""
    model = objective.model
    if objective.walk is not None or not model.stacks_twins:
        return None
    return (
        type(model),
        tuple(objective.y.shape),
        tuple(a.shape for a in objective.args),
        objective.mask is None,
        objective.delta,
        objective.smoothness,
    )


class StackedObjective:
    """The losses of K objectives at once: `losses` (K, S, P) -> (K, S), row k scored by
    objective k exactly as `Objective.losses` would, its window stacked on a leading twin axis.

    Objectives with equal `stack_key` share one model call, their parameters (K, S) against
    their rows (K, 1, T); others are scored one by one."""

    def __init__(self, objectives: list[Objective]):
        self.objectives = objectives
        first = objectives[0]
        self.scale = torch.stack([o.scale for o in objectives])  # (K, P)
        self.low = torch.stack([o.low for o in objectives])
        self.high = torch.stack([o.high for o in objectives])
        self.theta_prev = torch.stack([o.theta_prev for o in objectives])
        key = stack_key(first)
        self.fused = key is not None and all(stack_key(o) == key for o in objectives[1:])
        if not self.fused:
            return
        self.model = first.model
        # (K, 1, T, ...) rows against (K, S) parameters
        parts = zip(*(o.args for o in objectives), strict=True)
        self.args = tuple(torch.stack(part)[:, None] for part in parts)
        n_out = first.y.shape[1]
        lead = (n_out, len(objectives), 1)
        self.y_rows = torch.stack([o.y_rows for o in objectives], dim=1)[:, :, None]  # (O,K,1,T)
        self.inv_s = torch.stack([o.inv_s for o in objectives], dim=1).reshape(lead + (1,))
        self.mask = None
        if first.mask is not None:  # (K, T, O) -> (O, K, 1, T) like the losses
            self.mask = torch.stack([o.mask for o in objectives]).permute(2, 0, 1)[:, :, None]
        self.w_mean = torch.stack([o.w_mean for o in objectives])[None, :, None]  # (1, K, 1, T)
        self.z_prev = torch.stack([o.z_prev for o in objectives])[:, None]  # (K, 1, P)
        self.delta, self.smoothness = first.delta, first.smoothness

    def clamp(self, theta: Tensor) -> Tensor:
        """Project (K, ..., P) raw parameters onto each objective's bounds."""
        shape = (theta.shape[0],) + (1,) * (theta.dim() - 2) + (theta.shape[-1],)
        return torch.clamp(theta, self.low.view(shape), self.high.view(shape))

    @torch.no_grad()
    def losses(self, thetas: Tensor) -> Tensor:
        """(K, S, P) -> (K, S)."""
        if not self.fused:
            return torch.stack([o.losses(t) for o, t in zip(self.objectives, thetas, strict=True)])
        yhat = self.model.forward_with(unflatten(self.model, thetas), *self.args)  # (K,S,T,O)
        rows = yhat.movedim(-1, 0)  # (O, K, S, T), as Objective._from_predictions lays them
        target = self.y_rows.expand_as(rows)
        h = torch.nn.functional.huber_loss(
            rows * self.inv_s, target, reduction="none", delta=self.delta
        )
        if self.mask is not None:
            h = torch.where(self.mask, h, 0.0)
        # a product and a sum along T, not a matmul: torch picks a matmul's kernel by the
        # batch's shape, and a twin's loss must not depend on how many share the call
        fit = (h * self.w_mean).sum(dim=-1).sum(dim=0)  # (K, S)
        if self.smoothness:
            jump = thetas / self.scale[:, None] - self.z_prev
            fit = fit + self.smoothness * (jump * jump).mean(dim=-1)
        return fit
