"""The faces' command line: `graceful`, every engine operation scriptable through `Gallery`.
`--json` output is a stable contract (documented in README.md). One module per command group
(photos, upgrades, training); `search.render` turns reports into text for the CLI and the app."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from search.cli import photos, training, upgrades
from search.cli.base import Context, GracefulGroup
from search.settings import Settings, default_home

# Heavy modules (torch, timm, faiss) are imported by the commands that use them, so that
# `graceful --help`, `info` and `models` start quickly.


@click.group(cls=GracefulGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path),
              help="Gallery home (default: env GRACEFUL_HOME, else the checkout's data/gallery/, "
                   "else ~/.local/share/graceful/gallery).")
@click.option("--threads", type=int,
              help="Threads for torch and faiss (default: env GRACEFUL_THREADS, else all cores, "
                   "at most 8).")
@click.option("--catalog", metavar="URL",
              help="The catalog: a postgresql:// URL shared by several processes, or a SQLite "
                   "file (default: env GRACEFUL_CATALOG, else HOME/catalog.db).")
@click.option("--images", type=click.Path(path_type=Path),
              help="The photo store, a folder several processes may share (default: env "
                   "GRACEFUL_IMAGES, else HOME/images).")
@click.version_option(package_name="graceful")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, threads: int | None, catalog: str | None,
        images: Path | None) -> None:
    """Graceful: image search whose embedding model can be upgraded without re-indexing."""
    try:
        settings = Settings.from_env()  # every GRACEFUL_* variable, read once for this command
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if catalog or images:
        settings = replace(settings, catalog=catalog or settings.catalog,
                           images=images.expanduser() if images else settings.images)
    ctx.obj = Context(home or default_home(settings), threads or settings.threads, settings)


for module in (photos, upgrades, training):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="graceful")
