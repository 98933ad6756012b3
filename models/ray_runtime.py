"""Ray for one job: start a local runtime (127.0.0.1 only, stopped with the job) or join a
running cluster, each within a bounded wait, and say in one line why not.

Nothing here is imported unless a job runs with `--ray`; Ray itself is imported only once a
runtime is started or joined.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

START_TIMEOUT_ENV = "GRACEFUL_RAY_START_TIMEOUT"  # s to start a local runtime / join a cluster
LOAD_TIMEOUT_ENV = "GRACEFUL_RAY_LOAD_TIMEOUT"  # s for every worker to load its model


def start_timeout() -> float:
    """Seconds to start a local runtime (one more try with twice as long) or join a cluster."""
    from models.settings import Settings

    return Settings.from_env().ray_start_timeout


def load_timeout() -> float:
    from models.settings import Settings

    return Settings.from_env().ray_load_timeout


class RayStartTimeout(TimeoutError):
    """Ray did not come up (a local runtime) or answer (a cluster) in the time allowed."""

    def __init__(self, address: str, waited: list[float]):
        self.address, self.waited = address, waited
        super().__init__(address, waited)


class RayUnreachable(ConnectionError):
    pass


def prepare_auth(address: str) -> None:
    """Clusters started by `ray start` (Ray >= 2.59) require the token this machine keeps in
    ~/.ray/auth_token, but a driver connecting by address sends it only in token mode, which
    Ray reads when it is first imported. Token mode also works with clusters that have
    authentication off, so turn it on whenever a token is at hand. (The local runtime of
    `auto` is a `ray start` too, inheriting this process's mode.)

    Also quiets Ray's C++ core, read as Ray is imported: a cluster that does not answer is
    said in one line by the caller, not by Ray's retry warnings on stderr."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRuntime:
    """A Ray runtime for one job on this machine, bound to 127.0.0.1 only and stopped with it.

    `ray start --head --block` in a session of its own: GCS, raylet, agents and every worker
    it spawns share that session, so stopping it leaves no Ray process behind. Its node address
    is 127.0.0.1 (Ray otherwise replaces a loopback node address with the machine's network
    address, and its servers listen on every interface); no dashboard. Starting is a bounded
    wait: a runtime not up in time is stopped and `start` raises TimeoutError."""

    READY = "Ray runtime started"

    def __init__(self, cpus: int | None = None):
        self.cpus = cpus or os.cpu_count() or 1
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self._log: IO[str] | None = None  # the `ray start` log
        self.temp_dir: str | None = None  # Ray's sockets, session logs and spill files

    def start(self, timeout: float) -> str:
        port = _free_port()
        self._log = tempfile.NamedTemporaryFile("w+", prefix="graceful-ray-", suffix=".log")
        # A folder of its own, removed at stop: under Ray's default /tmp/ray every runtime left
        # its session folder (about 350 KB) and a stale ray_current_cluster behind.
        self.temp_dir = tempfile.mkdtemp(prefix="graceful-ray-")
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
             "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--ray-client-server-port", str(_free_port()), "--include-dashboard", "false",
             "--dashboard-host", "127.0.0.1", "--num-cpus", str(self.cpus),
             "--disable-usage-stats", "--temp-dir", self.temp_dir,
             # a job's runtime has a fixed size and its driver takes no worker logs
             # (log_to_driver=False): no autoscaler monitor, no log monitor (two Python
             # processes fewer: it starts in ~6 s instead of ~9, for ~2.5 core-s less)
             "--no-monitor", "--include-log-monitor", "false"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            text = self._read_log()
            if self.READY in text:
                self.address = f"127.0.0.1:{port}"
                return self.address
            if self.proc.poll() is not None:
                self.stop()
                lines = [ln for ln in text.splitlines() if ln.strip()]
                raise RuntimeError(lines[-1] if lines else f"ray start exited with "
                                   f"{self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"not started within {timeout:g} s")
            time.sleep(0.2)

    def _read_log(self) -> str:
        if self._log is None:  # not started
            return ""
        try:
            with open(self._log.name, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """Every process of this runtime still there (its session), zombies left out."""
        return session_pids(self.proc.pid) if self.proc is not None else []

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM to every process of the runtime's session (workers run in process groups of
        their own), then SIGKILL to whatever is left after `grace` s (a job's runtime keeps nothing
        worth a longer wait: Ray's own shutdown on SIGTERM takes over 8 s)."""
        if self.proc is None:
            return
        for pid in {self.proc.pid, *self.pids()}:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.2)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.1)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def _probe(address: str, timeout: float) -> None:
    """Before Ray is asked to join (it waits long, and logs every retry on stderr): something
    must listen at the address (else RayUnreachable at once) and answer a gRPC (HTTP/2)
    connection preface within `timeout` s, as Ray's GCS and client servers do (else
    RayStartTimeout). Skipped with TLS (RAY_USE_TLS), where a plain preface gets no answer."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        return  # let Ray say what it makes of it
    deadline = time.monotonic() + timeout
    try:
        conn = socket.create_connection((host.strip("[]") or "127.0.0.1", port_n),
                                        timeout=min(timeout, 10))
    except TimeoutError:
        raise RayStartTimeout(address, [timeout]) from None
    except OSError as e:
        raise RayUnreachable(f"nothing answers at {hostport} ({e.strerror or e})") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        conn.close()
        return
    with conn:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        try:  # client preface + an empty SETTINGS frame; a server answers with its SETTINGS
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            head = conn.recv(9)
        except TimeoutError:
            raise RayStartTimeout(address, [timeout]) from None
        except OSError as e:
            raise RayUnreachable(f"{hostport} closed the connection ({e.strerror or e})") from None
    if len(head) < 4 or head[3] != 4:
        raise RayUnreachable(f"{hostport} does not speak gRPC: not a Ray cluster's address?")


def _init_within(timeout: float, address: str, **kwargs) -> None:
    """ray.init(address=...) joining a running cluster, in a thread so that the wait is
    bounded (joining starts no process of its own, so the thread may end first). A driver left
    waiting on a cluster that never answers stays in its (daemon) thread."""
    import ray

    outcome: dict = {}

    def join() -> None:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **kwargs)
            outcome["ok"] = True
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            outcome["error"] = e
    thread = threading.Thread(target=join, name="graceful-ray-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RayStartTimeout(address, [timeout])
    if "error" in outcome:
        raise outcome["error"]


def _join(address: str, timeout: float) -> None:
    """ray.init on `address`. A cluster on this machine's loopback (a LocalRuntime, or `ray start
    --node-ip-address 127.0.0.1`) is joined as 127.0.0.1 too: by default Ray swaps 127.0.0.1
    for the machine's own address, where a runtime bound to 127.0.0.1 does not listen."""
    if address.startswith("ray://") or address.split(":")[0] not in ("127.0.0.1", "localhost"):
        _init_within(timeout, address)
        return
    from ray._private import ray_constants

    was, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        _init_within(timeout, address, _node_ip_address="127.0.0.1")
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was


def connect(address: str, timeout: float | None = None) -> tuple[bool, LocalRuntime | None]:
    """Join Ray: "auto" starts a local runtime for this job (LocalRuntime, 127.0.0.1 only; one
    more try with twice the wait if it is not up in `timeout` s); "HOST:PORT" or
    "ray://HOST:PORT" joins that cluster (within `timeout` s). Returns (whether this call
    initialised Ray, the runtime it started)."""
    timeout = start_timeout() if timeout is None else timeout
    prepare_auth(address)
    import logging

    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)  # quiet library defaults
    if ray.is_initialized():
        return False, None
    if address != "auto":
        began = time.monotonic()
        _probe(address, timeout)
        try:
            _join(address, max(5.0, timeout - (time.monotonic() - began)))
        except RayStartTimeout:
            raise RayStartTimeout(address, [timeout]) from None
        return True, None
    waited = []
    for wait in (timeout, 2 * timeout):
        runtime = LocalRuntime()
        started = time.monotonic()
        try:
            local = runtime.start(wait)
            _join(local, max(10.0, wait - (time.monotonic() - started)))
            return True, runtime
        except (TimeoutError, RayStartTimeout):
            runtime.stop()
            waited.append(wait)
        except BaseException:
            runtime.stop()
            raise
    raise RayStartTimeout("auto", waited)


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, session id
            found.append(int(entry))
    return found
