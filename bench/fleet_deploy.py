"""The deployments `bench/fleet.py` measures, as real processes: `tandem serve` on a fresh
SQLite file (its embedded workers: its default number, or k), or `tandem serve --no-worker`
plus k `tandem worker` processes sharing a fresh PostgreSQL database (created here, dropped
afterwards)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0
CLI = [sys.executable, "-c", "from app.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env["TANDEM_DATABASE_URL"] = database_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(base: str, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=base, timeout=10.0) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the service was not ready in {READY_TIMEOUT_S:.0f} s")


@contextmanager
def postgres_database(admin_url: str):
    """A fresh, uniquely named PostgreSQL database on the server of `admin_url`; its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"tandem_fleet_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Deployment:
    """Processes started for one measurement; `pids` are the ones whose CPU time counts."""

    def __init__(
        self, tmp: Path, postgres: str | None, workers: int, settings: dict[str, str] | None = None
    ):
        self.tmp, self.postgres, self.workers = tmp, postgres, workers
        self.settings = settings or {}  # TANDEM_* variables for every process
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.base = ""

    @property
    def label(self) -> str:
        extra = "".join(f", {k.removeprefix('TANDEM_')}={v}" for k, v in self.settings.items())
        if self.postgres is None:
            workers = f", {self.workers} workers" if self.workers else ""
            return "embedded (SQLite)" + workers + extra
        return f"PostgreSQL, {self.workers} worker{'s' if self.workers > 1 else ''}" + extra

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log_path = self.tmp / f"{name}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                CLI + args, cwd=self.tmp, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def start(self, database_url: str) -> None:
        env = {**_env(database_url), **self.settings}
        if self.postgres is None and self.workers:
            env["TANDEM_EMBEDDED_WORKERS"] = str(self.workers)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        serve = ["serve", "--port", str(port)]
        if self.postgres is not None:
            subprocess.run(CLI + ["migrate"], env=env, check=True, capture_output=True)
            serve.append("--no-worker")
        server = self._spawn("server", serve, env)
        if self.postgres is not None:
            for k in range(self.workers):
                self._spawn(f"worker{k}", ["worker"], env)
        _wait_ready(self.base, server)

    def stop(self) -> None:
        for process in reversed(self.processes):
            _stop(process)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-chars:]}"
            for p in self.logs
            if p.exists()
        )

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every process of the deployment and their children
        (the embedded worker is a child of the server), from Linux /proc."""
        return sum(_tree_cpu(p.pid) for p in self.processes if p.poll() is None)


def _tree_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for child in _children(pid):
        total += _tree_cpu(child)
    return total


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


@contextmanager
def deployment(
    tmp: Path, postgres: str | None, workers: int, settings: dict[str, str] | None = None
):
    """A started deployment on a fresh database, stopped (and the database dropped) after."""
    run = Deployment(tmp, postgres, workers, settings)
    try:
        if postgres is None:
            run.start(f"sqlite:///{tmp / 'fleet.db'}")
            yield run
        else:
            with postgres_database(postgres) as url:
                try:
                    run.start(url)
                    yield run
                finally:
                    run.stop()
    except BaseException:
        print("deployment logs (tail):\n" + run.log_tail(), file=sys.stderr)
        raise
    finally:
        run.stop()
