"""The linear plants over several seeds, and the targets: one seed's ratio to the Kalman filter
varies by 10-20% with the noise drawn, so the linear targets are judged on the mean over seeds,
with the worst seed printed beside it."""

from __future__ import annotations

import numpy as np


def print_seed_tables(ratios: dict[str, dict], seeds: list[int]) -> None:
    for scenario, per_twin in ratios.items():
        print(f"{scenario}: excess MSE ratio vs the Kalman filter, by seed")
        head = "".join(f"{s:>7}" for s in seeds)
        print(f"  {'twin':<22}{head}{'mean':>7}{'worst':>7}")
        for label, values in per_twin.items():
            cells = "".join(f"{v:7.2f}" for v in values)
            print(f"  {label:<22}{cells}{np.mean(values):7.2f}{max(values):7.2f}")
        print()


def _over_seeds(values: list[float]) -> str:
    return f"mean {np.mean(values):.2f}x, worst {max(values):.2f}x over {len(values)} seed(s)"


def check_targets(results, ratios: dict[str, dict], timing, twins) -> list[tuple[str, bool]]:
    """The issue's targets as (text with the measured values, met) for the `twins` labelled
    ("pgpe" is held to 2x the Kalman filter on the random walk, the others to 1.5x)."""
    walk, step = ratios["linear random walk"], ratios["linear step"]
    out = []
    for label in twins:
        limit = 2.0 if label == "pgpe" else 1.5
        over = _over_seeds(walk[label])
        text = f"linear random walk: {label} <= {limit:g}x KF excess MSE ({over})"
        out.append((text, float(np.mean(walk[label])) <= limit))
    for label in twins:
        values = step[label]
        text = f"step plant: {label} beats the KF tuned for drift ({_over_seeds(values)})"
        out.append((text, float(np.mean(values)) < 1.0))
    for sc, rows in results:
        if sc.linear:
            continue
        rel = {m: rows[m].mse_over_floor for m in (*twins, "rls", "river")}
        worst = max(rel[m] for m in twins)
        measured = ", ".join(f"{m} {v:.3f}" for m, v in rel.items())
        text = f"{sc.label}: the twins beat RLS and river (MSE/noise^2: {measured})"
        out.append((text, worst < min(rel["rls"], rel["river"])))
    slowest = {}  # threads: (median, kind) of the slowest kind under that many threads
    for (kind, threads), (median, *_) in timing.items():
        slowest[threads] = max(slowest.get(threads, (median, kind)), (median, kind))
    threads = min(slowest, key=lambda k: slowest[k][0])  # the target allows 1 or 2 threads
    median, kind = slowest[threads]
    text = (
        f"pgpe update < 5 ms (slowest kind {kind}: median {median:.2f} ms, "
        f"best at {threads} thread(s))"
    )
    out.append((text, median < 5.0))
    return out
