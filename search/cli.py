"""`graceful`: every engine operation, scriptable. `--json` output is a stable contract
(documented in README.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import GalleryError
from .home import default_home

if TYPE_CHECKING:
    from .gallery import Gallery

# Heavy modules (torch, timm, faiss) are imported by the commands that use them, so that
# `graceful --help`, `info` and `models` start quickly.


class Context:
    def __init__(self, home: Path, threads: int | None):
        self.home = home
        self.threads = threads
        self.opened: list = []

    def gallery(self, create: bool = False) -> "Gallery":
        from .gallery import Gallery
        from .runtime import configure_threads

        configure_threads(self.threads)
        g = Gallery.open(self.home, create=create)  # read commands: a missing gallery is an error
        self.opened.append(g)
        return g

    def notices(self) -> list[str]:
        return [n for g in self.opened for n in g.notices]


class GracefulGroup(click.Group):
    """Faults from below (full disk, permissions, a busy or damaged catalog) end as one line
    with the next step, never as a traceback; repairs made on the way are shown."""

    def invoke(self, ctx: click.Context):
        from .errors import HANDLED, friendly

        try:
            return super().invoke(ctx)
        except HANDLED as e:
            raise click.ClickException(friendly(e)) from None
        finally:
            obj = ctx.obj
            for notice in getattr(obj, "notices", lambda: [])():
                click.echo(f"note: {notice}", err=True)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def fail(e: Exception) -> None:
    raise click.ClickException(str(e))


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
    from .raypool import RayOptions

    return RayOptions(address, workers).validate()


@click.group(cls=GracefulGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), envvar="GRACEFUL_HOME",
              help=f"Gallery home (default {default_home()}; env GRACEFUL_HOME).")
@click.option("--threads", type=int, envvar="GRACEFUL_THREADS",
              help="Threads for torch and faiss (default: all cores, at most 8).")
@click.version_option(package_name="graceful")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, threads: int | None) -> None:
    """Graceful: image search whose embedding model can be upgraded without re-indexing."""
    ctx.obj = Context(home or default_home(), threads)


@cli.command("index")
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
    from .ingest import collect_files, ingest

    try:
        from .gallery import Gallery

        ray = ray_options(ray_address, ray_workers)
        collect_files(paths)  # a missing path is refused before anything is written
        if not Gallery.exists(obj.home):
            from models import registry

            # load (not just name) the model before the gallery is created: a bad one leaves
            # nothing behind
            registry.load(model_name or registry.DEFAULT_MODEL)
        gallery = obj.gallery(create=True)
        gallery.choose_store(store, milvus_uri)
        report = ingest(gallery, paths, model_name, batch_size=batch_size, workers=workers,
                        progress=not as_json or sys.stderr.isatty(), album=album,
                        album_from_folder=not no_album, ray=ray)
    except (GalleryError, ValueError, RuntimeError) as e:
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
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)


@cli.command("search")
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
    from . import query

    if sum(x is not None for x in (image, image_ref, text)) != 1:
        raise click.UsageError("give exactly one of IMAGE, --id or --text")
    try:
        gallery = obj.gallery()
        if image:
            result = query.search_file(gallery, image, k, not no_log, model_name)
        elif image_ref:
            result = query.search_gallery_image(gallery, image_ref, k, not no_log, model_name)
        else:
            result = query.search_text(gallery, text, k, not no_log)
    except GalleryError as e:
        fail(e)
    if as_json:
        emit_json({"query": image or image_ref or text, **result.as_dict()})
        return
    click.echo(f"{len(result.hits)} results with {result.model} in {result.elapsed_ms:.0f} ms")
    for h in result.hits:
        click.echo(f"{h.rank:>3}  {h.score:.4f}  #{h.image_id:<6} {h.name:<32} {h.path}")


@cli.command("info")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def info_cmd(obj: Context, as_json) -> None:
    """What the gallery holds: images, models, spaces, index."""
    try:
        info = obj.gallery().info()
    except GalleryError as e:
        fail(e)
    if as_json:
        emit_json(info)
        return
    click.echo(f"gallery      {info['home']} (schema v{info['schema_version']})")
    click.echo(f"images       {info['images']} in {info['albums']} albums")
    click.echo(f"active model {info['active_model']}  (space {info['space']})")
    click.echo(f"index        {info['index']['vectors']} vectors, {info['index']['dim']}-d")
    where = info["vector_store"]
    click.echo(f"store        {where['kind']} ({where.get('uri') or where.get('path')})")
    for row in info["vectors"]:
        via = "/".join(info["runtimes"].get(row["model"], []))
        click.echo(f"vectors      {row['vectors']:>7} by {row['model']} in space {row['space']}"
                   + (f" (computed with {via})" if via else "")
                   + (f", {row['transformed']} of them transformed from stored vectors"
                      if row.get("transformed") else ""))
    matrix = info["compatibility"]
    if matrix["models"]:
        click.echo("compatibility (query model x gallery space; new/old top-1 where measured):")
        width = max(len(m) for m in matrix["models"]) + 2
        click.echo(" " * width + "".join(f"{s:>14}" for s in matrix["spaces"]))
        for name in matrix["models"]:
            cells = []
            for space in matrix["spaces"]:
                c = matrix["cells"][name][space]
                text = "-" if not c["compatible"] else ("native" if c.get("native") else "yes")
                if c.get("measured") and c["measured"].get("new/old"):
                    text = f"yes {c['measured']['new/old']['top1']:.3f}"
                cells.append(f"{text:>14}")
            click.echo(f"{name:<{width}}" + "".join(cells))


@cli.command("models")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_cmd(obj: Context, as_json) -> None:
    """Models this installation can use (and the gallery's own trained ones)."""
    from models import registry

    dirs = [obj.home / "models"]
    entries = registry.available(dirs)
    rows = [{"name": e.name, "kind": e.kind, "space": e.space, "dim": e.dim,
             "compatible_with": list(e.compatible_with), "source": e.source,
             "method": e.meta.method if e.meta else None} for e in entries]
    bad = [{"name": path.stem, "kind": "unreadable", "source": str(path), "error": reason}
           for path, reason in registry.unreadable(dirs)]
    if as_json:
        emit_json(rows + bad)
        return
    for r in rows:
        compat = f" compatible with {', '.join(r['compatible_with'])}" if r["compatible_with"] else ""
        click.echo(f"{r['name']:<28} {r['kind']:<13} space {r['space']:<12} {r['dim']}-d{compat}")
    for r in bad:
        click.echo(f"{r['name']:<28} {'unreadable':<13} {r['source']}: {r['error']}")
    click.echo("openclip:ARCH:TAG_OR_FILE     open_clip     (any open_clip architecture; offline from a local file)")


@cli.command("reindex")
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
    import time as _time

    try:
        gallery = obj.gallery()
        if gallery.space is None:
            raise GalleryError("the gallery is empty: nothing to index")
        t0 = _time.perf_counter()
        if store or milvus_uri:
            gallery.choose_store(store, milvus_uri, move=True)  # fills the new store
        built = (gallery.rebuild_index(kind=kind) if kind or not (store or milvus_uri)
                 else gallery.index().kind)
    except GalleryError as e:
        fail(e)
    click.echo(f"rebuilt the {gallery.space} index ({built}, setting {gallery.index_kind}) with "
               f"{gallery.index().ntotal} vectors in {_time.perf_counter() - t0:.1f} s "
               f"({gallery.vector_store.kind} store)")


@cli.command("check")
@click.option("--repair", is_flag=True, help="Rebuild what the catalog can rebuild (index files) "
              "and re-import missing photos whose original file still holds the same bytes.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def check_cmd(obj: Context, repair, as_json) -> None:
    """Is the gallery whole? Catalog integrity, stored photos, index files, models."""
    from tqdm import tqdm

    from .check import check

    try:
        g = obj.gallery()
        bar = tqdm(total=0, unit="photo", desc="checking photos", disable=as_json and not sys.stderr.isatty())

        def progress(p) -> None:
            bar.total = p.total
            bar.update(p.done - bar.n)
        report = check(g, repair=repair, on_progress=progress)
        bar.close()
    except GalleryError as e:
        fail(e)
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


@cli.command("upgrade")
@click.argument("name")
@click.option("--force", is_flag=True, help="Switch even when the pre-flight check fails.")
@click.option("--dry-run", is_flag=True, help="Run the pre-flight check only.")
@click.option("--sample", default=64, show_default=True, help="Photos in the pre-flight sample.")
@click.option("--transform", is_flag=True, help="Also move the gallery: map every stored vector "
              "into NAME's own space by arithmetic (no photo decoded; resumable), then switch.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def upgrade_cmd(obj: Context, name, force, dry_run, sample, transform, as_json) -> None:
    """Make NAME the query model, instantly, when it is compatible with the gallery's space.

    With --transform the stored vectors move into NAME's space first (see the fit's plan)."""
    from .preflight import summary
    from .upgrade import PreflightRefused, upgrade

    try:
        result = upgrade(obj.gallery(), name, force=force, dry_run=dry_run, sample=sample,
                         transform=transform, progress=not as_json or sys.stderr.isatty())
    except KeyboardInterrupt:
        click.echo("interrupted: vectors moved so far are kept; run the same command again to "
                   "continue", err=True)
        sys.exit(130)
    except PreflightRefused as e:
        if as_json:
            emit_json(e.result.as_dict())
        fail(e)
    except GalleryError as e:
        fail(e)
    if as_json:
        emit_json(result.as_dict())
        return
    p = result.preflight
    click.echo(summary(p) + (" (forced)" if result.forced else ""))
    for reason in p.reasons:
        click.echo(f"  {reason}")
    for warning in result.warnings:
        click.echo(f"  warning: {warning}")
    if result.next_step:
        click.echo(result.next_step["text"])
    if result.changed and result.transform:
        click.echo(f"upgraded {result.previous} -> {result.model} in {result.seconds:.1f} s "
                   f"(space {result.space}, {result.vectors_transformed} vectors transformed, "
                   f"{result.photos_embedded} photos embedded)")
    elif result.changed:
        click.echo(f"upgraded {result.previous} -> {result.model} in {result.switch_ms:.1f} ms "
                   f"(space {result.space}, 0 vectors recomputed)")
    for note in result.notes:
        click.echo(note)
    if result.transform and not result.changed and not result.dry_run:
        sys.exit(130)


@cli.command("rollback")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rollback_cmd(obj: Context, as_json) -> None:
    """Go back to the previous query model, instantly."""
    from .upgrade import rollback

    try:
        result = rollback(obj.gallery())
    except GalleryError as e:
        fail(e)
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(f"rolled back {result.previous} -> {result.model} in {result.switch_ms:.1f} ms")
    click.echo(f"{result.kept_vectors} vectors computed by {result.previous} stay searchable (same space)"
               if result.kept_vectors else "no vectors of the rolled-back model are in this space")
    if result.need_reembed:
        click.echo(f"{result.need_reembed} photos have no {result.model} vector: run `graceful backfill`")


@cli.command("backfill")
@click.option("--order", type=click.Choice(["random", "oldest", "most-retrieved", "uncertainty"]),
              default="random", show_default=True)
@click.option("--limit", type=int, help="Re-embed at most this many photos now.")
@click.option("--status", "show_status", is_flag=True, help="Only show how far backfill is.")
@click.option("--curve", "curve_dir", type=click.Path(path_type=Path),
              help="Labelled query folder: record quality vs fraction backfilled (saved report).")
@click.option("--batch-size", default=16, show_default=True)
@ray_flags
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def backfill_cmd(obj: Context, order, limit, show_status, curve_dir, batch_size, ray_address,
                 ray_workers, as_json) -> None:
    """Optional: re-embed older vectors with the active model (resumable; search stays up)."""
    from . import backfill as bf

    try:
        gallery = obj.gallery()
        if show_status:
            emit_json(bf.status(gallery)) if as_json else click.echo(
                " ".join(f"{k}={v}" for k, v in bf.status(gallery).items()))
            return
        curve = bf.CurveRecorder(gallery, curve_dir) if curve_dir else None
        state = bf.backfill(gallery, order, limit, batch_size, progress=True, curve=curve,
                            ray=ray_options(ray_address, ray_workers))
        st = bf.status(gallery)
    except GalleryError as e:
        fail(e)
    if as_json:
        emit_json({**state.as_dict(), "status": st, **({"curve": curve.report()} if curve else {})})
    else:
        click.echo(f"re-embedded {state.done} photos with {state.model} in {state.seconds:.1f} s "
                   f"({state.rate:.1f} img/s); {st['fraction_backfilled']:.0%} of the gallery is "
                   f"now embedded by {st['model']}")
        if curve:
            for p in curve.curve:
                click.echo(f"  {p['fraction']:>6.1%} backfilled: top-1 {p['top1']:.4f}  mAP {p['map']:.4f}")
            click.echo(f"  area under the mAP curve {curve.report()['auc_map']:.4f}")
    if state.failed:
        click.echo(f"{state.failed} photos could not be re-embedded: their files are missing from "
                   f"the store or damaged. `graceful check --repair` restores what it can.", err=True)
        sys.exit(1)
    if state.interrupted:
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)


@cli.command("reembed")
@click.argument("name")
@click.option("--no-switch", is_flag=True, help="Build the new index but keep the current model.")
@click.option("--batch-size", default=16, show_default=True)
@ray_flags
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reembed_cmd(obj: Context, name, no_switch, batch_size, ray_address, ray_workers, as_json) -> None:
    """Classic path for an incompatible model: re-embed every photo into a second index while
    search keeps serving the current one; switch atomically when complete (resumable)."""
    from .reembed import reembed

    try:
        state, switched = reembed(obj.gallery(), name, batch_size, True, not no_switch,
                                  ray=ray_options(ray_address, ray_workers))
    except GalleryError as e:
        fail(e)
    if as_json:
        emit_json({**state.as_dict(), "switched": switched})
    else:
        click.echo(f"re-embedded {state.done} photos with {state.model} in {state.seconds:.1f} s"
                   + ("; switched to it" if switched else ""))
    if state.interrupted:
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)


@cli.command("compare")
@click.option("--old", "old_name", help="Default: the previous model.")
@click.option("--new", "new_name", help="Default: the active model.")
@click.option("--queries", type=click.Path(path_type=Path),
              help="Folder of query photos; an ImageFolder (sub-folder per class) adds metrics.")
@click.option("--log", "from_log", is_flag=True, help="Use the searches recorded in the query log.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the report here.")
@click.pass_obj
def compare_cmd(obj: Context, old_name, new_name, queries, from_log, k, json_out) -> None:
    """Per query: results gained and lost between two models; flip rates when labelled."""
    from . import compare as cmp

    if bool(queries) == bool(from_log):
        raise click.UsageError("give one of --queries DIR or --log")
    try:
        gallery = obj.gallery()
        qs = cmp.queries_from_folder(queries) if queries else cmp.queries_from_log(gallery)
        report = gallery.compare(qs, old_name, new_name, k)
    except GalleryError as e:
        fail(e)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
    s = report["summary"]
    click.echo(f"{s['queries']} queries, {s['old']} vs {s['new']}, top-{s['k']}: overlap "
               f"{s['overlap_at_k']:.3f}, {s['gained']} results gained, {s['lost']} lost")
    if s["labelled"]:
        for side in ("old_metrics", "new_metrics"):
            m = s[side]
            click.echo(f"  {s[side[:3]]:<24} top1 {m['top1']:.4f} top5 {m['top5']:.4f} mAP {m['map']:.4f}")
        click.echo(f"  NFR {s['nfr']:.4f}  PFR {s['pfr']:.4f}  "
                   + "  ".join(f"lost@{d} {v:.4f}" for d, v in s["lost_at_k"].items()))
        lost = [r for r in cmp.lost_first(report["queries"]) if r.get("lost_all")]
        if lost:
            click.echo(f"  {len(lost)} quer{'y' if len(lost) == 1 else 'ies'} lost every right "
                       f"photo from the top-{s['k']}:")
            for r in lost[:10]:
                click.echo(f"    {r['query']} ({r['label']}): lost {len(r['lost'])} results")
    click.echo(f"report: {report.get('path')}")


@cli.command("log")
@click.argument("switch", type=click.Choice(["on", "off", "status"]), default="status")
@click.pass_obj
def log_cmd(obj: Context, switch) -> None:
    """Turn the query log (used by `compare --log`) on or off for this gallery."""
    try:
        gallery = obj.gallery()
    except GalleryError as e:
        fail(e)
    if switch != "status":
        gallery.catalog.set_log_queries(switch == "on")
    n = gallery.catalog.count_logged_queries()
    click.echo(f"query log {'on' if gallery.catalog.log_queries() else 'off'}, "
               f"{n} searches recorded")


@cli.group("albums", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def albums_group(ctx: click.Context, as_json) -> None:
    """The gallery's albums (the labels that fitted upgrades and comparisons learn from).

    A photo's album is the folder it was indexed from unless set here or with index --album."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        rows = ctx.obj.gallery().catalog.albums()
    except GalleryError as e:
        fail(e)
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
    try:
        g = obj.gallery()
        ids = [g.image_row(ref).id for ref in images]
        n = g.catalog.set_album(ids, album)
    except GalleryError as e:
        fail(e)
    click.echo(f"{n} photo{'s' if n != 1 else ''} now in album {album}")


@albums_group.command("clear")
@click.argument("images", nargs=-1, required=True)
@click.pass_obj
def albums_clear_cmd(obj: Context, images) -> None:
    """Take IMAGES (ids or sha256 prefixes) out of their album."""
    try:
        g = obj.gallery()
        n = g.catalog.set_album([g.image_row(ref).id for ref in images], None)
    except GalleryError as e:
        fail(e)
    click.echo(f"{n} photo{'s' if n != 1 else ''} now without an album")


@albums_group.command("rename")
@click.argument("old")
@click.argument("new")
@click.pass_obj
def albums_rename_cmd(obj: Context, old, new) -> None:
    """Rename album OLD to NEW (merging it into NEW if that exists)."""
    try:
        n = obj.gallery().catalog.rename_album(old, new)
    except GalleryError as e:
        fail(e)
    if not n:
        fail(GalleryError(f"no album called {old!r} (graceful albums lists them)"))
    click.echo(f"renamed {old} -> {new} ({n} photos)")


@cli.command("train")
@click.option("--from-gallery", is_flag=True,
              help="Fit the upgrade to this gallery: its stored photos, albums and stored vectors "
                   "(no --old/--data needed; measured on a held-out slice before it is saved).")
@click.option("--old", "old_name", help="The model to be compatible with (e.g. lite0).")
@click.option("--backbone", required=True, help="The new, frozen backbone (e.g. lite2).")
@click.option("--method", type=click.Choice(
    ["auto", "independent", "l2", "bct", "pct", "adapter", "procrustes"]),
    help="With --from-gallery default auto: pct when albums give labels, else adapter.")
@click.option("--data", type=click.Path(path_type=Path),
              help="ImageFolder (one sub-folder per class); any image folder for adapter/procrustes.")
@click.option("--sample", type=int, help="--from-gallery: photos the new backbone runs on "
              "(default: all up to 1,500, else one in eight, at most 5,000).")
@click.option("--out", required=True, help="Name of the new model.")
@click.option("--eval", "eval_dir", type=click.Path(path_type=Path),
              help="Labelled ImageFolder to measure old/old, new/old and new/new on.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--head", type=click.Choice(["mlp", "linear"]), default="mlp", show_default=True)
@click.option("--lam", default=1.0, show_default=True, help="Weight of the compatibility loss.")
@click.option("--loss", type=click.Choice(["ce", "lqf"]), default="ce", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda when a GPU is present.")
@click.option("--finetune-blocks", default=0, show_default=True,
              help="Also fine-tune the backbone's last N blocks on augmented images (slow on a CPU; "
                   "use --device cuda on a GPU), after the head is trained on cached features. "
                   "0 = frozen backbone only.")
@click.option("--finetune-epochs", default=1, show_default=True,
              help="Epochs of that second, fine-tuning stage.")
@click.option("--old-classifier", type=click.Choice(["trained", "prototypes"]), default="trained",
              show_default=True, help="bct/pct: the old checkpoint's trained classifier rows where "
              "it has them, or class means of the old embeddings (prototypes) for every class.")
@click.option("--force", is_flag=True, help="Replace an existing model of that name; with "
              "--from-gallery also save a model measured worse on the held-out slice.")
@click.option("--replace", is_flag=True, help="Replace an existing model of that name (e.g. "
              "one saved by a run that was killed), still refusing a model measured worse.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def train_cmd(obj: Context, from_gallery, old_name, backbone, method, data, sample, out, eval_dir,
              epochs, head, lam, loss, device, finetune_blocks, finetune_epochs, old_classifier,
              force, as_json, replace=False) -> None:
    """Train a new model whose vectors are compatible with OLD's (saved in the gallery home).

    With --from-gallery: fit it to this gallery's own photos and stored vectors."""
    from .runtime import configure_threads

    if from_gallery:
        if data or old_name:
            raise click.UsageError("--from-gallery learns from the gallery: drop --data / --old")
        configure_threads(obj.threads)
        return fit_from_gallery(obj, backbone, out, method or "auto", sample, loss, epochs, force,
                                as_json, replace)
    if not (old_name and method and data):
        raise click.UsageError("give --old, --method and --data (or --from-gallery)")
    from models.compat_train import TrainRequest, train_compatible
    from models.imagefolder import DatasetError
    from models.train import TrainConfig

    configure_threads(obj.threads)
    req = TrainRequest(old_name, backbone, method, data, out, obj.home / "models",
                       obj.home / "cache", eval_dir,
                       TrainConfig(method, epochs=epochs, head=head, lam=lam, loss=loss,
                                   device=device),
                       progress=True, force=force or replace, finetune_blocks=finetune_blocks,
                       finetune_epochs=finetune_epochs, old_classifier=old_classifier)
    try:
        path, meta = train_compatible(req)
    except (DatasetError, ValueError, RuntimeError) as e:
        fail(e)
    if as_json:
        emit_json({"path": str(path), "name": meta.name, "space": meta.space, "dim": meta.dim,
                   "compatible_with": meta.compatible_with, "method": meta.method,
                   "metrics": meta.metrics})
        return
    click.echo(f"saved {meta.name} ({meta.method} on {meta.backbone}, space {meta.space}) to {path}")
    ev = meta.metrics.get("eval")
    if ev:
        for pair in ("old/old", "new/old", "new/new"):
            m = ev[pair]
            click.echo(f"  {pair:<8} top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  mAP {m['map']:.4f}"
                       + (f"  NFR {m['nfr']:.4f}  PFR {m['pfr']:.4f}" if "nfr" in m else ""))


def fit_from_gallery(obj: Context, backbone, out, method, sample, loss, epochs, force, as_json,
                     replace: bool = False) -> None:
    from models.features import ExtractionStopped

    from .fit import FitRefused, FitRequest, fit_upgrade

    req = FitRequest(backbone, out, method, sample, loss, epochs, force=force, replace=force or replace,
                     progress=not as_json or sys.stderr.isatty())
    try:
        report = fit_upgrade(obj.gallery(), req)
    except FitRefused as e:
        if as_json:
            emit_json(e.report)
        else:
            print_fit_report(e.report)
        fail(e)
    except (KeyboardInterrupt, ExtractionStopped):
        click.echo("interrupted: features computed so far are kept; run the same command again "
                   "to resume", err=True)
        sys.exit(130)
    except (GalleryError, ValueError) as e:
        fail(e)
    if as_json:
        emit_json(report)
        return
    print_fit_report(report)
    click.echo(f"saved {report['name']} ({report['method']} on {report['backbone']}, space "
               f"{report['space']}) to {report['path']}")
    click.echo(f"next: {next_command(report)}")


def next_command(report: dict) -> str:
    """What to run after a fit: the recommended path's command."""
    name = report["name"]
    return {"queries": f"graceful upgrade {name}",
            "transform": f"graceful upgrade {name} --transform",
            "backfill": f"graceful upgrade {name} --transform, then graceful backfill --order "
                        f"uncertainty"}.get(report.get("recommended") or "",
                                            f"keep {report['old_model']} (no path is safe), or "
                                            f"graceful upgrade {name} to try it")


def print_fit_report(r: dict) -> None:
    s, h = r["sample"], r["held_out"]
    click.echo(f"fitted {r['name']} ({r['method']}) on {s['train']} photos"
               + (f" of {s['albums']} albums" if s["labelled"] else "")
               + f"; held out {s['held_out']} photos of {r['gallery_photos']}; "
                 f"{r['seconds']['total']:.0f} s")
    albums = h.get("albums")
    if albums and not r.get("plan"):  # the plan below measures the same paths, by one protocol
        for pair in ("old/old", "new/old", "new/new"):
            m = albums.get(pair)
            if m:
                extra = f"  NFR {m['nfr']:.4f}  PFR {m['pfr']:.4f}" if "nfr" in m else ""
                if pair == "new/old":
                    extra = f"  NFR {albums['nfr']:.4f}  PFR {albums['pfr']:.4f}"
                click.echo(f"  {pair:<8} top1 {m['top1']:.4f}  mAP {m['map']:.4f}{extra}")
    click.echo(f"  own stored vector rank {h['own_rank']:.2%} (median), agreement "
               f"{h['agreement']:.2f}, mean cosine {h['mean_cosine']:.3f}")
    if r.get("plan"):
        print_plan(r)
    click.echo(f"verdict: {r['verdict']} - {r['expectation']}")


def print_plan(r: dict) -> None:
    """The upgrade plan: each path measured on the held-out photos, with its cost."""
    from .plan import duration_text

    m = r["measured"]
    o = m["old"]
    click.echo(f"upgrade plan (measured on {m['queries']} held-out photos, their near duplicates "
               f"left out: {m['near_duplicates']['rule']}; ± = standard error):")
    click.echo(f"  {'path':<10} {'top-1':>13} {'top-5':>13} {'mAP':>13} {'NFR':>6} {'lost@5':>7} "
               f"{'kept':>5} {'photos':>7} {'time':>8}")
    click.echo(f"  {'now':<10} {o['top1']:>6.3f} ±{o['top1_se']:.3f} {o['top5']:>6.3f} "
               f"±{o['top5_se']:.3f} {o['map']:>6.3f} ±{o['map_se']:.3f} {'-':>6} {'-':>7} "
               f"{'-':>5} {'-':>7} {'-':>8}")
    for row in r["plan"]:
        mark = " *" if row["path"] == r.get("recommended") else ("  !" if row["flags"] else "")
        se = row["se"]
        click.echo(f"  {row['path']:<10} {row['top1']:>6.3f} ±{se['top1']:.3f} {row['top5']:>6.3f} "
                   f"±{se['top5']:.3f} {row['map']:>6.3f} ±{se['map']:.3f} {row['nfr']:>6.3f} "
                   f"{row['lost_at_5']:>7.3f} {row['retention']:>5.2f} {row['photos_embedded']:>7} "
                   f"{duration_text(row['seconds']):>8}{mark}")
        for flag in row["flags"]:
            click.echo(f"      ! {flag}")
    click.echo(f"  (kept: share of each photo's old first results still among its new ones; "
               f"photos: embedded by the path; * recommended)")
    click.echo(f"  {r['recommendation']}")


@cli.group("bench")
def bench_group() -> None:
    """Benchmarks."""


@bench_group.command("compat")
@click.option("--train", "train_dir", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--test", "test_dir", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--old-classes", default=0.5, show_default=True,
              help="Fraction of the classes (sorted by name) the old model is trained on.")
@click.option("--old-backbone", default="lite0", show_default=True)
@click.option("--new-backbone", default="lite2", show_default=True)
@click.option("--methods", default="independent,l2,bct,pct,adapter,procrustes", show_default=True)
@click.option("--dim", default=256, show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path),
              help="Feature cache (default: the gallery home's cache/).")
@click.option("--loss", type=click.Choice(["ce", "lqf"]), default="ce", show_default=True,
              help="Classification loss of the new heads: cross-entropy or LQF least squares.")
@click.option("--old-classifier", type=click.Choice(["trained", "prototypes", "both"]),
              default="trained", show_default=True,
              help="bct/pct's frozen old classifier: the old head's trained rows, class means of "
                   "the old embeddings for every class (album prototypes), or both side by side "
                   "(reported as <method>+proto).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the results here.")
@click.pass_obj
def bench_compat_cmd(obj: Context, train_dir, test_dir, old_classes, old_backbone, new_backbone,
                     methods, dim, epochs, cache_dir, loss, old_classifier, json_out) -> None:
    """Old model on some classes, every method on all: compatibility, accuracy and flips."""
    from bench.compat import CompatBenchConfig, run
    from models.imagefolder import DatasetError

    from .runtime import configure_threads

    configure_threads(obj.threads)
    cfg = CompatBenchConfig(train_dir, test_dir, cache_dir or obj.home / "cache", old_backbone,
                            new_backbone, old_classes, tuple(m for m in methods.split(",") if m),
                            dim, epochs, loss=loss, old_classifier=old_classifier)
    try:
        result = run(cfg)
    except (DatasetError, ValueError) as e:
        fail(e)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
    click.echo(f"{'pair':<24} {'top1':>7} {'top5':>7} {'mAP':>7} {'NFR':>7} {'PFR':>7}")
    for pair, m in result["pairs"].items():
        click.echo(f"{pair:<24} {m['top1']:>7.4f} {m['top5']:>7.4f} {m['map']:>7.4f} "
                   f"{m.get('nfr', float('nan')):>7.4f} {m.get('pfr', float('nan')):>7.4f}")
    for method, c in result["criterion"].items():
        click.echo(f"criterion M({method},old) > M(old,old): top1 {c['top1']} ({c['top1_gain']:+.4f}), "
                   f"mAP {c['map']} ({c['map_gain']:+.4f})")
    click.echo(f"total {result['wall_times']['total_s']} s")


def _gen_config(obj: Context, train_dir, test_dir, cache_dir, loss):
    from bench.generations import GenConfig

    from .runtime import configure_threads

    configure_threads(obj.threads)
    return GenConfig(train_dir, test_dir, cache_dir or obj.home / "cache", loss=loss)


def _write(json_out, result) -> None:
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2))


_bench_data = [
    click.option("--train", "train_dir", required=True, type=click.Path(path_type=Path, exists=True)),
    click.option("--test", "test_dir", required=True, type=click.Path(path_type=Path, exists=True)),
    click.option("--cache", "cache_dir", type=click.Path(path_type=Path)),
    click.option("--loss", type=click.Choice(["ce", "lqf"]), default="ce", show_default=True),
    click.option("--json", "json_out", type=click.Path(path_type=Path)),
]


def bench_data(fn):
    for option in reversed(_bench_data):
        fn = option(fn)
    return fn


@bench_group.command("chain")
@bench_data
@click.pass_obj
def bench_chain_cmd(obj: Context, train_dir, test_dir, cache_dir, loss, json_out) -> None:
    """v1 -> v2 -> v3 (lite0 -> lite1 -> lite2, classes growing): matrix and compatibility tax."""
    from bench.generations import chain

    result = chain(_gen_config(obj, train_dir, test_dir, cache_dir, loss))
    _write(json_out, result)
    gals = ["v1", "v2", "v3"]
    click.echo("top-1 (mAP): query model x gallery model")
    click.echo(f"{'':<12}" + "".join(f"{g:>18}" for g in gals))
    for q, row in result["matrix"].items():
        click.echo(f"{q:<12}" + "".join(f"{row[g]['top1']:>9.4f} ({row[g]['map']:.4f})" for g in gals))
    for gen, t in result["compatibility_tax"].items():
        click.echo(f"compatibility tax {gen}: top-1 {t['top1']:+.4f}, mAP {t['map']:+.4f}")


@bench_group.command("hetero")
@bench_data
@click.pass_obj
def bench_hetero_cmd(obj: Context, train_dir, test_dir, cache_dir, loss, json_out) -> None:
    """Small query models compatible with a large gallery model: accuracy vs images/s."""
    from bench.generations import hetero

    result = hetero(_gen_config(obj, train_dir, test_dir, cache_dir, loss))
    _write(json_out, result)
    for r in result["rows"]:
        click.echo(f"{r['query_model']:<30} top1 {r['top1']:.4f} mAP {r['map']:.4f} "
                   f"{r['images_per_s']:>7.1f} img/s")


def main() -> None:
    cli(prog_name="graceful")


if __name__ == "__main__":
    main()
