"""The hand settings `bench/generalize.py --tuned` tries per learner and plant: built from the
options the learner's table has (half_life, drift, lr), so a learner added to the registry is
tuned over what it takes. Settings the learner refuses are left out."""

from __future__ import annotations

from twin.learners import LEARNERS
from twin.spec import SpecError

HALF_LIVES = (16, 64, 256)  # observations, with exponential forgetting (drift 0)
DRIFTS = (1e-6, 1e-4, 1e-2)  # random-walk variance per observation, relative, scaled coords
LR_FACTORS = (0.3, 3.0)  # times the default learning rate


def hand_settings(method: str) -> list[dict]:
    cls = LEARNERS[method]
    table = cls.OPTIONS
    settings: list[dict] = []
    if "half_life" in table:
        fixed = {"drift": 0} if "drift" in table else {}
        settings += [{**fixed, "half_life": h} for h in HALF_LIVES]
    if "drift" in table:
        settings += [{"drift": q} for q in DRIFTS]
    lr = table["lr"].default if "lr" in table else None
    if isinstance(lr, float):
        settings += [{"lr": round(lr * f, 6)} for f in LR_FACTORS]
    out = []
    for s in settings:
        try:
            cls.resolve_options(s)
        except SpecError:
            continue
        out.append(s)
    return out
