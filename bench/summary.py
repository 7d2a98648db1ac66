"""The tables of bench/generalize.py, printed as Markdown: per plant, summarized by group, the
hand-tuned settings beside the defaults, and the issue's targets."""

from __future__ import annotations

import numpy as np

GROUPS = ("linear", "physical", "nonlinear")
SHORT = {
    "kalman (estimated q, r)": "KF est.",
    "rls (best lam)": "RLS best",
    "river (best lr)": "river best",
}
TUNED_MARGIN = 1.1  # a default may lose at most 10% to the best hand setting


def _cell(value: float) -> str:
    if not np.isfinite(value):
        return "fail" if np.isnan(value) else "inf"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def print_plants(results, methods: list[str]) -> None:
    print("Per plant: excess MSE / the informed Kalman filter's (KF/floor: its own excess MSE")
    print("over the noise floor)\n")
    header = ["plant", "KF/floor", *(SHORT.get(m, m) for m in methods)]
    rows = [
        [r.label, f"{r.kf_over_floor:.2g}", *(_cell(r.ratios.get(m, np.nan)) for m in methods)]
        for r in results
    ]
    _table(header, rows)
    for r in results:
        if r.notes:
            print(f"  {r.seed}: {'; '.join(r.notes)}")
    print()


def group_stats(results, method: str, group: str | None = None) -> tuple[float, float, int]:
    """(median, worst, count) of a method's ratios over the plants of a group (None: all);
    a failed run counts as infinitely bad."""
    values = [
        np.nan_to_num(r.ratios.get(method, np.nan), nan=np.inf, posinf=np.inf)
        for r in results
        if group is None or r.group == group
    ]
    if not values:
        return np.nan, np.nan, 0
    return float(np.median(values)), float(np.max(values)), len(values)


def print_summary(results, methods: list[str]) -> None:
    groups = [(None, "all")] + [(g, g) for g in GROUPS if any(r.group == g for r in results)]
    counts = {name: group_stats(results, methods[0], g)[2] for g, name in groups}
    print("Summary: median / worst excess MSE ratio to the informed Kalman filter\n")
    header = ["method", *(f"{name} ({counts[name]})" for _, name in groups)]
    rows = []
    for m in methods:
        cells = []
        for g, _ in groups:
            median, worst, _ = group_stats(results, m, g)
            cells.append(f"{_cell(median)} / {_cell(worst)}")
        rows.append([SHORT.get(m, m), *cells])
    _table(header, rows)


def tuned_losses(results, method: str) -> list[float]:
    """Per plant: the default's ratio over the best hand setting's (> 1: the default loses)."""
    out = []
    for r in results:
        best = min(r.tuned[method][0], r.ratios.get(method, np.inf))
        out.append(np.nan_to_num(r.ratios.get(method, np.nan), nan=np.inf, posinf=np.inf) / best)
    return out


def print_tuned(results, learners: list[str]) -> None:
    print("Defaults against the best hand setting of the same learner on each plant")
    print("(ratios to the informed Kalman filter; loss = default / best hand setting)\n")
    header = ["plant", *(f"{m}: default / tuned (setting)" for m in learners)]
    rows = []
    for r in results:
        cells = []
        for m in learners:
            ratio, setting = r.tuned[m]
            cells.append(f"{_cell(r.ratios.get(m, np.nan))} / {_cell(ratio)} ({setting})")
        rows.append([str(r.seed), *cells])
    _table(header, rows)
    for m in learners:
        losses = tuned_losses(results, m)
        over = sum(v > TUNED_MARGIN for v in losses)
        print(
            f"  {m}: loss median {np.median(losses):.2f}, worst {max(losses):.2f}; "
            f"more than 10% on {over} of {len(losses)} plants"
        )
    print()


def targets(results) -> list[tuple[str, bool]]:
    """The issue's targets as (text with the measured values, met)."""
    out = []
    median, worst, count = group_stats(results, "default", "linear")
    if count:
        text = f"linear plants: default median <= 1.3x, worst <= 2x (median {median:.2f}, "
        out.append((text + f"worst {worst:.2f} over {count})", median <= 1.3 and worst <= 2.0))
        median, _, _ = group_stats(results, "pgpe", "linear")
        out.append((f"linear plants: pgpe median <= 1.5x ({median:.2f})", median <= 1.5))
    _, worst, count = group_stats(results, "default", "physical")
    if count:
        text = f"physical plants: default <= 1.2x on every plant (worst {worst:.2f} of {count})"
        out.append((text, worst <= 1.2))
    learners = [m for m in (results[0].tuned if results else {})]
    for m in learners:
        worst = max(tuned_losses(results, m))
        text = (
            f"{m}: default within 10% of the best hand setting on every plant (worst {worst:.2f})"
        )
        out.append((text, worst <= TUNED_MARGIN))
    return out
