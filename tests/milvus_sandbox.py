"""A Milvus standalone server (the PyPI `milvus` package, 2.3.x) for the slow tests, reachable
from 127.0.0.1 only.

Milvus 2.3's gRPC and metrics servers listen on every interface whatever `*.ip` says. So this
script runs inside a network namespace of its own (`unshare -n`: only a loopback device, which
it brings up): nothing outside can reach the server. The only way in is a listening socket
bound to 127.0.0.1 in the caller's namespace, passed in as --listen-fd; each connection to it is
relayed to the proxy's port inside. The caller starts this in a session of its own and stops
the whole group (SIGTERM: the server is stopped first).

    unshare -n -- python3 tests/milvus_sandbox.py --listen-fd N --data DIR --ready FILE

`running(base)` does all of that from the caller's side (used by bench/scaling.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from os.path import dirname, join
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_milvus(data: str) -> tuple[subprocess.Popen, int, int]:
    from milvus import MilvusServerConfig, _initialize_data_files

    cfg = MilvusServerConfig(data_dir=data)
    for key in [k for k in cfg.configurable_items if k.endswith("_port")]:
        cfg.configs[key] = free_port()
    for part in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord",
                 "dataNode"):
        cfg.set(f"{part}.ip", "127.0.0.1")
    cfg.resolve()
    _initialize_data_files(cfg.base_data_dir)
    exe = join(cfg.base_data_dir, "bin", "milvus")
    metrics = free_port()
    env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(metrics),
           "MILVUS_RUN_DIR": join(cfg.base_data_dir, "run"),
           "LD_LIBRARY_PATH": dirname(exe) + ":" + os.environ.get("LD_LIBRARY_PATH", "")}
    log = open(join(cfg.base_data_dir, "logs", "milvus-stdout.log"), "w")
    proc = subprocess.Popen([exe, "run", "standalone"], cwd=cfg.base_data_dir, env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return proc, int(cfg.get("proxy_port")), metrics


def wait_healthy(proc: subprocess.Popen, metrics: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=5) as r:
                if b"OK" in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"milvus not healthy within {timeout:g} s")


def relay(listener: socket.socket, port: int) -> None:
    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    while True:
        client, _ = listener.accept()
        try:
            server = socket.create_connection(("127.0.0.1", port))
        except OSError:
            client.close()
            continue
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pipe, args=(client, server), daemon=True).start()
        threading.Thread(target=pipe, args=(server, client), daemon=True).start()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def running(base: Path, timeout: float = 240):
    """Caller's side: this script in a network namespace and a session of its own; yields its
    ready facts plus "uri" (http://127.0.0.1:PORT). Always stops the whole session after
    (SIGTERM, then SIGKILL to whatever is left) and raises if any of its processes survives."""
    from models.ray_runtime import session_pids  # the caller runs inside the repository
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        raise RuntimeError("cannot make a network namespace (unshare -n)")
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    ready = base / "ready.json"
    with open(base / "sandbox.log", "w") as log:
        proc = subprocess.Popen(
            ["unshare", "-n", "--", sys.executable, __file__, "--listen-fd",
             str(listener.fileno()), "--data", str(base / "data"), "--ready", str(ready)],
            pass_fds=[listener.fileno()], start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=log)
    listener.close()  # the sandbox holds it now
    try:
        deadline = time.time() + timeout
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        facts = json.loads(ready.read_text()) if ready.exists() else {
            "error": f"no answer (exit {proc.poll()}): {(base / 'sandbox.log').read_text()[-500:]}"}
        if "error" in facts:
            raise RuntimeError(f"the Milvus server did not start: {facts['error']}")
        yield {**facts, "uri": f"http://127.0.0.1:{port}"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        if left := session_pids(proc.pid):
            raise RuntimeError(f"Milvus server processes left: {left}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen-fd", type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    listener = socket.socket(fileno=args.listen_fd)
    started = time.monotonic()
    proc, proxy, metrics = start_milvus(args.data)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def stop(code: int = 0):  # from the main thread only (Popen.wait is not reentrant)
        proc.terminate()
        try:  # its data is thrown away: no need for the ~10 s of its own graceful stop
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os._exit(code)
    try:
        wait_healthy(proc, metrics, args.timeout)
    except BaseException as e:
        with open(args.ready + ".tmp", "w") as f:
            json.dump({"error": str(e)}, f)
        os.replace(args.ready + ".tmp", args.ready)
        stop(1)
    with open(args.ready + ".tmp", "w") as f:
        json.dump({"milvus_pid": proc.pid, "start_s": round(time.monotonic() - started, 2),
                   "rss_kib": rss_kib(proc.pid)}, f)
    os.replace(args.ready + ".tmp", args.ready)
    threading.Thread(target=relay, args=(listener, proxy), daemon=True).start()
    while not stopping.is_set() and proc.poll() is None:
        stopping.wait(0.2)
    stop(0 if stopping.is_set() else 1)


if __name__ == "__main__":
    main()
