"""malloc's thresholds for a worker's tensors (`twin.runtime`): a pass's tensors stay in the
heap instead of being mapped, faulted in and zeroed anew each time."""

import platform

import pytest

from bench.allocator import run
from twin.runtime import tune_allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@glibc
def test_tune_allocator_sets_the_thresholds():
    assert tune_allocator() is True


@glibc
def test_a_pass_of_many_twins_stops_faulting_in_new_pages():
    """16 first_order twins stepped together: with glibc's moving thresholds each twin's batch
    faults in hundreds of fresh pages; with the worker's, next to none."""
    default = run("first_order", 16, 3, tuned=False)
    tuned = run("first_order", 16, 3, tuned=True)
    assert tuned["tuned"] is True
    assert tuned["faults"] < 10, tuned
    assert default["faults"] > 10 * max(tuned["faults"], 1.0), (default, tuned)


def test_a_refused_or_missing_mallopt_is_reported_not_raised(monkeypatch):
    import ctypes

    def missing(*args, **kwargs):
        raise OSError("no libc here")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert tune_allocator() is False


def test_the_collector_leaves_what_exists_and_runs_less_often():
    import gc

    from twin.runtime import GC_THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # the imports' objects (torch's among them)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
