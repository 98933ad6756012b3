"""Decode + embed on Ray workers: one actor per worker holds the model, the caller streams
encoded photos (bytes) in and gets vectors back batch by batch, as they finish.

Only bytes travel, so workers on other machines need neither the caller's files nor its
gallery: a checkpoint the model depends on is shipped with it. The caller stays the only
writer of its catalog. Nothing here is imported unless a job runs with `--ray`.

A gallery's own model provider (GRACEFUL_MODELS, models.registry.Models: your embedders)
travels too, pickled with its state; the workers import its code the way they import this
module (installed on the cluster), or from the folder it was imported from on the caller's
machine (the same path on a worker's). A worker imports torch only if its model does.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, Iterable, Iterator, TypeVar

import numpy as np

if TYPE_CHECKING:
    from .registry import Models

K = TypeVar("K")

IN_FLIGHT_PER_WORKER = 2  # batches queued per actor: keeps it busy while one result travels
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


@dataclass
class DecodedInfo:
    width: int
    height: int
    format: str


@dataclass
class EncodedBatch(Generic[K]):
    """One finished batch: vectors of the photos that decoded, and the ones that did not."""

    keys: list[K]
    vectors: np.ndarray
    infos: list[DecodedInfo]
    failed: list[tuple[K, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ModelPackage:
    """What a worker needs to build a model: its name, the checkpoint files behind it, and the
    provider it comes from (None: the installed registry, models.registry.REGISTRY)."""

    name: str
    files: dict[str, bytes]
    provider: Models | None = None

    @classmethod
    def of(cls, name: str, dirs: list[Path] | None = None, provider: Models | None = None
           ) -> "ModelPackage":
        from . import registry

        if provider is registry.REGISTRY:
            provider = None
        models = provider or registry.REGISTRY
        entry = models.resolve(name, dirs)
        files: dict[str, bytes] = {}
        if entry.kind in ("fused", "blend"):  # both generations' models travel
            from .bridge import parse_fused

            old, bridge, _ = parse_fused(name)
            for part in (old, bridge):
                files.update(cls.of(part, dirs, provider).files)
            return cls(entry.name, files, provider)
        # a checkpoint file behind the name travels (a provider's models may have none)
        if entry.kind == "compatible" and entry.meta is not None and Path(entry.source).is_file():
            source = Path(entry.source)
            files[source.name] = source.read_bytes()
            backbone = models.resolve(entry.meta.backbone, dirs)
            if backbone.kind == "compatible" and Path(backbone.source).is_file():
                files[Path(backbone.source).name] = Path(backbone.source).read_bytes()
        return cls(entry.name, files, provider)

    def __reduce__(self) -> tuple[Any, tuple]:
        """A provider travels as cloudpickle bytes with the folder its module was imported from,
        so that a worker can add that folder to its path before it unpickles the provider."""
        if self.provider is None:
            return ModelPackage, (self.name, self.files)
        from ray import cloudpickle

        return _unpack, (self.name, self.files, _import_root(self.provider),
                         cloudpickle.dumps(self.provider))


def _import_root(obj: object) -> str | None:
    """The sys.path folder the module of `obj`'s class was imported from (None: unknown, or a
    module cloudpickle sends by value)."""
    module = sys.modules.get(type(obj).__module__)
    file = getattr(module, "__file__", None)
    if module is None or module.__name__ == "__main__" or not file:
        return None
    root = Path(file).resolve().parent
    for _ in range(module.__name__.count(".") + (Path(file).stem == "__init__")):
        root = root.parent
    return str(root)


def _unpack(name: str, files: dict[str, bytes], root: str | None, provider: bytes
            ) -> ModelPackage:
    import pickle

    if root and root not in sys.path and os.path.isdir(root):
        sys.path.append(root)  # after the worker's own: what it has installed comes first
    return ModelPackage(name, files, pickle.loads(provider))


class _Worker:
    """Ray actor body: the model, loaded once, decoding and embedding whole batches."""

    def __init__(self, package: ModelPackage, threads: int):
        from . import registry

        self._files = tempfile.TemporaryDirectory(prefix="graceful-model-")  # gone with the actor
        folder = Path(self._files.name)
        for fname, data in package.files.items():
            (folder / fname).write_bytes(data)
        self.model = (package.provider or registry.REGISTRY).load(package.name, [folder])
        if "torch" in sys.modules:  # a model that computes with torch (a numpy one never imports it)
            import torch

            torch.set_num_threads(threads)

    def runtime(self) -> str:
        return getattr(self.model, "runtime", "torch")

    def imported(self, module: str) -> bool:
        """Whether this worker has imported `module` (tests: a numpy provider's never has torch)."""
        return module in sys.modules

    def embed(self, blobs: list[bytes]) -> tuple[np.ndarray, list, list[tuple[int, str]]]:
        from .imageio import BadImage, decode

        items, infos, failed = [], [], []
        for i, data in enumerate(blobs):
            try:
                decoded = decode(data, target_size=self.model.info.image_size)
                items.append(self.model.preprocess(decoded.image))
                infos.append((i, decoded.width, decoded.height, decoded.format))
            except BadImage as e:
                failed.append((i, str(e)))
        vectors = (self.model.embed_batch(self.model.collate(items)) if items
                   else np.zeros((0, self.model.dim), np.float32))
        return vectors, infos, failed


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

    def start(self, timeout: float) -> str:
        port = _free_port()
        self._log = tempfile.NamedTemporaryFile("w+", prefix="graceful-ray-", suffix=".log")
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
             "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--ray-client-server-port", str(_free_port()), "--include-dashboard", "false",
             "--dashboard-host", "127.0.0.1", "--num-cpus", str(self.cpus),
             "--disable-usage-stats"],
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
    except socket.timeout:
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
        except socket.timeout:
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


def _fits(workers: int | None, threads_per_worker: int, cpus: int) -> int:
    """The number of workers (default: as many as the CPUs hold); more than fit is a ValueError."""
    n = max(1, workers or cpus // threads_per_worker)
    if n * threads_per_worker > cpus:
        raise ValueError(f"{n} Ray workers of {threads_per_worker} CPU need "
                         f"{n * threads_per_worker} CPUs; the cluster has {cpus}")
    return n


class RayEmbedPool:
    """Actors holding `package`'s model; `map` streams encoded photos through them."""

    def __init__(self, package: ModelPackage, address: str = "auto", workers: int | None = None,
                 threads_per_worker: int = 1):
        import ray

        self.actors: list = []
        self._runtime: LocalRuntime | None = None
        self._started = False
        if address == "auto":  # a local runtime gets this machine's CPUs: refuse before starting it
            _fits(workers, threads_per_worker, os.cpu_count() or 1)
        self._started, self._runtime = connect(address)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.workers = _fits(workers, threads_per_worker, cpus)
            actor = ray.remote(num_cpus=threads_per_worker)(_Worker).options(
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads_per_worker)}})
            self.actors = [actor.remote(package, threads_per_worker) for _ in range(self.workers)]
            # waits for every actor's model: a worker that cannot build it fails here, at once
            self.runtimes = sorted(set(ray.get([a.runtime.remote() for a in self.actors],
                                               timeout=load_timeout())))
        except BaseException:
            self.close()
            raise

    def map(self, items: Iterable[tuple[K, bytes]], batch_size: int = 16
            ) -> Iterator[EncodedBatch[K]]:
        """Batches finish in any order; every key comes back once, embedded or failed."""
        import ray

        pending: dict = {}  # object ref -> (keys, actor index)
        idle = list(range(len(self.actors))) * IN_FLIGHT_PER_WORKER
        it = iter(items)

        def submit() -> bool:
            keys, blobs = [], []
            for key, data in it:
                keys.append(key)
                blobs.append(data)
                if len(keys) == batch_size:
                    break
            if not keys:
                return False
            a = idle.pop()
            pending[self.actors[a].embed.remote(blobs)] = (keys, a)
            return True

        try:
            while idle and submit():
                pass
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                keys, a = pending.pop(done[0])
                vectors, infos, failed = ray.get(done[0])
                idle.append(a)
                yield EncodedBatch([keys[i] for i, *_ in infos], vectors,
                                   [DecodedInfo(w, h, f) for _, w, h, f in infos],
                                   [(keys[i], why) for i, why in failed])
                while idle and submit():
                    pass
        finally:
            for ref in pending:
                ray.cancel(ref, force=False)

    def close(self) -> None:
        import ray

        try:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
            if self._started:  # a runtime this job started (or joined) ends with it
                ray.shutdown()
                self._started = False
        finally:
            if self._runtime is not None:
                self._runtime.stop()
                self._runtime = None


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
