"""The README's Python example, run as written."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(few_photos, tmp_path, monkeypatch, capsys):
    shutil.copytree(few_photos, tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("12 photos added;") and "'airplanes'" in out[0]
    assert [line.split()[0] for line in out[1:4]] == ["1", "2", "3"]
    # 12 photos: fewer album photos than the pre-flight needs (16) to measure a gain, so it may
    # only say that the spaces line up ("compatible"), never claim "better" or "no worse"
    verdict, expectation = out[4].split(" - ", 1)
    assert verdict == "compatible" and "only 12 checked photos are in albums" in expectation
    assert out[5] == "lite0"
    from search import Gallery

    with Gallery.open(tmp_path / "gallery", create=False) as g:
        assert g.active_model == "lite0" and g.core.catalog.images.count_images() == 12
