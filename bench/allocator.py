"""What malloc's thresholds cost a calibrator pass: the same pass with glibc's default (the
reference) and with the thresholds a worker sets (`twin.runtime.tune_allocator`).

Each configuration runs in a fresh process (the thresholds are process-wide and glibc moves its
defaults with what the process freed): K twins of a kind (default learner, full windows, as in
`bench/together.py`) stepped together over batches of 10 observations; the table gives minor
page faults, CPU time per twin and batch, and the process's peak RSS.

    python bench/allocator.py
    python bench/allocator.py --kinds first_order --sizes 64,256 --batches 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def child(kind: str, k: int, batches: int, tuned: bool) -> dict:
    import torch

    from bench.together import BATCH, WARM, fleet
    from twin.fleet import step_together
    from twin.runtime import tune_allocator

    torch.set_num_threads(1)  # as a worker runs
    done = tune_allocator() if tuned else False
    twins, runs = fleet(kind, k, WARM + (batches + 2) * BATCH)

    def chunk(obs, a):
        return obs[a : a + BATCH]

    for start in range(0, WARM + 2 * BATCH, BATCH):  # warm: the first two timed-like batches
        step_together(twins, [chunk(r, start) for r in runs])
    faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    for b in range(batches):
        start = WARM + (b + 2) * BATCH
        step_together(twins, [chunk(r, start) for r in runs])
    n = k * batches
    return {
        "tuned": done,
        "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n,
        "ms": (time.process_time() - cpu) / n * 1e3,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(kind: str, k: int, batches: int, tuned: bool) -> dict:
    args = [sys.executable, __file__, "--child", kind, str(k), str(batches), str(int(tuned))]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="first_order,thermal_rc,mass_spring_damper")
    parser.add_argument("--sizes", default="1,64")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        kind, k, batches, tuned = a.child
        print(json.dumps(child(kind, int(k), int(batches), bool(int(tuned)))))
        return
    head = "faults  ms/batch  peak RSS MB"
    print(f"{'':25s}   {'ref: glibc default':>28s}   {'thresholds fixed':>28s}")
    print(f"{'kind':20s} {'K':>4s}   {head:>28s}   {head:>28s}   CPU ratio")
    for kind in a.kinds.split(","):
        for k in (int(s) for s in a.sizes.split(",")):
            ref = run(kind, k, a.batches, False)
            new = run(kind, k, a.batches, True)
            cells = [f"{r['faults']:8.1f} {r['ms']:9.2f} {r['rss_mb']:12.0f}" for r in (ref, new)]
            ratio = new["ms"] / ref["ms"]
            note = "" if new["tuned"] else "  (thresholds not set: no glibc mallopt)"
            print(f"{kind:20s} {k:4d}   {cells[0]}   {cells[1]}   {ratio:9.2f}{note}", flush=True)
    print(
        "\nfaults: minor page faults per twin and batch of 10 observations; ms/batch: CPU time per "
        "twin and batch (one thread); each configuration in a fresh process."
    )


if __name__ == "__main__":
    main()
