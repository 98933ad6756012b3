"""What every command shares: the context (home, threads, opened galleries), the group that
turns every expected fault into one line, JSON output and the Ray flags."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from search.errors import GalleryError

if TYPE_CHECKING:
    from search.api import Gallery


class Context:
    def __init__(self, home: Path, threads: int | None, settings=None):
        self.home = home
        self.threads = threads
        self.settings = settings
        self.opened: list = []

    def gallery(self, create: bool = False) -> "Gallery":
        from search.api import Gallery

        self.configure()
        g = Gallery.open(self.home, create=create,  # read commands: a missing gallery is an error
                         settings=self.settings)
        self.opened.append(g)
        return g

    def configure(self) -> None:
        from search.runtime import configure_threads

        configure_threads(self.threads)

    def notices(self) -> list[str]:
        return [n for g in self.opened for n in g.take_notices()]


class GracefulGroup(click.Group):
    """Faults from below (a GalleryError, full disk, permissions, a busy or damaged catalog)
    end as one line with the next step, never as a traceback; repairs made on the way are
    shown."""

    def invoke(self, ctx: click.Context):
        from search.errors import HANDLED, friendly

        try:
            return super().invoke(ctx)
        except GalleryError as e:
            raise click.ClickException(str(e)) from None
        except HANDLED as e:
            raise click.ClickException(friendly(e)) from None
        finally:
            obj = ctx.obj
            for notice in getattr(obj, "notices", lambda: [])():
                click.echo(f"note: {notice}", err=True)
            # a PostgreSQL catalog's connection goes back to its pool now, not at garbage
            # collection (the CLI also runs in-process: tests, scripts)
            for g in getattr(obj, "opened", []):
                try:
                    g.close()
                except Exception:
                    pass
            if obj is not None and hasattr(obj, "opened"):
                obj.opened.clear()


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def fail(e: Exception) -> None:
    raise click.ClickException(str(e))


def interrupted(what: str = "run the same command again to resume") -> None:
    import sys

    click.echo(f"interrupted: {what}", err=True)
    sys.exit(130)


def ray_flags(command):
    """`--ray [ADDRESS]` and `--ray-workers N`, the same on every embedding command."""
    command = click.option("--ray-workers", type=click.IntRange(min=1),
                           help="Ray workers (default: one per CPU).")(command)
    return click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None,
                        metavar="[ADDRESS]", help="Decode and embed on Ray workers: auto (a local "
                        "Ray runtime for this job), HOST:PORT or ray://HOST:PORT of a cluster. "
                        "Needs graceful[ray].")(command)


def ray_options(address: str | None, workers: int | None):
    """`--ray [ADDRESS] --ray-workers N` as RayOptions, or None without --ray."""
    if address is None:
        if workers is not None:
            raise GalleryError("--ray-workers goes with --ray")
        return None
    from search.api import RayOptions

    return RayOptions(address, workers).validate()


def bars(as_json: bool) -> bool:
    """Progress bars on stderr: always for people, with --json only on a terminal."""
    import sys

    return not as_json or sys.stderr.isatty()
