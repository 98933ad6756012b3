"""docs/CLI.md, generated: every `graceful ... --help` (click's own text), group by group.

    python -m search.cli.reference           rewrite docs/CLI.md
    python -m search.cli.reference --check   exit 1 when docs/CLI.md is stale

tests/test_tooling.py regenerates it in memory and fails when the file differs."""
from __future__ import annotations

import sys
from pathlib import Path

import click

WIDTH = 100  # help text wrapped at a fixed width, whatever the terminal
DOC = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"
HEADER = """# Command-line reference

Generated from each command's `--help` by `python -m search.cli.reference` (do not edit by
hand; tests/test_tooling.py fails when this file is stale). What each command does, with real
output: README.md, CLI tour; the `--json` contracts: README.md, JSON contracts.
"""


def _commands(command: click.Command, ctx: click.Context):
    """(context, command) for `command` and every sub-command below it, in click's order."""
    yield ctx, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _commands(sub, _context(sub, name, ctx))


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    # a real chain of contexts: the usage line names the whole command, settings are inherited
    return command.make_context(name, [], parent=parent, resilient_parsing=True,
                                terminal_width=WIDTH, max_content_width=WIDTH)


def reference() -> str:
    """The whole reference as Markdown: one section per command, its `--help` verbatim."""
    from search.cli import cli

    parts = [HEADER]
    for ctx, command in _commands(cli, _context(cli, "graceful", None)):
        parts.append(f"\n## `{ctx.command_path}`\n\n```text\n{command.get_help(ctx)}\n```\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = reference()
    if "--check" in args:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python -m search.cli.reference", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
