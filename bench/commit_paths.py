"""One client's sequential large posts through the three ways a post commits, interleaved post
by post in one server, so that a loaded machine slows them alike: the committer thread (group
commit, a group of one), alone in the request's own thread (group commit's lone path, the
default on SQLite), and one transaction per post (group commit off).

    python bench/commit_paths.py [--posts 30] [--rows 1000]

The service runs in this process (uvicorn on loopback, no worker, a fresh SQLite file); the
path is switched between posts, none in flight.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import uvicorn  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from twin.plants import FirstOrderPlant  # noqa: E402

PATHS = ("committer thread", "alone (now)", "group commit off")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use(app, commits, path: str) -> None:
    """Make the next post commit by `path`."""
    app.state.commits = None if path == "group commit off" else commits
    if path == "committer thread":
        commits.alone = lambda *_args: None  # never alone: every post joins a group
    else:
        commits.__dict__.pop("alone", None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=30, help="posts per path")
    parser.add_argument("--rows", type=int, default=1000, help="rows per post")
    args = parser.parse_args(argv)
    n = args.posts * len(PATHS) + 2  # two warm-up posts
    obs = FirstOrderPlant().simulate(n * args.rows).observations
    ts, u, y = obs.ts.tolist(), obs.inputs[:, 0].tolist(), obs.outputs[:, 0].tolist()
    bodies = [
        orjson.dumps(
            {
                "observations": [
                    {"ts": ts[k], "inputs": {"u": u[k]}, "outputs": {"y": y[k]}}
                    for k in range(b * args.rows, (b + 1) * args.rows)
                ]
            }
        )
        for b in range(n)
    ]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    with tempfile.TemporaryDirectory(prefix="tandem-paths-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'paths.db'}"
        settings = Settings(database_url=url, worker=False, group_commit=True)
        app = create_app(settings)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        times: dict[str, list[float]] = {path: [] for path in PATHS}
        try:
            commits = app.state.commits
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                spec = {"name": "paths", **FirstOrderPlant().spec_dict()}
                twin_id = client.post("/twins", json=spec).json()["id"]
                post = f"/twins/{twin_id}/observations"
                headers = {"content-type": "application/json"}
                for body in bodies[:2]:
                    client.post(post, content=body, headers=headers).raise_for_status()
                for k, body in enumerate(bodies[2:]):
                    path = PATHS[(k + k // len(PATHS)) % len(PATHS)]  # each order in turn
                    use(app, commits, path)
                    started = time.perf_counter()
                    client.post(post, content=body, headers=headers).raise_for_status()
                    times[path].append(time.perf_counter() - started)
            use(app, commits, "alone (now)")
            alone = commits.posts_alone
        finally:
            server.should_exit = True
            thread.join(30)
    print(f"{args.posts} posts of {args.rows} rows per path, to one twin, one after another")
    print(f"posts committed alone (the warm-up's included): {alone}\n")
    print("| commit path | ms per post: median / mean / p90 | rows/s (by the mean) |")
    print("|---|---|---|")
    for path, seconds in times.items():
        ms = 1000 * np.array(seconds)
        print(
            f"| {path} | {np.median(ms):.1f} / {ms.mean():.1f} / {np.percentile(ms, 90):.1f} "
            f"| {args.rows / ms.mean() * 1000:,.0f} |"
        )


if __name__ == "__main__":
    main()
