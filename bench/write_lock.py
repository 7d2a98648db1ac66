"""The worker's hold on SQLite's write lock: seconds from a pass commit's first UPDATE (which
takes the lock) to the end of its commit (fsync included), with the version rows built before
the transaction (now) and inside it after that UPDATE (the order before), in one process.

    python bench/write_lock.py [--twins 128] [--rounds 4] [--repeats 2]

Each run: a fresh SQLite file (the service's pragmas), `--twins` `first_order` twins, then
`--rounds` rounds of one 10-observation batch per twin, each learned by calibrator passes
(default settings: 64 twins per pass). The two orders alternate, `--repeats` runs each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event  # noqa: E402

import app.calibrator as calibrator_module  # noqa: E402
from app import versions  # noqa: E402
from app.calibrator import Calibrator  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import make_engine, make_session_factory  # noqa: E402
from app.embedded import calibrator_config  # noqa: E402
from app.main import create_app  # noqa: E402
from twin.plants import FirstOrderPlant  # noqa: E402

BATCH = 10  # observations per twin and round


class BuiltInside:
    """A twin's rows as the commit built them before: the twin row's values at once (the first
    UPDATE's), the rest on first use, which is inside the transaction, after that UPDATE."""

    def __init__(self, item: versions.Learned, rules: versions.WriteRules, now: float):
        self.twin_id, self.number = item.twin_id, item.number
        self.health = versions._health(item, rules)
        self._args = item, rules, now

    @cached_property
    def _rows(self) -> versions.VersionRows:
        return versions.version_rows(*self._args)

    @property
    def version(self) -> dict:
        return self._rows.version

    @property
    def predictions(self) -> list[dict]:
        return self._rows.predictions

    @property
    def events(self) -> list[dict]:
        return self._rows.events


def run(tmp: Path, n_twins: int, rounds: int, inside: bool) -> tuple[list[float], float]:
    """The holds (s) of every pass commit, and the passes' wall time (s)."""
    url = f"sqlite:///{tmp / ('inside.db' if inside else 'before.db')}"
    settings = Settings(database_url=url, worker=False, run_migrations=True)
    plant = FirstOrderPlant()
    obs = plant.simulate(rounds * BATCH).observations
    holds: list[float] = []
    started: list[float] = []
    engine = make_engine(url)

    @event.listens_for(engine, "before_cursor_execute")
    def first_update(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().startswith("UPDATE twins SET version"):
            started.append(time.perf_counter())

    sessions = make_session_factory(engine)

    @event.listens_for(sessions, "after_commit")
    def committed(_session) -> None:
        if started:
            holds.append(time.perf_counter() - started[0])
            started.clear()

    build = BuiltInside if inside else versions.version_rows
    passes = 0.0
    with TestClient(create_app(settings)) as client:
        ids = []
        for k in range(n_twins):
            response = client.post("/twins", json={"name": f"t{k}", **plant.spec_dict()})
            ids.append(response.json()["id"])
        worker = Calibrator(sessions, calibrator_config(settings))
        saved = calibrator_module.version_rows
        calibrator_module.version_rows = build
        try:
            for r in range(rounds):
                span = range(r * BATCH, (r + 1) * BATCH)
                rows = [
                    {
                        "ts": float(obs.ts[k]),
                        "inputs": {"u": float(obs.inputs[k, 0])},
                        "outputs": {"y": float(obs.outputs[k, 0])},
                    }
                    for k in span
                ]
                for twin_id in ids:
                    body = {"observations": rows}
                    assert client.post(f"/twins/{twin_id}/observations", json=body).is_success
                t0 = time.perf_counter()
                while worker.run_once():
                    pass
                passes += time.perf_counter() - t0
        finally:
            calibrator_module.version_rows = saved
    engine.dispose()
    return holds, passes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"{args.twins} first_order twins, {args.rounds} rounds of {BATCH} observations each\n")
    print("| rows built | run | pass commits | hold mean / p50 / max (ms) | holds / passes' time |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tandem-lock-") as tmp_name:
        for repeat in range(args.repeats):
            for inside in (True, False):
                tmp = Path(tmp_name) / f"{repeat}"
                tmp.mkdir(exist_ok=True)
                holds, passes = run(tmp, args.twins, args.rounds, inside)
                ms = 1000 * np.array(holds)
                name = "inside the transaction (before)" if inside else "before it (now)"
                print(
                    f"| {name} | {repeat + 1} | {len(holds)} | {ms.mean():.1f} / "
                    f"{np.median(ms):.1f} / {ms.max():.1f} | {100 * sum(holds) / passes:.1f}% |"
                )


if __name__ == "__main__":
    main()
