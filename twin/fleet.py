"""Many twins stepped together: each predicts and monitors its own observations, and their
learner updates are made together (`twin.learners.together`), chunk by chunk in lockstep.

A twin's result is the one `Twin.step` gives it alone: the same chunks, the same updates, in
the same order; only the learning steps of compatible twins share tensor operations, and so do
the other requests of their steps (`twin.requests`: the drift monitors' BOCPD detectors).
"""

from __future__ import annotations

from twin.learners.together import update_together
from twin.observations import Observations
from twin.replica import StepResult, Twin
from twin.requests import answer_together


def step_together(
    twins: list[Twin], observations: list[Observations], deadline: float | None = None
) -> list[StepResult | Exception]:
    """`twin.step(obs, deadline)` for each pair. What goes wrong is each twin's own: a twin
    whose step raises gives its exception in place of its result (and is left part-way, as
    `Twin.step` would leave it), and the others go on."""
    runs = [twin.stepping(obs, deadline) for twin, obs in zip(twins, observations, strict=True)]
    out: list[StepResult | Exception | None] = [None] * len(twins)
    live = list(range(len(twins)))
    reports: dict[int, object] = {}
    while live:
        wanted = {}  # twin index -> the chunk its learner should update on
        for i in live:
            try:
                answer = reports.get(i)
                if isinstance(answer, Exception):
                    wanted[i] = runs[i].throw(answer)  # raised where its update was made
                else:
                    wanted[i] = runs[i].send(answer)
            except StopIteration as done:
                out[i] = done.value
            except Exception as exc:
                out[i] = exc
        live = list(wanted)
        updates = [i for i in live if isinstance(wanted[i], Observations)]
        made = update_together([twins[i].learner for i in updates], [wanted[i] for i in updates])
        reports = dict(zip(updates, made, strict=True))
        others = [i for i in live if not isinstance(wanted[i], Observations)]
        reports.update(zip(others, answer_together([wanted[i] for i in others]), strict=True))
    return out  # type: ignore[return-value]
