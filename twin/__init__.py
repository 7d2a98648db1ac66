"""Tandem's numerical core: twin models, learners, drift metrics and reference plants.

Usable on its own from Python; imports torch and numpy, never the service.
"""

from twin.observations import Observations
from twin.spec import LearnerSpec, ModelSpec, SpecError, TwinSpec

__all__ = ["LearnerSpec", "ModelSpec", "Observations", "SpecError", "Twin", "TwinSpec"]


def __getattr__(name: str):
    if name == "Twin":  # imported lazily: it pulls in every model kind and learner
        from twin.replica import Twin

        return Twin
    raise AttributeError(name)
