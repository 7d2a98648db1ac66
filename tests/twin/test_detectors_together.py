"""Detectors of many streams run together (`bocpd_together`, `settle_together`) give each its
own numbers bit for bit: the posterior, the changes and their statistics, and the events."""

import copy

import numpy as np

from twin.detectors import BOCPD
from twin.detectors_together import bocpd_together
from twin.drift import DriftMonitor, settle_together


def stream(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard normal values with a few changes of level and spread, and now and then a spike."""
    x = rng.standard_normal(n)
    for _ in range(int(rng.integers(0, 3)) if n else 0):
        at = int(rng.integers(0, n))
        x[at:] = (x[at:] + rng.normal(0, 3)) * rng.uniform(0.3, 3)
    if n and rng.random() < 0.2:
        x[int(rng.integers(0, n))] = 50.0
    return x


def test_bocpd_together_equals_each_detector_alone():
    """Detectors of every age (fresh, filling their 256 run lengths, merging the longest runs),
    fed uneven numbers of values (none too), end where `update` value by value ends."""
    rng = np.random.default_rng(0)
    alone = [BOCPD() for _ in range(16)]
    for det in alone:
        for x in stream(rng, int(rng.integers(0, 400))):
            det.update(x)
    together = copy.deepcopy(alone)
    for _ in range(12):
        values = [stream(rng, int(rng.integers(0, 13))).tolist() for _ in together]
        expected = [
            [(k, stat, det.run_length) for k, x in enumerate(xs) if (stat := det.update(x))]
            for det, xs in zip(alone, values, strict=True)
        ]
        assert bocpd_together(together, values) == expected
        for a, b in zip(alone, together, strict=True):
            assert a.state_dict() == b.state_dict()
    assert sum(det.changes for det in alone) > 10  # changes were declared along the way
    for a, b in zip(alone, together, strict=True):  # and each goes on alone the same
        for x in stream(rng, 50):
            assert a.update(x) == b.update(x)


def test_monitors_settled_together_give_the_events_of_update():
    """Several `observe` calls staged per monitor, NaN residuals, two outputs, then one
    `settle_together`: the events, alarms and states of `update` call by call."""
    rng = np.random.default_rng(1)
    alone = [DriftMonitor(["a", "b"]) for _ in range(4)]
    together = copy.deepcopy(alone)
    seq, found = 0, set()
    for round_ in range(30):
        expected, calls = [], [int(rng.integers(1, 4)) for _ in alone]
        for i, monitor in enumerate(alone):
            events = []
            for _ in range(calls[i]):
                n = int(rng.integers(0, 6))
                r = np.column_stack([stream(rng, n), stream(rng, n)]) * (1 + i)
                r += 100.0 * (1 + i) * (10 <= round_ < 20)  # a shift Page-Hinkley finds
                r[rng.random(r.shape) < 0.1] = np.nan
                seqs, ts = np.arange(seq, seq + n), np.arange(seq, seq + n) * 1.0
                seq += n
                events += monitor.update(seqs, ts, r, 2 * r)
                together[i].observe(seqs, ts, r, 2 * r)
            expected.append(events)
        assert settle_together(together) == expected
        found |= {e.detector for events in expected for e in events}
    for a, b in zip(alone, together, strict=True):
        assert a.state_dict() == b.state_dict() and a.summary() == b.summary()
    assert found == {"page_hinkley", "bocpd"}
