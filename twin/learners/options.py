"""Learner options: one table per method of type, default and range, checked with SpecError."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from twin.spec import SpecError


@dataclass(frozen=True)
class Option:
    """kind: "int", "float" or "choice"; [low, high] inclusive unless `open_low`; a default of
    None means "derived from other options" and also accepts an explicit null; a number option
    also accepts the strings in `words` (such as "auto")."""

    kind: str
    default: Any
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    choices: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> Any:
        """Return `value` as the option's type; raise SpecError naming `learner.<name>`."""
        field = f"learner.{name}"
        if value is None and self.default is None:
            return None
        if isinstance(value, str) and value in self.words:
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise SpecError(field, f"must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if self.kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise SpecError(field, f"must be an integer, got {value!r}")
        if not is_number or not _finite(value):
            also = "".join(f" or {w!r}" for w in self.words)
            raise SpecError(field, f"must be a finite number{also}, got {value!r}")
        too_low = value <= self.low if self.open_low else value < self.low
        if too_low or value > self.high:
            lower = f"> {self.low:g}" if self.open_low else f">= {self.low:g}"
            upper = f" and <= {self.high:g}" if math.isfinite(self.high) else ""
            raise SpecError(field, f"must be {lower}{upper}, got {value!r}")
        return int(value) if self.kind == "int" else float(value)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past float's range
        return False


def positive(default: float | None, high: float = math.inf) -> Option:
    return Option("float", default, 0.0, high, open_low=True)


WINDOW, WALK_WINDOW = 256, 512
HALF_LIFE = 64.0

COMMON_OPTIONS: dict[str, Option] = {
    # window and half_life default to WINDOW and HALF_LIFE; with a drift model to WALK_WINDOW
    # and no exponential forgetting (the walk is the forgetting; REML wants the longer window)
    "window": Option("int", None, 8, 100_000),
    "half_life": positive(None, 1e9),
    "smoothness": Option("float", 0.0, 0.0, 1e9),
    # Per-observation variance of the parameters' random walk in scaled coordinates, relative to
    # the residuals' (0: none, exponential forgetting alone; "auto": estimated from the data);
    # see twin.learners.walk.
    "drift": Option("float", 0.0, 0.0, 1.0, words=("auto",)),
    # A chunk of update_size observations is predicted with weights up to update_size old, so
    # small chunks track drift more closely (gradient with forgetting, linear random walk, seeds
    # 0-3: 1.64-1.87x the Kalman filter's excess MSE with 4, 1.45-1.71x with 1); below 4 the
    # update time caps throughput.
    "update_size": Option("int", 4, 1, 100_000),
    # After a detected change the fit sees only the new regime, so a large step is safe: 8 beat
    # 4 and 16 on bench/tracking.py's step plant (8 seeds).
    "boost": Option("float", 8.0, 1.0, 1000.0),
    # 80 updates of 4 observations: the boost lasts 320 observations, long enough for the window
    # to refill with data from after the change.
    "boost_updates": Option("int", 80, 0, 100_000),
    "huber": positive(1.345),
}


def derive_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """Fill in the defaults that depend on other options (`window`, `half_life` on `drift`)."""
    walk = options["drift"] != 0
    if options["window"] is None:
        options["window"] = WALK_WINDOW if walk else WINDOW
    if options["half_life"] is None:
        options["half_life"] = math.inf if walk else HALF_LIFE
    return options


def check_options(method: str, table: dict[str, Option], options: Any) -> dict[str, Any]:
    """Every option of `table`, given values checked and the rest defaulted."""
    if not isinstance(options, dict):
        raise SpecError("learner", "must be an object")
    for name, value in options.items():
        if name not in table:
            known = ", ".join(sorted(table))
            raise SpecError(f"learner.{name}", f"unknown option {name!r}; {method} takes {known}")
        table[name].check(name, value)
    return {
        name: opt.check(name, options[name]) if name in options else opt.default
        for name, opt in table.items()
    }
