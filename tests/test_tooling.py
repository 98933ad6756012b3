"""The habits of a maintained project, in the fast tier: ruff and mypy clean on search/ and
models/ (pyproject.toml configures both), docs/CLI.md generated from the commands' own --help,
one meaning of `--json`, and default names that read well. No torch."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import click
import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
MYPY_CACHE = ROOT / "tests" / "artifacts" / "mypy_cache"  # git-ignored; warm runs take ~1 s


def _tool(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_ruff_finds_nothing_in_search_and_models():
    r = _tool("ruff", "check", "--no-cache", "search", "models", "app.py", "bench", "tests")
    assert r.returncode == 0, f"ruff check search models app.py bench tests:\n{r.stdout}{r.stderr}"


def test_mypy_finds_nothing_in_search_and_models():
    r = _tool("mypy", "--cache-dir", str(MYPY_CACHE))  # files and settings: pyproject.toml
    assert r.returncode == 0, f"mypy (search/, models/, app.py):\n{r.stdout}{r.stderr}"


def test_cli_reference_is_generated_from_help_and_current():
    from search.cli.reference import DOC, reference

    text = reference()
    for command in ("graceful index", "graceful compare", "graceful albums set",
                    "graceful bench hetero", "graceful upgrade"):
        assert f"## `{command}`\n" in text
    assert DOC.read_text() == text, ("docs/CLI.md is stale (a command's options or help changed): "
                                     "run `python -m search.cli.reference` and commit docs/CLI.md")


def _params(*path_and_args: str) -> dict:
    """The parameters `graceful PATH... ARGS...` would run with (parsed only, nothing runs)."""
    from search.cli import cli

    command: click.Command = cli
    args = list(path_and_args)
    while isinstance(command, click.Group):
        command = command.commands[args.pop(0)]
    return command.make_context(command.name or "", args).params


def test_json_is_a_flag_everywhere_and_out_writes_a_file(tmp_path):
    """`--json` alone prints JSON on stdout on every command that has it; where a report can
    also go to a file (compare, bench), `--out FILE` writes it and the older `--json FILE`
    still does."""
    from search.cli import cli
    from search.cli.jsonout import json_targets, write_json

    def commands(group: click.Group):
        for command in group.commands.values():
            yield command
            if isinstance(command, click.Group):
                yield from commands(command)

    takes_json = [c for c in commands(cli) if any("--json" in p.opts for p in c.params)]
    assert len(takes_json) >= 15
    for command in takes_json:
        option = next(p for p in command.params if "--json" in p.opts)
        assert isinstance(option, click.Option)
        # a flag, or (the older path form kept) an optional value whose bare form means stdout
        assert option.is_flag or option.flag_value == "-", command.name

    data = ("--train", str(tmp_path), "--test", str(tmp_path))
    for path in (["compare", "--log"], ["bench", "compat", *data], ["bench", "chain", *data],
                 ["bench", "hetero", *data]):
        assert json_targets(**_pick(_params(*path, "--json"))) == (True, [])
        assert json_targets(**_pick(_params(*path, "--json", str(tmp_path / "a.json")))) == \
            (False, [tmp_path / "a.json"])
        assert json_targets(**_pick(_params(*path, "--out", str(tmp_path / "b.json")))) == \
            (False, [tmp_path / "b.json"])
        assert json_targets(**_pick(_params(*path, "--json", "--out", str(tmp_path / "c.json")))) \
            == (True, [tmp_path / "c.json"])
    # a bare --json followed by another option is still the flag
    assert _params("compare", "--queries", "q", "--json", "-k", "3")["json_to"] == "-"
    assert _params("compare", "--queries", "q", "--json", "-k", "3")["k"] == 3
    write_json({"a": 1}, [tmp_path / "new" / "r.json"])
    assert (tmp_path / "new" / "r.json").read_text() == '{\n  "a": 1\n}'


def _pick(params: dict) -> dict:
    return {"json_to": params["json_to"], "out_file": params["out_file"]}


def test_fit_default_names_count_generations_instead_of_nesting():
    from search.units import fit_name

    assert fit_name("lite2", "lite0") == "lite2-fit-lite0"
    assert fit_name("lite2", "lite2-fit-lite0") == "lite2-fit-lite0-2"
    assert fit_name("lite2", "lite2-fit-lite0-2") == "lite2-fit-lite0-3"
    assert fit_name("lite0", "lite0-fit-lite0") == "lite0-fit-lite0-2"
    assert fit_name("lite2", "fit") == "lite2-fit-2"  # was lite2-fit-fit
    assert fit_name("lite2", "lite2-fit") == "lite2-fit-2"
    assert fit_name("lite2", "fused:lite0+b3@0.60") == "lite2-fit-lite0"
    assert fit_name("lite2", None) == "lite2-fit"
    assert fit_name("lite2", "outfit") == "lite2-fit-outfit"
    assert fit_name("lite2", "lite2-fit-lite0") == fit_name("lite2", "lite2-fit-lite0")


def test_optional_types_are_checked_strictly_in_every_module():
    """mypy checks Optional strictly everywhere: the modules once exempted were cleared, and no
    override may exempt one again."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert cfg["strict_optional"] is True
    lenient = [m for o in cfg.get("overrides", []) if o.get("strict_optional") is False
               for m in o["module"]]
    assert lenient == [], f"modules without strict_optional: {lenient}"
