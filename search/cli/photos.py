"""Commands on the photos: index, search, info, models, reindex, check, log, albums,
migrate-catalog."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from search import render
from search.cli.base import (
    Context,
    bars,
    echo_lines,
    emit_json,
    fail,
    interrupted,
    ray_flags,
    ray_options,
)


@click.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", help="Model of a new gallery (default lite0). An existing "
              "gallery keeps its active model.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--workers", default=1, show_default=True, help="Decoding threads.")
@click.option("--album", help="Put these photos into this album (default: the folder each photo "
              "comes from). Photos already in the gallery move into it too.")
@click.option("--no-album", is_flag=True, help="Leave new photos without an album.")
@click.option("--store", type=click.Choice(["faiss", "milvus"]), help="Where a new gallery serves "
              "its vectors from: faiss index files (default) or Milvus. Kept for the gallery.")
@click.option("--milvus-uri", help="Milvus for --store milvus: a Milvus Lite file (default "
              "GALLERY/milvus.db) or http://HOST:19530 (token in GRACEFUL_MILVUS_TOKEN).")
@ray_flags
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def index_cmd(obj: Context, paths, model_name, batch_size, workers, album, no_album, store,
              milvus_uri, ray_address, ray_workers, as_json) -> None:
    """Add photos (files or folders, recursively) to the gallery."""
    from search.api import Gallery, check_paths, verify_model

    try:
        ray = ray_options(ray_address, ray_workers)
        check_paths(paths)  # a missing path is refused before anything is written
        if not Gallery.exists(obj.home, obj.settings):
            verify_model(model_name)  # a bad model leaves no gallery behind
        gallery = obj.gallery(create=True)
        gallery.vectors.choose_store(store, milvus_uri)
        report = gallery.add(paths, model=model_name, batch_size=batch_size, workers=workers,
                             progress=bars(as_json), album=album, album_from_folder=not no_album,
                             ray=ray)
    except (ValueError, RuntimeError) as e:
        fail(e)
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(
            f"added {report.added}, already indexed {report.duplicates}, skipped "
            f"{len(report.skipped)} of {report.seen} files in {report.seconds:.1f} s "
            f"({report.images_per_second:.1f} img/s) with {report.model}"
        )
    if report.interrupted:
        interrupted()


@click.command("search")
@click.argument("image", required=False)
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1),
              help="How many results (at least 1).")
@click.option("--id", "image_ref", help="Search with a gallery image (id or sha256 prefix).")
@click.option("--text", help="Search by text (models with a text tower).")
@click.option("--model", "model_name", help="Query with this model instead of the active one.")
@click.option("--no-log", is_flag=True, help="Do not record this search in the query log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def search_cmd(obj: Context, image, k, image_ref, text, model_name, no_log, as_json) -> None:
    """Find the gallery photos most similar to IMAGE (or --id, or --text)."""
    if sum(x is not None for x in (image, image_ref, text)) != 1:
        raise click.UsageError("give exactly one of IMAGE, --id or --text")
    result = obj.gallery().search(image, k, text=text, image=image_ref, model=model_name,
                                  log=not no_log)
    if as_json:
        emit_json({"query": image or image_ref or text, **result.as_dict()})
        return
    click.echo(f"{len(result.hits)} results with {result.model} in {result.elapsed_ms:.0f} ms")
    for h in result.hits:
        click.echo(f"{h.rank:>3}  {h.score:.4f}  #{h.image_id:<6} {h.name:<32} {h.path}")


@click.command("info")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def info_cmd(obj: Context, as_json) -> None:
    """What the gallery holds: images, models, spaces, index."""
    info = obj.gallery().info().as_dict()
    emit_json(info) if as_json else echo_lines(render.info_lines(info))


@click.command("models")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_cmd(obj: Context, as_json) -> None:
    """Models this installation can use (and the gallery's own trained ones)."""
    from search.api import available_models

    entries, unreadable = available_models(obj.home)
    rows = [{"name": e.name, "kind": e.kind, "space": e.space, "dim": e.dim,
             "compatible_with": list(e.compatible_with), "source": e.source,
             "method": e.meta.method if e.meta else None} for e in entries]
    bad = [{"name": path.stem, "kind": "unreadable", "source": str(path), "error": reason}
           for path, reason in unreadable]
    if as_json:
        emit_json(rows + bad)
        return
    for r in rows:
        compat = f" compatible with {', '.join(r['compatible_with'])}" if r["compatible_with"] else ""
        click.echo(f"{r['name']:<28} {r['kind']:<13} space {r['space']:<12} {r['dim']}-d{compat}")
    for r in bad:
        click.echo(f"{r['name']:<28} {'unreadable':<13} {r['source']}: {r['error']}")
    click.echo("openclip:ARCH:TAG_OR_FILE     open_clip     (any open_clip architecture; offline from a local file)")


@click.command("reindex")
@click.option("--kind", type=click.Choice(["flat", "ivf", "sq8", "pq", "auto"]),
              help="flat: exact (default); ivf: approximate, for large galleries; sq8 / pq: "
                   "compressed (1 byte per dimension / per 8 dimensions) with exact re-ranking, "
                   "for very large ones; auto: ivf from 50k vectors, pq from 250k. Kept for this "
                   "gallery.")
@click.option("--store", type=click.Choice(["faiss", "milvus"]),
              help="Move the gallery's search vectors to this store (filled from the catalog).")
@click.option("--milvus-uri", help="With --store milvus: a Milvus Lite file or http://HOST:19530.")
@click.pass_obj
def reindex_cmd(obj: Context, kind, store, milvus_uri) -> None:
    """Rebuild the search index of the active space from the catalog."""
    r = obj.gallery().reindex(kind, store=store, milvus_uri=milvus_uri)
    click.echo(f"rebuilt the {r.space} index ({r.kind}, setting {r.setting}) with {r.vectors} "
               f"vectors in {r.seconds:.1f} s ({r.store} store)")


@click.command("check")
@click.option("--repair", is_flag=True, help="Rebuild what the catalog can rebuild (index files) "
              "and re-import missing photos whose original file still holds the same bytes.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def check_cmd(obj: Context, repair, as_json) -> None:
    """Is the gallery whole? Catalog integrity, stored photos, index files, models."""
    report = obj.gallery().check(repair=repair, progress=bars(as_json))
    if as_json:
        emit_json(report.as_dict())
    else:
        for f in report.findings:
            mark = {"ok": "ok      ", "problem": "PROBLEM ", "repaired": "repaired"}[f.status]
            click.echo(f"{mark} {f.check:<8} {f.detail}")
            if f.next_step and f.status == "problem":
                click.echo(f"{'':17}next: {f.next_step}")
    if not report.ok:
        sys.exit(1)


@click.command("migrate-catalog")
@click.argument("to", metavar="URL_OR_FILE")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def migrate_catalog_cmd(obj: Context, to, as_json) -> None:
    """Copy the gallery's catalog into another one, SQLite or PostgreSQL, either way: a
    postgresql:// URL (an empty database) or a SQLite file. Resumable (run it again after an
    interruption) and verified (row counts and SHA-256 of every table); writers wait during the
    last step. Then point --catalog / GRACEFUL_CATALOG at it."""
    report = obj.gallery().migrate_catalog(to, progress=bars(as_json))
    if as_json:
        emit_json(report.as_dict())
        return
    copied = report.copied
    click.echo(f"copied {copied['images']} photos and {copied['vectors']} vectors to "
               f"{report.to}; verified {len(report.tables)} tables (counts and SHA-256)")
    click.echo(f"use it: {report.use}")


@click.command("log")
@click.argument("switch", type=click.Choice(["on", "off", "status"]), default="status")
@click.pass_obj
def log_cmd(obj: Context, switch) -> None:
    """Turn the query log (used by `compare --log`) on or off for this gallery."""
    state = obj.gallery().query_log(None if switch == "status" else switch == "on")
    click.echo(f"query log {'on' if state.on else 'off'}, {state.recorded} searches recorded")


@click.group("albums", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def albums_group(ctx: click.Context, as_json) -> None:
    """The gallery's albums (the labels that fitted upgrades and comparisons learn from).

    A photo's album is the folder it was indexed from unless set here or with index --album."""
    if ctx.invoked_subcommand is not None:
        return
    rows = ctx.obj.gallery().albums.list()
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['images']:>7}  {r['album'] if r['album'] is not None else '(no album)'}")


@albums_group.command("set")
@click.argument("album")
@click.argument("images", nargs=-1, required=True)
@click.pass_obj
def albums_set_cmd(obj: Context, album, images) -> None:
    """Put IMAGES (ids or sha256 prefixes) into ALBUM."""
    n = obj.gallery().albums.set(images, album)
    click.echo(f"{n} photo{'s' if n != 1 else ''} now in album {album}")


@albums_group.command("clear")
@click.argument("images", nargs=-1, required=True)
@click.pass_obj
def albums_clear_cmd(obj: Context, images) -> None:
    """Take IMAGES (ids or sha256 prefixes) out of their album."""
    n = obj.gallery().albums.set(images, None)
    click.echo(f"{n} photo{'s' if n != 1 else ''} now without an album")


@albums_group.command("rename")
@click.argument("old")
@click.argument("new")
@click.pass_obj
def albums_rename_cmd(obj: Context, old, new) -> None:
    """Rename album OLD to NEW (merging it into NEW if that exists)."""
    n = obj.gallery().albums.rename(old, new)
    click.echo(f"renamed {old} -> {new} ({n} photos)")


COMMANDS = [index_cmd, search_cmd, info_cmd, models_cmd, reindex_cmd, check_cmd, log_cmd,
            albums_group, migrate_catalog_cmd]
