"""A real PostgreSQL server for the tests and benchmarks: its own data folder in a temporary
directory, listening on a Unix socket there only (no TCP port), stopped after with no process
left. PostgreSQL refuses to run as root: as root it runs as `nobody` (the folder is given to
that user). `python -m tests.pg_server` starts one and prints its URL until Ctrl-C.

Roles: `graceful` (trusted on the socket: the tests' catalogs) and `locked` (password `right`,
for the wrong-credentials test)."""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

BIN_DIRS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14", "13")]


def pg_bin(name: str) -> str | None:
    for d in BIN_DIRS:
        if (d / name).is_file():
            return str(d / name)
    return shutil.which(name)


class PgServer:
    def __init__(self, root: Path, proc: subprocess.Popen, user: str | None):
        self.root, self.proc, self.user = root, proc, user
        self.socket_dir = root / "socket"
        self.data = root / "data"
        self._n = 0

    def url(self, database: str = "postgres", user: str = "graceful", password: str = "") -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}/{database}?host={self.socket_dir}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run([pg_bin("psql") or "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                              "-d", self.url(database), "-c", sql],
                             capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise RuntimeError(f"psql {sql!r}: {out.stderr.strip()}")
        return out.stdout

    @staticmethod
    def name_of(url: str) -> str:
        """The database a URL of this server names."""
        from urllib.parse import urlsplit

        return urlsplit(url).path.lstrip("/")

    def new_database(self, prefix: str = "g") -> str:
        """A new empty database; returns its URL."""
        self._n += 1
        name = f"{prefix}{os.getpid()}_{self._n}"
        self.psql(f"CREATE DATABASE {name}{create_strategy(self.url())}")
        return self.url(name)

    def start(self) -> None:
        """Start the server on its data folder and wait until it answers."""
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, **_demote(self.user),
                                         cwd=str(self.root), start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                self.psql("SELECT 1")
                return
            except RuntimeError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("PostgreSQL did not start: "
                                       + (self.root / "server.log").read_text()[-400:]) from None
                time.sleep(0.1)

    def crash(self) -> None:
        """Stop it as a crash would (immediate shutdown: no checkpoint, clients cut off)."""
        subprocess.run([pg_bin("pg_ctl") or "pg_ctl", "stop", "-D", str(self.data), "-m",
                        "immediate"], capture_output=True, **_demote(self.user),
                       timeout=60)
        self.proc.wait(30)

    def processes(self) -> list[int]:
        """Ids of the server's processes still alive (its process group)."""
        out = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


_VERSIONS: dict[str, int] = {}


def create_strategy(url: str) -> str:
    """` STRATEGY = FILE_COPY` for a CREATE DATABASE where the server at `url` has it
    (PostgreSQL 15+): a test database is small, and copying its files costs the server less
    than logging every block."""
    from urllib.parse import urlsplit

    server = urlsplit(url)._replace(path="/postgres").geturl()
    if server not in _VERSIONS:
        out = subprocess.run([pg_bin("psql") or "psql", "-X", "-At", "-d", server, "-c",
                              "SHOW server_version_num"], capture_output=True, text=True,
                             timeout=60)
        _VERSIONS[server] = int(out.stdout.strip() or 0)
    return " STRATEGY = FILE_COPY" if _VERSIONS[server] >= 150000 else ""


def _demote(user: str | None) -> dict:
    """Popen's own user/group switch (done in C between fork and exec: a preexec_fn would run
    Python in the child, which aborts when gRPC threads, e.g. pymilvus's, are running)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


@contextlib.contextmanager
def running(durable: bool = False, sync_commit: bool = False) -> Iterator[PgServer]:
    """Start a server; `durable`: fsync on (benchmarks; tests turn it off); `sync_commit`: a
    commit returns once its WAL is written (tests that crash the server need it). Raises
    RuntimeError when it cannot start or when a process of it is left after stopping."""
    initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
    if not initdb or not postgres:
        raise FileNotFoundError("PostgreSQL server programs not found (apt-get install postgresql)")
    user = "nobody" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="graceful-pg-"))
    (root / "socket").mkdir()
    if user:
        entry = pwd.getpwnam(user)
        for p in (root, root / "socket"):
            os.chown(p, entry.pw_uid, entry.pw_gid)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    env.pop("PGDATA", None)
    init = subprocess.run([initdb, "-D", str(root / "data"), "-U", "graceful", "-E", "UTF8",
                           "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=reject", "-N"],
                          capture_output=True, text=True, env=env, **_demote(user),
                          cwd=str(root), timeout=120)
    if init.returncode:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip()[-400:]}")
    (root / "data" / "pg_hba.conf").write_text(
        "local all graceful trust\nlocal all all scram-sha-256\n")
    settings = {"listen_addresses": "", "unix_socket_directories": str(root / "socket"),
                "max_connections": "200", "shared_buffers": "128MB", "log_min_messages": "warning",
                "fsync": "on" if durable else "off",
                "synchronous_commit": "on" if sync_commit else "off",
                "full_page_writes": "on" if durable else "off", "logging_collector": "off",
                "autovacuum": "on" if durable else "off"}
    args = [postgres, "-D", str(root / "data")]
    for k, v in settings.items():
        args += ["-c", f"{k}={v}"]
    server = PgServer(root, None, user)  # type: ignore[arg-type]
    server.args, server.env = args, env
    try:
        server.start()
        server.psql("CREATE ROLE locked LOGIN PASSWORD 'right'")
        yield server
    finally:
        if server.proc is not None:
            stop(server)
        left = server.processes() if server.proc is not None else []
        shutil.rmtree(root, ignore_errors=True)
        if left:
            raise RuntimeError(f"PostgreSQL processes left after stopping: {left}")


def stop(server: PgServer) -> None:
    """Fast shutdown (SIGINT), then `pg_ctl stop -m immediate`, then SIGKILL to its group."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            ctl = pg_bin("pg_ctl")
            if ctl:
                subprocess.run([ctl, "stop", "-D", str(server.data), "-m", "immediate"],
                               capture_output=True, **_demote(server.user), timeout=30)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
    for _ in range(50):
        if not server.processes():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.1)


if __name__ == "__main__":
    with running() as s:
        print(s.url(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
