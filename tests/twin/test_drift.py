"""Drift metrics and detectors: numbers against numpy and river, restarts, alarms."""

import json

import numpy as np
import pytest
from river.drift import ADWIN as RiverADWIN

from twin.drift import (
    ADWIN,
    BOCPD,
    DriftEvent,
    DriftMonitor,
    ErrorStats,
    PageHinkley,
    ParameterTracker,
)


def batches(n: int, sizes=(1, 7, 150, 33, 2, 64)):
    """Uneven consecutive slices covering range(n)."""
    start, i = 0, 0
    while start < n:
        stop = min(n, start + sizes[i % len(sizes)])
        yield slice(start, stop)
        start, i = stop, i + 1


def json_round_trip(state: dict) -> dict:
    return json.loads(json.dumps(state, allow_nan=False))


def detections(detector, xs) -> list[int]:
    return [i for i, x in enumerate(xs) if detector.update(float(x)) is not None]


def river_detections(xs) -> list[int]:
    detector, hits = RiverADWIN(delta=0.002, clock=16), []
    for i, x in enumerate(xs):
        detector.update(float(x))
        if detector.drift_detected:
            hits.append(i)
    return hits


# -- ErrorStats ---------------------------------------------------------------------------------
def ew_average(weights: np.ndarray):
    return lambda values: (weights * values).sum(0) / weights.sum()


def test_error_stats_match_numpy_over_the_window_and_with_exponential_weights():
    rng = np.random.default_rng(0)
    r = rng.normal(0.3, [1.0, 1e-3], size=(1000, 2))
    r[rng.random(1000) < 0.1] = np.nan  # rows the twin could not predict
    window, half_life = 100, 50.0
    stats = ErrorStats(2, window=window, half_life=half_life)
    beta = 0.5 ** (1 / half_life)
    for part in batches(len(r)):
        stats.update(r[part])
        seen = r[: part.stop][~np.isnan(r[: part.stop]).any(axis=1)]
        last = seen[-window:]
        weights = beta ** np.arange(len(seen) - 1, -1, -1)[:, None]  # (n_seen, 1), newest 1
        ew = ew_average(weights)
        summary = stats.summary(["a", "b"])
        for j, name in enumerate("ab"):
            got = summary[name]
            assert got["n"] == len(last) and got["total"] == len(seen)
            assert got["rmse"] == pytest.approx(np.sqrt(np.mean(last[:, j] ** 2)), rel=1e-10)
            assert got["mae"] == pytest.approx(np.mean(np.abs(last[:, j])), rel=1e-10)
            assert got["bias"] == pytest.approx(np.mean(last[:, j]), rel=1e-9)
            assert got["ew_rmse"] == pytest.approx(np.sqrt(ew(seen**2)[j]), rel=1e-10)
            assert got["ew_mae"] == pytest.approx(ew(np.abs(seen))[j], rel=1e-10)
            assert got["ew_bias"] == pytest.approx(ew(seen)[j], rel=1e-9)


def test_error_stats_first_observation_is_its_own_ew_average_and_empty_is_none():
    stats = ErrorStats(1)
    assert stats.summary(["y"])["y"]["rmse"] is None
    assert stats.summary(["y"])["y"]["n"] == 0
    stats.update(np.array([[np.nan]]))
    assert stats.summary(["y"])["y"]["ew_bias"] is None
    stats.update(np.array([[-2.0]]))
    got = stats.summary(["y"])["y"]
    assert got["ew_bias"] == pytest.approx(-2.0) and got["ew_rmse"] == pytest.approx(2.0)


def test_window_sums_do_not_accumulate_rounding_errors():
    rng = np.random.default_rng(1)
    stats = ErrorStats(1, window=50)
    for _ in range(3000):  # 90,000 huge residuals in batches smaller than the window
        stats.update(1e8 + rng.normal(size=(30, 1)))
    small = rng.normal(size=(60, 1)) * 1e-3
    for start in range(0, 60, 7):
        stats.update(small[start : start + 7])
    last = small[-50:, 0]
    got = stats.summary(["y"])["y"]
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(last**2)), rel=1e-6)
    assert got["bias"] == pytest.approx(last.mean(), rel=1e-6, abs=1e-12)


# -- Page-Hinkley -------------------------------------------------------------------------------
def test_page_hinkley_is_quiet_on_a_long_stationary_stream():
    xs = np.random.default_rng(2).normal(size=20_000)
    assert detections(PageHinkley(), xs) == []


@pytest.mark.parametrize("shift", [2.0, -2.0])
def test_page_hinkley_fires_soon_after_a_mean_shift_either_way(shift):
    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.normal(size=1000), rng.normal(shift, 1.0, size=500)])
    detector = PageHinkley()
    hits = detections(detector, xs)
    assert hits and 1000 <= hits[0] < 1030, hits
    assert detector.n < 500, "the test starts afresh after firing"


@pytest.mark.parametrize("shift", [2.0, -2.0])
def test_page_hinkley_estimates_where_the_change_began(shift):
    rng = np.random.default_rng(5)
    xs = np.concatenate([rng.normal(size=1000), rng.normal(shift, 1.0, size=100)])
    detector = PageHinkley()
    fired = detections(detector, xs)[0]
    start = fired - detector.run_length + 1  # index of the first value of the new regime
    assert abs(start - 1000) <= 5, (fired, detector.run_length)


def test_page_hinkley_waits_for_min_instances():
    hits = detections(PageHinkley(min_instances=30), [0.0] * 5 + [100.0] * 40)
    assert hits == [29]


# -- ADWIN --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_adwin_and_river_both_stay_quiet_on_a_stationary_stream(seed):
    xs = np.abs(np.random.default_rng(seed).normal(size=4000))
    detector = ADWIN()
    assert detections(detector, xs) == [] and river_detections(xs) == []
    assert detector.width == 4000
    assert detector.mean == pytest.approx(xs.mean(), rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_adwin_detects_an_abrupt_change_about_when_river_does(seed):
    rng = np.random.default_rng(10 + seed)
    xs = np.concatenate([rng.normal(0.0, 1.0, 1000), rng.normal(1.0, 1.0, 1000)])
    detector = ADWIN()
    ours = [i for i in detections(detector, xs) if i >= 1000]
    theirs = [i for i in river_detections(xs) if i >= 1000]
    assert ours and theirs
    assert ours[0] - 1000 < 120 and theirs[0] - 1000 < 120
    assert abs(ours[0] - theirs[0]) <= 48, (ours, theirs)
    assert detector.width < 1100, "most of the old part of the window was dropped"
    assert detector.run_length == detector.width
    assert detector.mean == pytest.approx(1.0, abs=0.2)


def test_adwin_statistic_measures_the_size_of_the_change():
    rng = np.random.default_rng(4)
    xs = np.concatenate([rng.normal(0.0, 0.1, 500), rng.normal(2.0, 0.1, 200)])
    detector = ADWIN()
    stats = [s for s in (detector.update(x) for x in xs) if s is not None]
    assert stats and max(stats) == pytest.approx(2.0, abs=0.2)
    assert all(0 < s < 2.2 for s in stats)
    assert detector.n_detections == len(stats)


# -- state round trips --------------------------------------------------------------------------
def feed(obj, data: np.ndarray, offset: int):
    """Feed a detector or metric one part of the stream; return what it reports."""
    if isinstance(obj, ErrorStats):
        for part in batches(len(data)):
            obj.update(data[part])
        return obj.summary(["a", "b"])
    if isinstance(obj, DriftMonitor):
        seq = np.arange(len(data)) + offset
        events = []
        for part in batches(len(data)):
            events += obj.update(seq[part], seq[part] * 2.0, data[part], 3 * data[part])
        return [e.to_dict() for e in events], obj.summary()
    if isinstance(obj, ParameterTracker):
        for row in data[:, :2]:
            obj.update({"R": float(row[0]), "C": float(row[1])})
        return obj.summary()
    return [obj.update(float(x)) for x in data[:, 0]]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ErrorStats(2, window=64),
        lambda: PageHinkley(),
        lambda: ADWIN(),
        lambda: BOCPD(),
        lambda: DriftMonitor(["a", "b"]),
        lambda: ParameterTracker(history=5),
    ],
    ids=["error_stats", "page_hinkley", "adwin", "bocpd", "monitor", "tracker"],
)
def test_state_round_trips_through_json_and_continues_identically(make):
    rng = np.random.default_rng(5)
    data = rng.normal(size=(3000, 2))
    data[1500:, 0] += 4.0  # a change in the second half, so detectors have work to do
    original, restored = make(), make()
    if isinstance(original, ErrorStats | DriftMonitor):
        data[::97] = np.nan
    feed(original, data[:1400], 0)
    restored.load_state_dict(json_round_trip(original.state_dict()))
    expected, got = feed(original, data[1400:], 1400), feed(restored, data[1400:], 1400)
    assert got == expected
    if isinstance(original, PageHinkley | ADWIN | BOCPD):
        assert any(s is not None for s in expected), "the change after the restart is detected"
    if isinstance(original, DriftMonitor):
        assert expected[0], "the change after the restart is detected"
    assert json_round_trip(restored.state_dict()) == json_round_trip(original.state_dict())


# -- BOCPD --------------------------------------------------------------------------------------
def bocpd_changes(xs) -> list[int]:
    """Starts (0-based) of the changes BOCPD declares on xs."""
    detector, starts = BOCPD(), []
    for i, x in enumerate(xs):
        if detector.update(float(x)) is not None:
            starts.append(i - detector.run_length + 1)
    return starts


@pytest.mark.parametrize("seed", range(4))
def test_bocpd_is_quiet_on_a_long_stationary_stream(seed):
    assert len(bocpd_changes(np.random.default_rng(seed).normal(size=5000))) <= 1


@pytest.mark.parametrize("change", ["mean", "spread"])
def test_bocpd_locates_a_change_in_the_mean_or_the_spread(change):
    x = np.random.default_rng(3).normal(size=600)
    if change == "mean":
        x[300:] += 2.0
    else:
        x[300:] *= 4.0
    starts = bocpd_changes(x)
    assert len(starts) == 1 and abs(starts[0] - 300) <= 3, starts


def test_bocpd_ignores_a_single_outlier():
    x = np.random.default_rng(4).normal(size=1000)
    x[500] = 10.0  # the monitor's clip
    assert bocpd_changes(x) == []


# -- DriftMonitor -------------------------------------------------------------------------------
def monitor_run(residuals: np.ndarray, batch: int = 25):
    monitor = DriftMonitor(["flow", "pressure"])
    seq = np.arange(1, len(residuals) + 1)
    ts = 1.7e9 + 0.5 * seq
    events = []
    for start in range(0, len(residuals), batch):
        part = slice(start, start + batch)
        events += monitor.update(seq[part], ts[part], residuals[part], 2 * residuals[part])
    return monitor, events


def stationary(n: int, seed: int) -> np.ndarray:
    # Channels in very different units: the detectors see standardized residuals.
    r = np.random.default_rng(seed).normal(size=(n, 2)) * [2e-3, 5e6]
    r[0] = np.nan  # the first observation has no prediction
    return r


def test_monitor_raises_very_few_alarms_on_stationary_residuals():
    # 8 streams of 5000 residuals on 2 outputs: 80,000 residuals and hardly an alarm.
    alarms = sum(len(monitor_run(stationary(5000, seed))[1]) for seed in range(8))
    assert alarms <= 8
    monitor, events = monitor_run(stationary(5000, seed=2))
    assert events == []
    summary = monitor.summary()
    assert summary["alarms"] == 0
    pressure = summary["outputs"]["pressure"]
    twin, frozen = pressure["twin"], pressure["first_guess"]
    assert twin["rmse"] == pytest.approx(5e6, rel=0.2)
    assert frozen["rmse"] == pytest.approx(2 * twin["rmse"])
    assert twin["total"] == 4999


def test_monitor_flags_a_three_sigma_bias_shift_within_20_observations():
    r = stationary(4000, seed=7)
    at = 2500  # index of the first shifted residual
    r[at:, 0] += 3 * 2e-3
    monitor, events = monitor_run(r)
    assert events, "the shift must be detected"
    first = events[0]
    assert first.output == "flow"
    assert at + 1 <= first.seq <= at + 20, first  # seq is index + 1
    assert first.ts == pytest.approx(1.7e9 + 0.5 * first.seq)
    assert {e.output for e in events} == {"flow"}
    assert {e.detector for e in events} == {"page_hinkley", "bocpd"}
    for detector in ("page_hinkley", "bocpd"):  # where the shift began, not where it fired
        first = next(e for e in events if e.detector == detector)
        assert abs(first.start_seq - (at + 1)) <= 5, first
    assert all(e.start_seq <= e.seq for e in events)
    assert len(events) <= 8, "one change, not a cascade of alarms"
    assert monitor.summary()["alarms"] == len(events)


def test_monitor_ignores_a_single_sensor_spike():
    r = stationary(3000, seed=8)
    r[1500, 1] = 200 * 5e6
    _, events = monitor_run(r)
    assert events == []


def test_monitor_events_are_in_seq_order_and_serializable():
    r = stationary(3000, seed=9)
    r[1000:, 1] += 4 * 5e6
    r[1003:, 0] -= 4 * 2e-3
    _, events = monitor_run(r, batch=500)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert {e.output for e in events} == {"flow", "pressure"}
    d = events[0].to_dict()
    assert set(d) == {"seq", "ts", "output", "detector", "statistic", "start_seq"}
    assert DriftEvent(**json_round_trip(d)) == events[0]


# -- ParameterTracker ---------------------------------------------------------------------------
def test_parameter_tracker_reports_change_since_convergence_and_over_recent_versions():
    tracker = ParameterTracker(history=3)
    for v in [2.0, 2.2, 2.4, 2.6, 3.0]:
        tracker.update({"K": v, "b": v - 2.4})
        if v == 2.4:
            tracker.converge({"K": v, "b": 0.0})
            tracker.converge({"K": 9.9, "b": 9.9})  # only the first converged estimate counts
    k, b = tracker.summary()["K"], tracker.summary()["b"]
    assert (k["first_guess"], k["converged"], k["current"]) == (2.0, 2.4, 3.0)
    assert k["change"] == pytest.approx(0.6) and k["relative_change"] == pytest.approx(0.25)
    assert k["recent_change"] == pytest.approx(3.0 - 2.2)  # over the last 3 updates
    assert k["recent_relative_change"] == pytest.approx(0.8 / 2.2)
    assert b["change"] == pytest.approx(0.6) and b["relative_change"] is None  # converged at 0


def test_parameter_tracker_reports_no_change_before_convergence():
    tracker = ParameterTracker()
    tracker.update({"R": 0.05})
    tracker.update({"R": 0.08})
    r = tracker.summary()["R"]
    assert r["first_guess"] == 0.05 and r["current"] == 0.08
    assert r["converged"] is None and r["change"] is None and r["relative_change"] is None
    assert r["recent_change"] == pytest.approx(0.03)


def test_parameter_tracker_reads_states_saved_before_first_guesses():
    tracker = ParameterTracker()
    tracker.load_state_dict({"history": 5, "initial": {"R": 1.0}, "recent": {"R": [1.0, 2.0]}})
    assert tracker.summary()["R"]["first_guess"] == 1.0 and tracker.converged is None
