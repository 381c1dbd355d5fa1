"""A team's MLflow tracking server in MLflow's production layout: `mlflow server` over a PostgreSQL
backend store, serving (proxying) the artifacts it stores in a folder. `make server` runs it in the
foreground (data under .ganflow/server/ unless DIR=... names a folder), the tests start it in a temp folder.

    python tools/team_server.py [--dir DIR] [--host 127.0.0.1] [--port 5000] [--db-uri postgresql+psycopg://...]

Without --db-uri it runs its own PostgreSQL (Debian's `postgresql` package: initdb/pg_ctl from
/usr/lib/postgresql/*/bin, as the `postgres` user when run as root) in DIR/pg on a free local port.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or ServerError saying what to install."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    found = versions[-1] if versions else shutil.which("pg_ctl")
    if not found or not (Path(found).parent / "initdb").exists():
        raise ServerError("PostgreSQL is not installed (Debian/Ubuntu: apt-get install -y postgresql)")
    return Path(found).parent


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """A PostgreSQL cluster in `data` on 127.0.0.1:`port` (trust auth for local connections), database mlflow."""

    def __init__(self, data: Path, port: int | None = None):
        self.data, self.port, self.bin = Path(data), port or free_port(), pg_bin()
        self.uri = f"postgresql+psycopg://ganflow@127.0.0.1:{self.port}/mlflow"

    def _run(self, *cmd: str) -> None:
        r = subprocess.run(_as_postgres([str(self.bin / cmd[0]), *cmd[1:]]), capture_output=True, text=True)
        if r.returncode:
            raise ServerError(f"{cmd[0]} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")

    def start(self) -> "Postgres":
        fresh = not (self.data / "PG_VERSION").exists()
        self.data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        if fresh:
            self._run("initdb", "-D", str(self.data), "-U", "ganflow", "-A", "trust", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "60", "start",
                  "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1")
        if fresh:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "ganflow", "mlflow")
        return self

    def stop(self) -> None:
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


class MlflowServer:
    """`mlflow server` over `db_uri`, serving the artifacts it keeps in `artifacts`, on host:port."""

    def __init__(self, db_uri: str, artifacts: Path, port: int | None = None, host: str = "127.0.0.1",
                 log: Path | None = None):
        self.db_uri, self.artifacts, self.host, self.port = db_uri, Path(artifacts), host, port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.db_uri, "--serve-artifacts",
                "--artifacts-destination", str(self.artifacts), "--host", self.host, "--port", str(self.port),
                "--workers", "1"]

    def start(self, wait_s: float = 120) -> "MlflowServer":
        self.artifacts.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "a") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"mlflow server exited with code {self.proc.returncode}"
                                  + (f" (see {self.log})" if self.log else ""))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"mlflow server did not answer {self.url}/health within {wait_s:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(".ganflow/server"), help="PostgreSQL data (pg/) and artifacts (artifacts/)")
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves the team's network (put it behind auth)")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--db-uri", help="an existing PostgreSQL database, e.g. postgresql+psycopg://user:pass@db-host/mlflow")
    ap.add_argument("--artifacts", type=Path, help="where the server stores artifacts (default: DIR/artifacts)")
    a = ap.parse_args()
    root = a.dir.resolve()
    pg = None if a.db_uri else Postgres(root / "pg", port=None)
    try:
        if pg:
            pg.start()
        server = MlflowServer(a.db_uri or pg.uri, a.artifacts or root / "artifacts", a.port, a.host)
        print(f"tracking server: {server.url} (backend {server.db_uri}; artifacts {server.artifacts})\n"
              f"  every clone: export MLFLOW_TRACKING_URI={server.url}  (or tracking.uri in params.yaml); Ctrl-C stops it",
              flush=True)
        subprocess.run(server.command(), check=False)
    except ServerError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        pass
    finally:
        if pg:
            pg.stop()


if __name__ == "__main__":
    main()
