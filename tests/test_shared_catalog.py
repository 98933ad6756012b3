"""Several processes, one gallery (issue 27): two app processes and a job runner, each with a
home (index files, caches) of its own, sharing a PostgreSQL catalog on a real server and one
image store folder: real processes on a real server, with the numpy fake models (the catalog is
the subject here; GRACEFUL_MODELS=fakes:FakeModels, as a user names their own embedders); slow
tier."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import make_photos

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = "fake-a2"  # a compatible upgrade of fake-a
pytestmark = pytest.mark.slow


class App:
    """An app process (tests/app_process.py) holding one open Gallery."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "app_process.py")],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}, self.proc.stderr.read()

    def __call__(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        out = json.loads(line)
        assert "error" not in out, out
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(60)


def test_two_apps_and_a_job_runner_share_one_gallery(tmp_path, pg_server):
    url = pg_server.new_database()
    photos = make_photos(tmp_path / "photos", ("red", "blue"), per_album=4)
    shared = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "tests"))),
              "GRACEFUL_MODELS": "fakes:FakeModels", "GRACEFUL_CATALOG": url,
              "GRACEFUL_IMAGES": str(tmp_path / "images"), "GRACEFUL_THREADS": "1"}
    shared.pop("GRACEFUL_STORE", None)

    def env(name: str) -> dict:
        return {**shared, "GRACEFUL_HOME": str(tmp_path / name)}

    a, b = App(env("a")), App(env("b"))
    try:
        plane = sorted((photos / "red").iterdir())[0]
        flower = sorted((photos / "blue").iterdir())[0]
        assert a(op="add", path=str(photos / "red"))["added"] == 4
        hit = b(op="search", path=str(plane))["hits"][0]  # B never indexed anything
        assert hit["name"] == plane.name and Path(hit["path"]).is_file()
        assert str(tmp_path / "images") in hit["path"]  # one shared store
        assert b(op="add", path=str(photos / "blue"))["added"] == 4
        assert a(op="search", path=str(flower))["hits"][0]["name"] == flower.name
        assert a(op="add", path=str(photos / "blue"))["duplicates"] == 4

        assert a(op="upgrade", name=SHIPPED)["changed"]
        assert b(op="search", path=str(plane))["model"] == SHIPPED  # B's next search, no restart
        assert b(op="rollback")["active"] == "fake-a"
        assert a(op="search", path=str(plane))["model"] == "fake-a"
        assert a(op="upgrade", name=SHIPPED)["changed"]

        # the job runner backfills (its own home) while both apps serve
        job = subprocess.Popen([sys.executable, "-m", "search.cli", "backfill", "--batch-size",
                                "2", "--json"], env={**env("jobs"), "GRACEFUL_FAKE_DELAY": "0.25"},
                               cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        served_during = 0
        while job.poll() is None:
            for app in (a, b):
                assert app(op="search", path=str(flower))["hits"][0]["name"] == flower.name
            served_during += 1
        out, err = job.communicate()
        assert job.returncode == 0, err
        assert json.loads(out)["done"] == 8 and served_during >= 1
        for app in (a, b):
            hits = app(op="search", path=str(flower), k=8)["hits"]
            assert {h["embedded_by"] for h in hits} == {SHIPPED}  # the backfill, seen by both
        assert not (tmp_path / "a" / "images").exists()  # no per-home photo copies
    finally:
        a.close()
        b.close()
