"""Change point benchmark: do the twin's drift events locate the changes people see in real
series? The five series of the Turing Change Point Dataset (van den Burg and Williams 2020, "An
evaluation of change point detection algorithms") that river ships with their annotations and
at the paper's length (`river.drift.datasets`; its Apple and Brent series are the unsampled
originals, so the paper's annotations do not index them).

    python bench/tcpd.py [--margin 5] [--learner kalman] [--datasets run_log,occupancy]

Each series is fed to a twin as the service would feed it, in posts of 5 observations: an
autonomous `arx` twin (no inputs, one output per column of the series, `na: 1`, the default
learner or `--learner`'s), whose predicted change points are the `start_seq` of its drift
events. Beside it, in the same run: the paper's zero baseline (no change point at all) and
river's ADWIN and Page-Hinkley at their defaults on the raw series (one detector per column; a
change point where any fires). The score is the paper's F1 (its `metrics.f_measure`): the
start of the series counts as a change point for every method, precision is against the union
of the annotators, recall is averaged over annotators, a prediction within `margin`
observations of an annotation matches it, each at most once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from river import drift  # noqa: E402
from river.drift import datasets  # noqa: E402

from twin.learners import learner_method  # noqa: E402
from twin.observations import Observations  # noqa: E402
from twin.replica import Twin  # noqa: E402
from twin.spec import TwinSpec  # noqa: E402

torch.set_num_threads(2)

DATASETS = {
    "airline_passengers": datasets.AirlinePassengers,
    "bitcoin": datasets.Bitcoin,
    "occupancy": datasets.Occupancy,
    "run_log": datasets.RunLog,
    "uk_coal_employment": datasets.UKCoalEmploy,
}
POST = 5  # observations per post, as a gateway might send them


def load(name: str) -> tuple[np.ndarray, dict[str, list[int]]]:
    """The series (T, n_columns) and its annotations {annotator: [index, ...]} (0-based)."""
    dataset = DATASETS[name]()
    rows = []
    for _, y in dataset:
        rows.append(list(y.values()) if isinstance(y, dict) else [y])
    return np.asarray(rows, dtype=np.float64), dataset.annotations


# -- the paper's metric (TCPDBench, analysis/scripts/metrics.py) -------------------------------
def true_positives(truth: set[int], predictions: set[int], margin: int) -> set[int]:
    """Annotations matched by a prediction within `margin`, each prediction used at most once
    (the closest one to each annotation, annotations in ascending order)."""
    left, hits = set(predictions), set()
    for tau in truth:  # set order, as the paper's code iterates
        close = sorted((abs(tau - x), x) for x in left if abs(tau - x) <= margin)
        if close:
            hits.add(tau)
            left.remove(close[0][1])
    return hits


def f_measure(annotations: dict[str, list[int]], predictions, margin: int = 5) -> float:
    """van den Burg and Williams' F1: 0 is a change point of every annotator and every method;
    precision against the union of annotators, recall averaged over annotators."""
    per_annotator = [set(a) | {0} for a in annotations.values()]
    x = set(int(p) for p in predictions) | {0}
    union = set().union(*per_annotator)
    precision = len(true_positives(union, x, margin)) / len(x)
    recall = np.mean([len(true_positives(t, x, margin)) / len(t) for t in per_annotator])
    return float(2 * precision * recall / (precision + recall))


# -- the methods ------------------------------------------------------------------------------
def twin_spec(n_columns: int, learner: str | None = None) -> TwinSpec:
    """An autonomous `arx` twin of the series' columns, with its kind's default learner unless
    `learner` names one."""
    outputs = [f"y{j}" for j in range(n_columns)]
    spec = {"inputs": [], "outputs": outputs, "model": {"kind": "arx", "na": 1}}
    if learner:
        spec["learner"] = {"method": learner}
    return TwinSpec.from_dict(spec)


def twin_change_points(series: np.ndarray, learner: str | None = None) -> list[int]:
    """0-based indices where the twin's drift events say a change began (seq = index + 1, as
    the service numbers observations)."""
    twin = Twin.create(twin_spec(series.shape[1], learner))
    n = series.shape[0]
    seq = np.arange(1, n + 1)
    ts = seq.astype(np.float64)  # regular sampling: arx does not look at dt
    found = set()
    for start in range(0, n, POST):
        part = slice(start, start + POST)
        obs = Observations(ts[part], np.zeros((len(ts[part]), 0)), series[part], seq[part])
        found.update(e.start_seq - 1 for e in twin.step(obs).events)
    return sorted(found)


def river_change_points(series: np.ndarray, make) -> list[int]:
    """Indices where a river detector, one per column on the raw values, flags a change."""
    found = set()
    for j in range(series.shape[1]):
        detector = make()
        for i, x in enumerate(series[:, j]):
            detector.update(float(x))
            if detector.drift_detected:
                found.add(i)
    return sorted(found)


METHODS = {
    "twin": twin_change_points,
    "zero": lambda series: [],
    "adwin": lambda series: river_change_points(series, drift.ADWIN),
    "page_hinkley": lambda series: river_change_points(series, drift.PageHinkley),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margin", type=int, default=5)
    parser.add_argument("--learner", help="the twin's learner method (default: arx's default)")
    parser.add_argument("--datasets", help=f"comma-separated, among {', '.join(DATASETS)}")
    args = parser.parse_args()
    names = args.datasets.split(",") if args.datasets else list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")
    methods = {**METHODS, "twin": lambda series: twin_change_points(series, args.learner)}
    scores = {m: [] for m in methods}
    header = f"{'dataset':<20}" + "".join(f"{m:>14}" for m in methods) + "  twin's change points"
    learner = args.learner or twin_spec(1).learner.method or learner_method(twin_spec(1))
    print(f"TCPD F1 (margin {args.margin}, start counted, all annotators); twin: arx, {learner}")
    print(header)
    print("-" * len(header))
    for name in names:
        series, annotations = load(name)
        row, points = [], []
        for method, find in methods.items():
            predicted = find(series)
            if method == "twin":
                points = predicted
            scores[method].append(f_measure(annotations, predicted, args.margin))
            row.append(scores[method][-1])
        cells = "".join(f"{v:>14.3f}" for v in row)
        print(f"{name:<20}{cells}  {points}")
    print("-" * len(header))
    print(f"{'mean':<20}" + "".join(f"{np.mean(v):>14.3f}" for v in scores.values()))


if __name__ == "__main__":
    main()
