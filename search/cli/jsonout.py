"""One meaning of `--json`: print the report as JSON on stdout (instead of the text), as every
command does. `--out FILE` writes the JSON report to a file (the text still goes to stdout).

Commands whose `--json` used to take a path (`compare`, `bench compat|chain|hetero`) keep that
form working: `--json OUT` writes OUT exactly as `--out OUT` does."""
from __future__ import annotations

import json
from pathlib import Path

import click

STDOUT = "-"


def json_out_options(fn):
    """`--json [FILE]` and `--out FILE` on a command whose report may also go to a file."""
    fn = click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False),
                      metavar="FILE", help="Write the JSON report to FILE.")(fn)
    return click.option("--json", "json_to", is_flag=False, flag_value=STDOUT, default=None,
                        metavar="[FILE]",
                        help="Print the report as JSON on stdout instead of the text. "
                             "`--json FILE` (the older form) writes it to FILE, like --out.")(fn)


def json_targets(json_to: str | None, out_file: Path | None) -> tuple[bool, list[Path]]:
    """(print JSON on stdout?, the files to write it to)."""
    files = [Path(p) for p in (json_to, out_file) if p is not None and p != STDOUT]
    return json_to == STDOUT, list(dict.fromkeys(files))


def write_json(report, files: list[Path], indent: int = 2) -> None:
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=indent))
