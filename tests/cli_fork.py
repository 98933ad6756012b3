"""The tests' CLI processes, forked from a process that has the CLI's modules imported already.

A `graceful` command in its own process spends ~0.5 s of its ~1 s importing numpy, faiss, ONNX
Runtime, Pillow, sqlite-utils and our packages (and 1.5 s more for pymilvus on a Milvus
gallery), and the suite starts ~100 of them. `run()`, `run_together()` and `start()` ask this
pytest process's fork server (started on first use, stopped with the session) for a child: the
server forks, and the child takes the test's argv, environment, working folder and
stdin/stdout/stderr (passed as file descriptors), runs `search.cli.main()` as
`python -m search.cli` would, runs the exit handlers and exits with the command's code. Each
command still runs in a process of its own, on its own files, with its own exit code, and can be
killed (`run_and_kill`). What it does not exercise is the interpreter's start and the CLI's
imports: the tests that are about those exec `python -m search.cli` themselves
(tests/test_fastpath.py, test_scaling.py's "nothing imports Ray or pymilvus"), and so do the
Ctrl-C tests and the pause-hook kills (`kill_at`).

GRACEFUL_TEST_EXEC=1 makes every one of them exec `python -m search.cli` instead (to rule the
fork server out when a test behaves oddly)."""
from __future__ import annotations

import atexit
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a CLI process imports before doing anything, and Milvus's client (pymilvus: 1.5 s, pandas
# included; imported, never connected, so no gRPC channel or thread exists at the fork). Not
# Ray (it reads RAY_* settings when first imported) or torch: the commands that need them import
# them, and the tests that check which commands import what exec their own processes. An extra
# that is not installed is passed over.
PRELOAD = ("numpy", "faiss", "PIL.Image", "onnxruntime", "sqlite_utils", "click", "tqdm",
           "pymilvus", "milvus_lite", "search.cli", "search.api", "models.registry",
           "models.imageio", "models.pipeline")


def _child(fds: list[int], request: dict, base_path: list[str]) -> None:
    """In the forked child: become the command, run it, exit with its code."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *extra, *base_path]  # as `python -m` in that folder
        os.chdir(request["cwd"])
        sys.argv = [str(ROOT / "search" / "cli" / "__main__.py"), *request["argv"]]
        from search.cli import main

        try:
            main()
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        threading._shutdown()  # type: ignore[attr-defined]  # as the interpreter's exit does
        atexit._run_exitfuncs()
        gc.collect()  # closes what only garbage still holds (SQLite connections, files)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def serve(path: str) -> None:
    """The fork server: import PRELOAD, then fork one child per request on the socket and
    report its exit status (as subprocess does: -N for signal N) when it ends; a client's
    {"signal": N} goes to its child through a pidfd (no pid reuse)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with its pytest process
    with warnings.catch_warnings(record=True) as warned:
        for name in PRELOAD:
            try:
                __import__(name)
            except ImportError:
                pass
    if warned:  # a real process would print them on the command's stderr: say so, do not hide
        sys.exit(f"the CLI fork server's imports warned: {[str(w.message) for w in warned]}")
    if threading.active_count() != 1:  # (native pools, OpenBLAS's, have their fork handlers)
        sys.exit("a Python thread exists before the CLI fork server forks")
    ours = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    base_path = [p for p in sys.path[1:] if os.path.abspath(p) not in ours]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(64)
    print("ready", flush=True)
    running: dict[int, tuple[socket.socket, int, int]] = {}  # pidfd -> (client, pid, pidfd)
    clients: dict[int, int] = {}  # client socket fd -> pidfd
    while True:
        watched = [server, *running, *(running[f][0] for f in clients.values())]
        for ready in select.select(watched, [], [])[0]:
            if ready is server:
                _accept(server, running, clients, base_path)
            elif isinstance(ready, int):  # a child ended
                conn, pid, _ = running.pop(ready)
                clients.pop(conn.fileno(), None)
                _, status = os.waitpid(pid, 0)
                try:
                    conn.send(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode())
                except OSError:
                    pass
                conn.close()
                os.close(ready)
            else:  # a client: a signal for its child, or gone
                pidfd = clients[ready.fileno()]
                message = ready.recv(4096)
                if not message:
                    clients.pop(ready.fileno())
                    continue
                try:
                    signal.pidfd_send_signal(pidfd, json.loads(message)["signal"])
                except ProcessLookupError:
                    pass


def _accept(server: socket.socket, running: dict, clients: dict, base_path: list[str]) -> None:
    conn, _ = server.accept()
    try:
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(message)
    except (OSError, ValueError):
        conn.close()
        return
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        server.close()
        conn.close()
        for pidfd, (other, _, _) in running.items():
            other.close()
            os.close(pidfd)
        _child(fds, request, base_path)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    running[pidfd] = (conn, pid, pidfd)
    clients[conn.fileno()] = pidfd
    conn.send(json.dumps({"pid": pid}).encode())


class Forked:
    """A forked command, as much of subprocess.Popen as the tests use: args, pid, poll, wait,
    send_signal, kill, returncode (the fork server's waitpid status)."""

    def __init__(self, argv: list[str], conn: socket.socket, pid: int):
        self.args, self.conn, self.pid = argv, conn, pid
        self.returncode: int | None = None

    def _reply(self, timeout: float | None) -> None:
        self.conn.settimeout(timeout)
        try:
            reply = self.conn.recv(4096)
        except TimeoutError:
            raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
        if not reply:
            raise RuntimeError(f"the CLI fork server went away while {self.args} ran")
        self.returncode = json.loads(reply)["rc"]
        self.conn.close()

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.conn], [], [], 0)[0]:
            self._reply(None)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._reply(timeout)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                self.conn.send(json.dumps({"signal": int(sig)}).encode())
            except OSError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="graceful-cli-fork-")
        self.path = os.path.join(self.folder, "socket")
        self.proc = subprocess.Popen([sys.executable, __file__, self.path], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None and self.proc.stderr is not None
        if self.proc.stdout.readline().strip() != b"ready":
            self.proc.kill()
            raise RuntimeError("the CLI fork server did not start: "
                               + self.proc.stderr.read().decode(errors="replace")[-2000:])

    def start(self, argv: list[str], env: dict, cwd: str, out: int, err: int) -> Forked:
        request = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with open(os.devnull, "rb") as null:
            conn.connect(self.path)
            socket.send_fds(conn, [request], [null.fileno(), out, err])
        return Forked(argv, conn, json.loads(conn.recv(4096))["pid"])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)


_SERVER: ForkServer | None = None


def _server() -> ForkServer:
    global _SERVER
    if _SERVER is None or _SERVER.proc.poll() is not None:  # not started, or gone
        if _SERVER is not None:
            _SERVER.stop()
        _SERVER = ForkServer()
    return _SERVER


def run(argv, env: dict | None = None, cwd: str | Path | None = None, timeout: float = 600
        ) -> subprocess.CompletedProcess:
    """`python -m search.cli ARGV` in a process of its own, with `env` (default: this one's)
    in `cwd` (default: this one's), output captured as text: subprocess.run's
    CompletedProcess."""
    return run_together([argv], dict(os.environ if env is None else env), timeout, cwd)[0]


def run_together(argvs: list[list], env: dict, timeout: float = 300,
                 cwd: str | Path | None = None) -> list[subprocess.CompletedProcess]:
    """Several commands started at once (a race), each in a process of its own; waits for all
    (a timeout kills every one of them)."""
    files = [(tempfile.TemporaryFile(), tempfile.TemporaryFile()) for _ in argvs]
    try:
        procs = [start(argv, env, out.fileno(), err.fileno(), cwd)
                 for argv, (out, err) in zip(argvs, files)]
        done = []
        for proc, (out, err) in zip(procs, files):
            try:
                proc.wait(timeout)
            except BaseException:
                for other in procs:
                    other.kill()
                raise
            out.seek(0)
            err.seek(0)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode,
                                                    out.read().decode(errors="replace"),
                                                    err.read().decode(errors="replace")))
        return done
    finally:
        for out, err in files:
            out.close()
            err.close()


def start(argv, env: dict, out: int = subprocess.DEVNULL, err: int = subprocess.DEVNULL,
          cwd: str | Path | None = None) -> Forked | subprocess.Popen:
    """`python -m search.cli ARGV` started in a process of its own in `cwd` (default: this
    one's), stdout/stderr to the file descriptors `out` and `err` (default /dev/null): a
    Forked, or under GRACEFUL_TEST_EXEC=1 a subprocess.Popen."""
    argv = [str(a) for a in argv]
    cwd = os.getcwd() if cwd is None else str(cwd)
    if os.environ.get("GRACEFUL_TEST_EXEC") == "1":
        return subprocess.Popen([sys.executable, "-m", "search.cli", *argv], env=env, cwd=cwd,
                                stdout=out, stderr=err)
    with open(os.devnull, "wb") as null:
        return _server().start(argv, dict(env), cwd,
                               null.fileno() if out == subprocess.DEVNULL else out,
                               null.fileno() if err == subprocess.DEVNULL else err)


def stop() -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None


if __name__ == "__main__":
    serve(sys.argv[1])
