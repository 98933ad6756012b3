"""The fast tier: catalog, index, file collection, compatibility signals and CLI parsing, with
synthetic vectors and no torch. Runs alone in seconds: `python3 -m pytest -q -m fast`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent


def unit(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synthetic_catalog(path: Path, n: int = 50, dim: int = 32):
    from search.storage.catalog import Catalog, Db

    cat = Catalog(Db(path))
    with cat.transaction():
        ids = [cat.images.add_image({"sha256": f"{i:064x}", "name": f"p{i}.jpg", "ext": ".jpg", "bytes": 1,
                                     "width": 1, "height": 1, "format": "JPEG",
                                     "source": f"/photos/{'cats' if i % 2 else 'dogs'}/p{i}.jpg",
                                     "added_at": float(i), "album": "cats" if i % 2 else "dogs"})
               for i in range(n)]
        cat.vectors.put_vectors(ids, unit(n, dim), "old", "old")
    cat.state.set_state("active_model", "old")
    return cat, ids


def python_without_torch(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter and fail if it imported torch or timm."""
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('HEAVY:' + ','.join(m for m in ('torch', 'timm') "
             "if m in sys.modules), file=sys.stderr))\n" + code)
    return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=60)


def test_vectors_are_stored_as_float16_and_old_catalogs_migrate(tmp_path):
    """v3 stores float16 (about half the bytes); a v2 catalog's float32 vectors are converted in
    place and read back within float16 precision, by every reader."""
    import sqlite3

    from search.storage.catalog import SCHEMA_VERSION, Catalog, Db

    cat, ids = synthetic_catalog(tmp_path / "new.db", n=50, dim=1280)
    blob_len = cat.conn.db.execute("SELECT length(vector) FROM vectors LIMIT 1").fetchone()[0]
    assert blob_len == 1280 * 2
    cat.close()

    old = tmp_path / "old.db"
    cat, ids = synthetic_catalog(old, n=2000, dim=1280)
    x = unit(2000, 1280)
    with cat.transaction():  # what a v2 gallery holds: float32 blobs
        cat.conn.db.conn.executemany("UPDATE vectors SET vector = ? WHERE image_id = ?",
                                     [(v.tobytes(), i) for i, v in zip(ids, x)])
        cat.conn.db.execute("PRAGMA user_version = 2")
    cat.close()
    before = old.stat().st_size
    cat = Catalog(Db(old))
    assert cat.schema_version == SCHEMA_VERSION
    assert {r[0] for r in cat.conn.db.execute("SELECT DISTINCT length(vector) FROM vectors")} == {2560}
    served = cat.vectors.serving_vectors_of(ids, "old")
    chunk = next(cat.vectors.serving_rows("old"))
    for got in (np.stack([served[i] for i in ids]), chunk.vectors,
                cat.vectors.vectors_by_model("old")[1]):
        assert got.dtype == np.float32 and np.abs(got - x).max() < 1e-3
        cos = (got.astype(np.float64) * x).sum(1) / np.linalg.norm(got.astype(np.float64), axis=1)
        assert float(cos.min()) > 0.999999
    cat.close()
    with sqlite3.connect(old) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.execute("PRAGMA page_size").fetchone()[0] == 65536
    assert old.stat().st_size < 0.7 * before  # the migration gave the space back

    from search.storage.catalog import decode_vectors
    with pytest.raises(sqlite3.DatabaseError, match="damaged"):
        decode_vectors([b"\x00" * 3], 1280)


def test_catalog_albums_members_and_serving_vectors(tmp_path):
    cat, ids = synthetic_catalog(tmp_path / "c.db")
    assert cat.images.albums() == [{"album": "cats", "images": 25}, {"album": "dogs", "images": 25}]
    assert cat.images.set_album(ids[:3], "best") == 3 and cat.images.rename_album("best", "top") == 3
    assert cat.images.count_images("top") == 3 and cat.images.album_labels(ids[:1]) == {ids[0]: "top"}
    newer = unit(5, seed=1)
    with cat.transaction():
        cat.vectors.put_vectors(ids[:5], newer, "new", "old")
    served = cat.vectors.serving_vectors_of(ids[:6], "old")
    assert np.allclose(served[ids[0]], newer[0], atol=1e-3) and not np.allclose(served[ids[5]], newer[0], atol=1e-3)
    assert len(cat.vectors.space_members("old")) == 50
    assert len(cat.vectors.space_members("old", exclude_model="new")) == 45
    assert [p.album for p in cat.vectors.space_photos("old")][:3] == ["top"] * 3


def test_index_checksum_and_catch_up(tmp_path):
    from search.storage.faiss_index import SpaceIndex

    cat, ids = synthetic_catalog(tmp_path / "c.db")
    idx = SpaceIndex.build(cat, "old")
    idx.save(tmp_path / "index")
    assert SpaceIndex.verify(tmp_path / "index", "old") is None
    faiss_file = next((tmp_path / "index").glob("*.faiss"))
    data = bytearray(faiss_file.read_bytes())
    data[-100] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    assert SpaceIndex.verify(tmp_path / "index", "old") == "damaged (checksum mismatch)"
    assert SpaceIndex.load(tmp_path / "index", "old") is None
    index, how = SpaceIndex.open(cat, tmp_path / "index", "old")
    assert how.startswith("rebuilt (damaged") and index.ntotal == 50
    with cat.transaction():
        cat.vectors.put_vectors(ids[:2], unit(2, seed=3), "new", "old")
    assert index.catch_up(cat) == 2 and index.ntotal == 50


def test_collect_files_walks_and_refuses(tmp_path):
    from search.errors import GalleryError
    from search.storage.files import collect_files

    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    (tmp_path / "a" / "x.jpg").write_bytes(b"1")
    (tmp_path / "a" / ".hidden" / "y.jpg").write_bytes(b"2")
    (tmp_path / "a" / "b").mkdir()
    (tmp_path / "a" / "b" / "z.jpg").write_bytes(b"3")
    os.mkfifo(tmp_path / "a" / "pipe.jpg")
    assert [p.name for p in collect_files([tmp_path / "a"])] == ["z.jpg", "x.jpg"]
    for bad, message in ((tmp_path / "nope", "no such file"), ("/proc", "system folder"),
                         (tmp_path / "a" / "pipe.jpg", "not a regular file")):
        with pytest.raises(GalleryError, match=message):
            collect_files([bad])


def test_compat_signals_separate_compatible_from_unrelated():
    from models import metrics

    from search.ops.preflight import judge

    ref = unit(400, 64)
    own = np.arange(40)
    labels = [f"a{i % 8}" for i in range(400)]
    near = ref[:40] + 0.05 * unit(40, 64, seed=5)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    good = metrics.compat_signals(near, ref[:40], ref, own, labels[:40], labels)
    bad = metrics.compat_signals(unit(40, 64, seed=9), ref[:40], ref, own, labels[:40], labels)
    assert good["own_rank"] < 0.01 and good["agreement"] > 0.5
    assert bad["own_rank"] > 0.3 and abs(bad["agreement"]) < 0.1
    assert judge(good)[0] and judge(bad)[:2] == (False, "incompatible")
    assert good["albums"]["queries"] == 40


def test_cli_help_and_usage_errors_import_no_torch(tmp_path):
    r = python_without_torch("from search.cli import main; main()", "--help")
    assert r.returncode == 0 and "upgrade" in r.stdout and "HEAVY:\n" in r.stderr + "\n"
    r = python_without_torch("from search.cli import main; main()", "search", "x.jpg", "-k", "0")
    assert r.returncode == 2 and "x>=1" in r.stderr and "HEAVY:\n" in r.stderr + "\n"
    r = python_without_torch("import search; search.Gallery")
    assert r.returncode == 0 and r.stderr.strip() == "HEAVY:"


def test_info_models_and_albums_import_no_torch(tmp_path):
    from search.storage.catalog import Catalog, Db

    home = tmp_path / "g"
    home.mkdir()
    synthetic_catalog(home / "catalog.db")[0].close()
    cat = Catalog(Db(home / "catalog.db"))
    cat.models.register_model({"name": "old", "space": "old", "dim": 32, "kind": "efficientnet"}, "test")
    cat.close()
    out = {}
    for args in (["info", "--json"], ["models", "--json"], ["albums", "--json"]):
        r = python_without_torch("from search.cli import main; main()", "--home", str(home), *args)
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip().endswith("HEAVY:"), (args, r.stderr)
        out[args[0]] = r.stdout
    info = json.loads(out["info"])
    assert info["images"] == 50 and info["albums"] == 2 and info["index"]["vectors"] == 50


def test_every_module_with_fast_tests_is_collected_by_the_fast_tier():
    """`pytest -m fast` collects only conftest.FAST_MODULES (so it never imports torch): a module
    with fast tests that is not listed would silently drop out of that tier."""
    from conftest import FAST_MODULES

    marked = {p.name for p in (ROOT / "tests").glob("test_*.py")
              if "mark.fast" in p.read_text()}
    assert marked == FAST_MODULES


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, at the top or inside a function (relative imports resolved)."""
    import ast

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names]  # `from search.ops import fit`
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# search/'s layers, lowest first: a module imports only its own layer and those below it.
LAYERS = {"search.errors": 0, "search.settings": 0, "search.units": 0, "search.runtime": 0,
          "search.render": 0, "search.thumbnails": 0,
          "search.storage": 1, "search.core": 2, "search.ops": 3, "search.api": 4,
          "search.jobs": 4, "search.cli": 5, "search.ui": 5, "search.__main__": 5, "search": 4}


def _layer(module: str) -> int | None:
    while module:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    return None


def test_layers_models_never_imports_search_and_sql_stays_in_the_catalog():
    import ast

    for path in (ROOT / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n == "search" or n.startswith("search.") for n in names), path
    for path in [*(ROOT / "search").rglob("*.py"), ROOT / "app.py"]:
        if "catalog" in path.relative_to(ROOT).parts[:-1] or path.name == "catalog.py":
            continue
        text = path.read_text()
        assert ".execute(" not in text and "get_state(" not in text and "set_state(" not in text, path


def test_layers_search_imports_one_way_without_a_circle():
    """storage <- core <- ops <- api <- faces: each layer imports only those below it (and
    itself), nothing imports a face, and no import circle exists inside search/."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "search").rglob("*.py"):
        me = _module(path)
        mine = _layer(me)
        assert mine is not None, f"{me}: not in a layer (add it to LAYERS)"
        for target in _imports(path):
            if target.split(".")[0] == "bench":
                raise AssertionError(f"{me} imports {target}: the product never imports bench/")
            if not target.startswith("search"):
                continue
            theirs = _layer(target)
            if target == "search":
                continue
            assert theirs is not None and theirs <= mine, f"{me} (layer {mine}) imports {target} (layer {theirs})"
            if target != me and (ROOT / Path(*target.split("."))).with_suffix(".py").exists():
                graph.setdefault(me, set()).add(target)
            elif target != me and (ROOT / Path(*target.split(".")) / "__init__.py").exists():
                graph.setdefault(me, set()).add(target)
    # the only way back up is through a package's __init__ re-exporting its own modules
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + "."):  # a package importing its own modules
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [])


def test_faces_use_the_gallery_api_only():
    """The CLI and the app reach the engine through `Gallery` (search.api, search.jobs) and the
    shared renderer: no catalog access, no operation, storage or core module, no bench/."""
    faces = [*(ROOT / "search" / "cli").rglob("*.py"), *APP]
    for path in faces:
        assert ".catalog." not in path.read_text(), f"{path}: reaches into the catalog"
        for target in _imports(path):
            assert not target.startswith(("search.ops", "search.storage", "search.core", "bench")), \
                f"{path.relative_to(ROOT)} imports {target}"


APP = [ROOT / "app.py", *(ROOT / "search" / "ui").rglob("*.py")]  # the app's face
FACES = [*(ROOT / "search" / "cli").rglob("*.py"), *APP]
APP_MAY_IMPORT = ("search.api", "search.jobs", "search.errors", "search.units", "search.render",
                  "search.thumbnails", "search.runtime", "search.ui")


def _is_gallery(node) -> bool:
    """`g`, `gallery`, `gallery()` or `obj.gallery()`: a Gallery in a face's code."""
    import ast

    if isinstance(node, ast.Name):
        return node.id in ("g", "gallery")
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == "gallery")
        or (isinstance(node.func, ast.Attribute) and node.func.attr == "gallery"))


def _gallery_attributes(path: Path) -> set[str]:
    """What `path` reads off a gallery: `X` for `g.X`, `X.Y` for a handle's `g.X.Y`."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            if _is_gallery(node.value):
                found.add(node.attr)
            elif isinstance(node.value, ast.Attribute) and _is_gallery(node.value.value):
                found.add(f"{node.value.attr}.{node.attr}")
    return found


def _public(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_gallery_surface_is_small_and_typed():
    """`Gallery` is composed, not a GalleryCore: at most 25 public names besides its handles
    (the nouns: g.photos, g.albums, ...), one of them the `core` escape hatch."""
    from search.api import HANDLES, Gallery
    from search.core import GalleryCore

    assert not issubclass(Gallery, GalleryCore)
    surface = _public(Gallery)
    assert len(surface) <= 25, sorted(surface)
    assert "core" in surface and not surface & set(HANDLES)
    assert not _public(Gallery) & {"catalog", "lock", "store", "vector_store", "index",
                                   "reports_dir", "notices"}


def test_typed_reports_are_the_json_contracts_of_the_readme():
    """Each typed report's fields are its command's `--json` keys: every field is named in
    that command's contract in README.md (the bullet that starts so), and `as_dict` gives
    exactly the keys, `from_dict` taking them back."""
    import re

    from search.api import (
        BackfillStatus,
        BridgeReport,
        ComparisonReport,
        FitReport,
        InfoReport,
        MigrationReport,
    )

    readme = (ROOT / "README.md").read_text()
    contracts = readme[readme.index("### JSON contracts"):readme.index("## Python API")]
    bullets = re.split(r"\n- ", contracts)
    for cls, start in ((InfoReport, "`info --json`"), (ComparisonReport, "`compare --json`"),
                       (BackfillStatus, "`backfill --status --json`"),
                       (FitReport, "`train --from-gallery --json`:"),
                       (BridgeReport, "`train --from-gallery --json` of a **bridge**"),
                       (MigrationReport, "`migrate-catalog --json`")):
        text = " ".join(b for b in bullets if b.startswith(start))
        missing = [k for k in cls.keys() if f"`{k}`" not in text]
        assert text and not missing, (start, missing)
        report = cls.from_dict({k: 1 for k in cls.keys()})
        assert list(report.as_dict()) == list(cls.keys())
        assert cls.from_dict(report.as_dict()) == report


def test_faces_use_gallery_public_names_and_handles_only():
    """The CLI and the app use only `Gallery`'s public names (never `core`) and its handles'
    public names; no face imports `models.*`."""
    from search.api import HANDLES, Gallery

    allowed = (_public(Gallery) - {"core"}) | set(HANDLES) | {
        f"{h}.{n}" for h, cls in HANDLES.items() for n in _public(cls)}
    for path in FACES:
        where = path.relative_to(ROOT)
        reached = {a for a in _gallery_attributes(path)
                   if "." not in a or a.split(".")[0] in HANDLES} - allowed
        assert not reached, f"{where} uses {sorted(reached)} of the gallery: add it to the API"
        for target in _imports(path):
            assert target.split(".")[0] != "models", f"{where} imports {target}"


def test_the_app_is_a_face_of_the_api():
    """app.py and search/ui/: they import only the API (search.api, search.jobs), the base modules
    and search.ui itself; and nothing else in search/ imports search.ui."""
    for path in APP:
        where = path.relative_to(ROOT)
        for target in _imports(path):
            if target.startswith("search") and target != "search":
                assert target.startswith(APP_MAY_IMPORT), f"{where} imports {target}"
    for path in (ROOT / "search").rglob("*.py"):
        if "ui" not in path.relative_to(ROOT / "search").parts:
            assert not any(t.startswith("search.ui") for t in _imports(path)), path


def test_no_product_file_over_400_lines():
    """search/ (the app's pages included), models/ and app.py."""
    files = [*(ROOT / "search").rglob("*.py"), *(ROOT / "models").rglob("*.py"), ROOT / "app.py"]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
