"""Error metrics of the tracking benchmark and the tables it prints (rich when installed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RECOVERY_WINDOW = 25  # observations in the rolling MSE, and how long it must stay low
RECOVERY_LEVEL = 1.5  # times the noise floor


@dataclass
class Row:
    method: str
    excess_ratio: float
    mse_over_floor: float
    param_error: float | None
    recovery: str  # observations to recover after the step, "never", "n/a" or "-" (no step)
    updates_per_s: float
    setting: str = ""


def excess_mse(preds: np.ndarray, oracle: np.ndarray) -> float:
    """Mean squared distance of one-step predictions from the oracle's (the true parameters'),
    over rows and outputs; preds, oracle (N, n_out).

    The noise is independent of a prequential prediction, so E[MSE] = noise^2 + E[this]: it is
    the error above the noise floor, (MSE - noise^2), measured without the sampling error of
    the realized noise power (about 2% of noise^2 over 4000 observations, as large as a good
    tracker's whole excess).
    """
    return float(np.nanmean((preds - oracle) ** 2))


def excess_ratio(excess: float, excess_ref: float) -> float:
    """Excess MSE over the reference's: 1 is as good as the reference, < 1 better."""
    return excess / excess_ref


def rel_param_error(hat: np.ndarray, truth: np.ndarray) -> float:
    """Mean over time and parameters of |hat - truth| / |truth|; hat, truth (T, P).

    Parameters whose true value is zero somewhere are left out (their relative error is undefined).
    """
    keep = np.all(truth != 0, axis=0)
    rel = np.abs(hat[:, keep] - truth[:, keep]) / np.abs(truth[:, keep])  # (T, P')
    return float(np.nanmean(rel))


def recovery(sq_err: np.ndarray, step_at: int, floor: float) -> int | None:
    """Observations after an abrupt change until the rolling RECOVERY_WINDOW-observation MSE is
    within RECOVERY_LEVEL x noise^2 and stays there for RECOVERY_WINDOW more observations.

    sq_err: (N,) squared one-step errors (mean over outputs). Only windows that lie wholly after
    the change count, so the smallest possible answer is RECOVERY_WINDOW.
    """
    w = RECOVERY_WINDOW
    after = np.nan_to_num(sq_err[step_at:], nan=np.inf)
    if after.shape[0] < 2 * w:
        return None
    csum = np.concatenate([[0.0], np.cumsum(after)])
    rolling = (csum[w:] - csum[:-w]) / w  # (M,) rolling[i] covers after[i : i + w]
    good = rolling <= RECOVERY_LEVEL * floor
    for i in range(good.shape[0] - w):
        if good[i : i + w + 1].all():
            return i + w
    return None


def recovery_text(sq_err: np.ndarray, step_at: int, floor: float, before: int = 200) -> str:
    """`recovery` for a table; "n/a" when the method's MSE over the `before` observations ahead
    of the change was already above RECOVERY_LEVEL x noise^2 (there is no level to return to)."""
    if np.nanmean(sq_err[max(step_at - before, 0) : step_at]) > RECOVERY_LEVEL * floor:
        return "n/a"
    k = recovery(sq_err, step_at, floor)
    return "never" if k is None else str(k)


def print_table(title: str, rows: list[Row]) -> None:
    header = ["method", "excess MSE ratio", "MSE / noise^2", "param error", "recovery (obs)"]
    header += ["updates/s", "setting"]
    body = [
        [
            r.method,
            f"{r.excess_ratio:.2f}",
            f"{r.mse_over_floor:.3f}",
            "n/a" if r.param_error is None else f"{100 * r.param_error:.1f}%",
            r.recovery,
            f"{r.updates_per_s:,.0f}",
            r.setting,
        ]
        for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _plain_table(title, header, body)
        return
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i in (0, len(header) - 1) else "right")
    for line in body:
        table.add_row(*line)
    Console(width=max(120, len(title) + 4)).print(table)


def _plain_table(title: str, header: list[str], body: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    print(title)
    for line in [header, ["-" * w for w in widths], *body]:
        cells = [
            c.ljust(w) if i in (0, len(line) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  " + "  ".join(cells))


def print_targets(targets: list[tuple[str, bool]]) -> None:
    print("\nTargets")
    for text, ok in targets:
        print(f"  {'PASS' if ok else 'MISS'}  {text}")
