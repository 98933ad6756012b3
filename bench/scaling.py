"""Milvus and Ray against the embedded default, in the same run (docs/BENCHMARKS.md section 10).

    python -m bench.scaling --sizes 10000,100000 --ray-photos 2000 --json bench/out/scaling.json

search   per size: p50/p95 of a Graceful search (store search + catalog rows) and of the bare
         store call, recall@10 against exact FAISS search, build time and write throughput
         (vectors/s of the whole build, of its upserts alone, and of upserts in batches of 16
         into the live index, as jobs write); FAISS flat/auto and Milvus Lite FLAT / IVF_FLAT on
         the same photo-like vectors (real lite0 embeddings + noise).
         --milvus-server adds a Milvus 2.3 standalone server (PyPI `milvus`, started for the run
         in a network namespace of its own through tests/milvus_sandbox.py, reached at
         http://127.0.0.1:PORT through a relay, always stopped after) FLAT / IVF_FLAT at each
         size, plus the round trip of a trivial request (has_collection) on each Milvus, the
         floor every call pays (on the server: relay + gRPC + proxy), and on each Milvus the
         store call with consistency_level="Bounded" and "Strong" next to Graceful's own level
         (GRACEFUL_MILVUS_CONSISTENCY: Session by default since issue 25, Strong before; a
         Milvus 2.3 server answers a Strong search after its next time tick,
         proxy.timeTickInterval). --configs runs only some store/kind pairs (faiss/flat always).
         Server searches start once it has indexed every row and is idle again (settle_s); each
         measurement records the share of the machine other processes used meanwhile.

    python -m bench.scaling --sections search --milvus-server --sizes 10000,100000 --repeat 100 \
        --json bench/out/scaling_server.json
upgrade  a 100k-photo gallery on each store: cold open, then upgrade() (pre-flight on 64 real
         photos + the switch); nothing is recomputed on either store.
ray      a backfill of N real photos (lite0 -> lite2-compat-lite0): plain path, Ray with 1 and 2
         workers, each from the same starting gallery; wall time incl. Ray start and the rate
         once the workers run; the catalog writer's own ceiling; the projection to 10M photos.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    ROOT,
    caltech_files,
    machine,
    percentiles,
    rss_mib,
    synthetic_vectors,
    timed,
    write_json,
)
from search.runtime import configure_threads

NEW = "lite2-compat-lite0"


def photo_like_centers(n: int = 300) -> np.ndarray:
    from models import registry

    model = registry.load("lite0")
    from models.imageio import decode

    images = [decode(f.read_bytes(), model.info.image_size).image for f in caltech_files("test", n)]
    return model.embed_images(images)


def fill_catalog(home: Path, size: int, centers: np.ndarray, space: str = "lite0"):
    """A gallery whose catalog holds `size` photo-like vectors of `space` (no image files)."""
    from search.api import Gallery

    g = Gallery.open(home, create=True, store="faiss")
    gen = np.random.default_rng(size + 1)
    with g.core.catalog.transaction():
        g.core.catalog.conn.db.conn.executemany(
            "INSERT INTO images (id, sha256, name, ext, bytes, width, height, format, source,"
            " added_at) VALUES (?, ?, ?, '.jpg', 0, 0, 0, 'JPEG', 'synthetic', 0)",
            ((i, f"{i:064x}", f"img{i}.jpg") for i in range(1, size + 1)))
        for start in range(1, size + 1, 20000):
            n = min(20000, size + 1 - start)
            g.core.catalog.vectors.put_vectors(list(range(start, start + n)), synthetic_vectors(centers, n, gen),
                                  "lite0", space)
    return g


def milvus_sandbox():
    """tests/milvus_sandbox.py (the same sandbox the slow tests' milvus_server fixture uses)."""
    spec = importlib.util.spec_from_file_location("milvus_sandbox",
                                                  ROOT / "tests" / "milvus_sandbox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_tree_cpu_s() -> float:
    """CPU seconds of this process and its descendants (the Milvus server, a Lite server)."""
    parent, seconds = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)] = int(fields[1])
            seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mine, total = {os.getpid()}, 0.0
    changed = True
    while changed:
        changed = False
        for pid, pp in parent.items():
            if pp in mine and pid not in mine:
                mine.add(pid)
                changed = True
    for pid in mine:
        total += seconds.get(pid, 0.0)
    return total


class OthersMeter:
    """Share of the machine (0..1) that processes outside this benchmark used meanwhile."""

    def __enter__(self):
        self.t, self.busy, self.own = time.perf_counter(), busy_s(), own_tree_cpu_s()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        others = (busy_s() - self.busy) - (own_tree_cpu_s() - self.own)
        self.share = round(max(0.0, others) / (wall * os.cpu_count()), 3)


def settle(client, name: str, pid: int, timeout: float = 180) -> float:
    """Wait until the server has indexed every row of `name` and is idle again (under 10 % of
    a core for a second): Milvus builds sealed segments' indexes after create_index returns.
    Returns the seconds waited."""
    t0 = time.perf_counter()
    index = client.list_indexes(name)[0]
    while time.perf_counter() - t0 < timeout:
        info = client.describe_index(name, index)
        if info.get("pending_index_rows", 0) == 0 and info.get("indexed_rows") == info.get(
                "total_rows"):
            break
        time.sleep(0.5)
    while time.perf_counter() - t0 < timeout:
        c0 = cpu_s(pid)
        time.sleep(1.0)
        if cpu_s(pid) - c0 < 0.1:
            break
    return round(time.perf_counter() - t0, 1)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


@contextlib.contextmanager
def upsert_clock():
    """Seconds spent in MilvusSpace.upsert (the writes of a Milvus build), as a list of one."""
    from search.storage.milvus_store import MilvusSpace

    spent = [0.0]
    original = MilvusSpace.upsert

    def timed_upsert(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0
    MilvusSpace.upsert = timed_upsert
    try:
        yield spent
    finally:
        MilvusSpace.upsert = original


def live_upserts(idx, catalog, space: str, n: int = 2000, batch: int = 16) -> float:
    """Vectors/s of upserts in batches of `batch` into the live index (as an index or backfill
    job writes after each catalog transaction): `n` stored vectors written again as they are, so
    the index's content (and the recall measured before) is unchanged."""
    ids = catalog.vectors.space_members(space)[:n].tolist()
    stored = catalog.vectors.serving_vectors_of(ids, space)
    vectors = np.stack([stored[i] for i in ids]).astype(np.float32)
    t0 = time.perf_counter()
    for s in range(0, len(ids), batch):
        idx.upsert(np.asarray(ids[s:s + batch]), vectors[s:s + batch], ["lite0"] * len(ids[s:s + batch]))
    return len(ids) / (time.perf_counter() - t0)


def round_trip(client, name: str, repeat: int) -> dict:
    """p50/p95 of a trivial request (has_collection): the floor of every call to this Milvus."""
    return percentiles(timed(lambda: client.has_collection(name), repeat))


def bounded_search(client, name: str, queries: np.ndarray, exact: np.ndarray,
                   repeat: int, level: str = "Bounded") -> dict:
    """The store call at another consistency `level` than Graceful's (GRACEFUL_MILVUS_CONSISTENCY,
    Session by default; Strong before issue 25): p50/p95 and recall@10 against `exact`."""
    from search.storage.milvus_store import DEFAULT_NPROBE

    params = {"metric_type": "IP", "params": {"nprobe": DEFAULT_NPROBE}}

    def search(q):
        return client.search(name, data=list(q), limit=10, search_params=params, output_fields=[],
                             consistency_level=level)
    it = iter(range(10**9))
    out = percentiles(timed(lambda: search(queries[next(it) % repeat][None]), repeat))
    found = search(queries)
    out["recall_at_10_vs_exact"] = round(float(np.mean(
        [len({h["id"] for h in hits} & set(b)) / 10 for hits, b in zip(found, exact)])), 4)
    return out


def search_section(sizes: list[int], centers: np.ndarray, repeat: int,
                   server: dict | None = None, only: set[str] | None = None) -> list[dict]:
    """`server`: the facts of a running Milvus server ("uri", "milvus_pid"), or None; `only`:
    the store/kind configurations to run (default all; faiss/flat always runs first)."""
    out = []
    for size in sizes:
        home = Path(tempfile.mkdtemp(prefix="graceful-bench-scale-"))
        try:
            g = fill_catalog(home, size, centers)
            queries = synthetic_vectors(centers, repeat, np.random.default_rng(7))
            row: dict = {"vectors": size}
            exact = None
            configs = [("faiss", "flat"), ("faiss", "auto"), ("milvus", "flat"), ("milvus", "ivf")]
            if server:
                configs += [("milvus-server", "flat"), ("milvus-server", "ivf")]
            for store, kind in configs:
                if store == "faiss" and kind == "auto" and size < 50_000:
                    continue
                if store.startswith("milvus") and kind == "ivf" and size < 10_000:
                    continue
                if only and f"{store}/{kind}" not in only | {"faiss/flat"}:
                    continue
                if store == "milvus-server":
                    g.vectors.choose_store("milvus", server["uri"], move=True)
                else:
                    g.vectors.choose_store(store, move=True)
                rss0 = rss_mib()
                server_cpu0 = cpu_s(server["milvus_pid"]) if server else 0.0
                with upsert_clock() as upsert_s:
                    t0 = time.perf_counter()
                    built = g.core.rebuild_index("lite0", kind)
                    build_s = time.perf_counter() - t0
                idx = g.core.index("lite0")
                settled = (settle(g.core.vector_store.client, g.core.vector_store.collection("lite0"),
                                  server["milvus_pid"]) if store == "milvus-server" else None)
                with OthersMeter() as others:
                    it = iter(range(10**9))
                    bare = timed(lambda idx=idx, queries=queries, it=it:
                                 idx.search(queries[next(it) % repeat][None], 10), repeat)
                    it2 = iter(range(10**9))
                    ours = timed(lambda g=g, queries=queries, it2=it2: g.core.search_vectors(
                        queries[next(it2) % repeat][None], 10,
                                                          "bench", "lite0"), repeat)
                    _, ids = idx.search(queries, 10)
                if exact is None:
                    exact = ids  # faiss flat comes first: exact search
                recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]))
                key = f"{store}/{kind}"
                row[key] = {"built": built, "build_s": round(build_s, 1),
                            "build_vectors_per_s": round(size / build_s),
                            "graceful_search": percentiles(ours), "store_search": percentiles(bare),
                            "recall_at_10_vs_exact": round(recall, 4),
                            "rss_growth_mib": round(rss_mib() - rss0, 1),
                            "others_cpu_share_during_search": others.share}
                if settled is not None:
                    row[key]["settle_s"] = settled  # after the build, before the searches
                if store.startswith("milvus"):
                    row[key]["upsert_vectors_per_s_batch2000"] = round(size / upsert_s[0])
                    client, name = g.core.vector_store.client, g.core.vector_store.collection("lite0")
                    row[key]["trivial_request"] = round_trip(client, name, repeat)
                    with OthersMeter() as others:
                        row[key]["store_search_bounded"] = bounded_search(client, name, queries,
                                                                          exact, repeat)
                    row[key]["store_search_bounded"]["others_cpu_share"] = others.share
                    row[key]["store_search_strong"] = bounded_search(client, name, queries, exact,
                                                                     repeat, "Strong")
                # last: it writes (the same vectors again), the searches above saw a flushed store
                row[key]["live_upsert_vectors_per_s_batch16"] = round(
                    live_upserts(idx, g.core.catalog, "lite0"))
                if server:  # what the idle (or busy) server cost in CPU during this config
                    row[key]["server_cpu_s"] = round(cpu_s(server["milvus_pid"]) - server_cpu0, 1)
                    row[key]["server_rss_mib"] = round(rss_kib(server["milvus_pid"]) / 1024)
                print(size, key, row[key], flush=True)
            base = row["faiss/flat"]["graceful_search"]["p50_ms"]
            base_store = row["faiss/flat"]["store_search"]["p50_ms"]
            for key in [k for k in row if k.startswith("milvus")]:
                row[key]["p50_over_faiss_flat"] = round(
                    row[key]["graceful_search"]["p50_ms"] / base, 2)
                row[key]["store_p50_over_faiss_flat"] = round(
                    row[key]["store_search"]["p50_ms"] / base_store, 2)
                row[key]["bounded_p50_over_faiss_flat_store"] = round(
                    row[key]["store_search_bounded"]["p50_ms"] / base_store, 2)
            if server:  # free the server's memory for the next size
                g.core.vector_store.client.drop_collection(g.core.vector_store.collection("lite0"))
            out.append(row)
            g.close()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return out


def upgrade_section(size: int, centers: np.ndarray) -> list[dict]:
    """upgrade() on a `size`-photo gallery per store. The stored files of the synthetic photos
    are hard links to real Caltech photos so that the pre-flight embeds real images; their
    vectors are synthetic, so the check refuses and the upgrade is forced (timed the same)."""
    from search.api import Gallery
    from search.ops.upgrade import upgrade

    real = caltech_files("test", 200)
    out = []
    for store in ("faiss", "milvus"):
        home = Path(tempfile.mkdtemp(prefix="graceful-bench-up-"))
        try:
            g = fill_catalog(home, size, centers)
            g.core.ensure_model("lite0")
            g.vectors.choose_store(store, move=True)
            for i, row in g.core.catalog.images.images(range(1, size + 1)).items():
                dest = g.core.store.path(row.sha256, row.ext)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.hardlink_to(real[i % len(real)])
            g.core.rebuild_index("lite0", "auto")
            g.close()
            t0 = time.perf_counter()
            g = Gallery.open(home)
            g.core.index()
            open_s = time.perf_counter() - t0
            before = g.core.catalog.vectors.vector_counts()
            t0 = time.perf_counter()
            result = upgrade(g.core, NEW, force=True)
            total = time.perf_counter() - t0
            assert g.core.catalog.vectors.vector_counts() == before  # nothing recomputed
            out.append({"store": store, "gallery": size, "cold_open_s": round(open_s, 3),
                        "upgrade_total_s": round(total, 3),
                        "preflight_s": result.preflight.seconds,
                        "switch_ms": result.switch_ms, "vectors_recomputed": 0})
            print(out[-1], flush=True)
            g.close()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return out


def ray_section(n_photos: int, workers: list[int]) -> dict:
    from search.api import Gallery
    from search.ops import backfill as bf
    from search.ops.raypool import RayOptions

    root = Path(tempfile.mkdtemp(prefix="graceful-bench-ray-"))
    try:
        template = root / "template"
        g = Gallery.open(template, create=True)
        g.add(caltech_files("train", n_photos))
        g.upgrade(NEW, force=True)
        n = g.core.catalog.images.count_images()
        g.close()
        runs = []
        for label, options in [("plain", None)] + [
                (f"ray-{w}", RayOptions("auto", workers=w)) for w in workers]:
            home = root / label
            shutil.copytree(template, home)
            g = Gallery.open(home)
            marks: list[tuple[float, int]] = []  # (time, photos done) at each committed batch
            t0 = time.perf_counter()
            bf.backfill(g.core, on_progress=lambda st, marks=marks: marks.append((time.perf_counter(), st.done)),
                        ray=options)
            wall = time.perf_counter() - t0
            counts = {r["model"]: r["vectors"] for r in g.core.catalog.vectors.vector_counts()}
            assert counts[NEW] == n, counts
            g.close()
            (t_first, d_first), (t_last, d_last) = marks[0], marks[-1]
            runs.append({"run": label, "photos": n, "wall_s": round(wall, 1),
                         "images_per_s": round(n / wall, 2),
                         "first_batch_after_s": round(t_first - t0, 1),
                         "steady_images_per_s": round((d_last - d_first) / (t_last - t_first), 2)})
            print(runs[-1], flush=True)
            shutil.rmtree(home, ignore_errors=True)
        return {"runs": runs, "catalog_writer": writer_ceiling(template)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def writer_ceiling(template: Path, batches: int = 200, batch: int = 16) -> dict:
    """Vectors/s the single catalog writer commits (one transaction per batch of 16, 1280-d):
    the ceiling of any number of Ray workers feeding one catalog."""
    from search.api import Gallery

    home = template.parent / "writer"
    shutil.copytree(template, home)
    try:
        g = Gallery.open(home)
        ids = g.core.catalog.vectors.space_members("lite0")[: batch * batches].tolist()
        v = np.random.default_rng(0).standard_normal((len(ids), 1280), dtype=np.float32)
        t0 = time.perf_counter()
        for s in range(0, len(ids), batch):
            with g.core.catalog.transaction():
                g.core.catalog.vectors.put_vectors(ids[s:s + batch], v[s:s + batch], "writer-bench", "lite0")
        rate = len(ids) / (time.perf_counter() - t0)
        g.close()
        return {"vectors_per_s": round(rate, 1), "batch": batch}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def projection(per_worker_rate: float, writer_rate: float, photos: int = 10_000_000,
               cores: tuple[int, ...] = (2, 16), machines: tuple[int, ...] = (1, 10, 50)) -> list[dict]:
    """T(N machines x C cores) = photos / min(N * C * r_worker, writer ceiling)."""
    out = []
    for c in cores:
        for m in machines:
            rate = min(m * c * per_worker_rate, writer_rate)
            out.append({"machines": m, "cores_each": c, "images_per_s": round(rate, 1),
                        "hours": round(photos / rate / 3600, 2),
                        "bound_by": "catalog writer" if rate == writer_rate else "workers"})
    return out


def milvus_version() -> str:
    from importlib.metadata import version

    return version("milvus")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--upgrade-size", type=int, default=100_000)
    ap.add_argument("--ray-photos", type=int, default=2000)
    ap.add_argument("--ray-workers", default="1,2")
    ap.add_argument("--sections", default="search,upgrade,ray")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--milvus-server", action="store_true",
                    help="also search a Milvus 2.3 standalone server started for this run "
                         "(pip install 'graceful[milvus-server]'; needs `unshare -n`)")
    ap.add_argument("--configs", help="search: only these store/kind configurations, e.g. "
                    "milvus-server/flat (faiss/flat always runs: the baseline)")
    ap.add_argument("--json")
    args = ap.parse_args()
    only = set(args.configs.split(",")) if args.configs else None
    configure_threads(args.threads)
    sections = args.sections.split(",")
    out: dict = {"machine": machine(), "command": " ".join(sys.argv)}
    centers = photo_like_centers() if {"search", "upgrade"} & set(sections) else None
    if "search" in sections:
        sizes = [int(s) for s in args.sizes.split(",")]
        if args.milvus_server:
            base = Path(tempfile.mkdtemp(prefix="graceful-bench-milvus-server-"))
            try:
                with milvus_sandbox().running(base) as server:
                    out["milvus_server"] = {"version": milvus_version(), "start_s": server["start_s"],
                                            "rss_mib_at_start": round(server["rss_kib"] / 1024)}
                    out["search"] = search_section(sizes, centers, args.repeat, server, only)
                    out["milvus_server"]["rss_mib_at_end"] = round(rss_kib(server["milvus_pid"]) / 1024)
                out["milvus_server"]["stopped"] = True  # running() raises if a process is left
            finally:
                shutil.rmtree(base, ignore_errors=True)
        else:
            out["search"] = search_section(sizes, centers, args.repeat, only=only)
    if "upgrade" in sections:
        out["upgrade"] = upgrade_section(args.upgrade_size, centers)
    if "ray" in sections:
        ray = ray_section(args.ray_photos, [int(w) for w in args.ray_workers.split(",")])
        one = next((r for r in ray["runs"] if r["run"] == "ray-1"), None)
        if one:
            ray["projection_10m"] = projection(one["steady_images_per_s"],
                                               ray["catalog_writer"]["vectors_per_s"])
        out["ray"] = ray
    write_json(args.json, out)


if __name__ == "__main__":
    main()
