"""`graceful`: every engine operation, scriptable. `--json` output is a stable contract
(documented in README.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .gallery import Gallery, GalleryError, default_home


class Context:
    def __init__(self, home: Path, threads: int | None):
        self.home = home
        self.threads = threads

    def gallery(self, create: bool = False) -> Gallery:
        from .runtime import configure_threads

        configure_threads(self.threads)
        return Gallery.open(self.home, create=create)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def fail(e: Exception) -> None:
    raise click.ClickException(str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def index_cmd(obj: Context, paths, model_name, batch_size, workers, as_json) -> None:
    """Add photos (files or folders, recursively) to the gallery."""
    from .ingest import collect_files, ingest

    try:
        collect_files(paths)  # a missing path is refused before anything is written
        if not Gallery.exists(obj.home):
            from models import registry

            registry.resolve(model_name or registry.DEFAULT_MODEL)
        gallery = obj.gallery(create=True)
        report = ingest(gallery, paths, model_name, batch_size=batch_size, workers=workers,
                        progress=not as_json or sys.stderr.isatty())
    except (GalleryError, ValueError) as e:
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
@click.option("-k", default=10, show_default=True, help="How many results.")
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
    click.echo(f"images       {info['images']}")
    click.echo(f"active model {info['active_model']}  (space {info['space']})")
    click.echo(f"index        {info['index']['vectors']} vectors, {info['index']['dim']}-d")
    for row in info["vectors"]:
        click.echo(f"vectors      {row['vectors']:>7} by {row['model']} in space {row['space']}")


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
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        compat = f" compatible with {', '.join(r['compatible_with'])}" if r["compatible_with"] else ""
        click.echo(f"{r['name']:<28} {r['kind']:<13} space {r['space']:<12} {r['dim']}-d{compat}")
    click.echo("openclip:ARCH:TAG_OR_FILE     open_clip     (any open_clip architecture; offline from a local file)")


@cli.command("train")
@click.option("--old", "old_name", required=True, help="The model to be compatible with (e.g. lite0).")
@click.option("--backbone", required=True, help="The new, frozen backbone (e.g. lite2).")
@click.option("--method", required=True, type=click.Choice(
    ["independent", "l2", "bct", "pct", "adapter", "procrustes"]))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="ImageFolder (one sub-folder per class); any image folder for adapter/procrustes.")
@click.option("--out", required=True, help="Name of the new model.")
@click.option("--eval", "eval_dir", type=click.Path(path_type=Path),
              help="Labelled ImageFolder to measure old/old, new/old and new/new on.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--head", type=click.Choice(["mlp", "linear"]), default="mlp", show_default=True)
@click.option("--lam", default=1.0, show_default=True, help="Weight of the compatibility loss.")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda when a GPU is present.")
@click.option("--force", is_flag=True, help="Replace an existing model of that name.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def train_cmd(obj: Context, old_name, backbone, method, data, out, eval_dir, epochs, head, lam,
              device, force, as_json) -> None:
    """Train a new model whose vectors are compatible with OLD's (saved in the gallery home)."""
    from models.compat_train import TrainRequest, train_compatible
    from models.imagefolder import DatasetError
    from models.train import TrainConfig

    from .runtime import configure_threads

    configure_threads(obj.threads)
    req = TrainRequest(old_name, backbone, method, data, out, obj.home / "models",
                       obj.home / "cache", eval_dir,
                       TrainConfig(method, epochs=epochs, head=head, lam=lam, device=device),
                       progress=True, force=force)
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
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the results here.")
@click.pass_obj
def bench_compat_cmd(obj: Context, train_dir, test_dir, old_classes, old_backbone, new_backbone,
                     methods, dim, epochs, cache_dir, json_out) -> None:
    """Old model on some classes, every method on all: compatibility, accuracy and flips."""
    from models.compat_bench import CompatBenchConfig, run
    from models.imagefolder import DatasetError

    from .runtime import configure_threads

    configure_threads(obj.threads)
    cfg = CompatBenchConfig(train_dir, test_dir, cache_dir or obj.home / "cache", old_backbone,
                            new_backbone, old_classes, tuple(m for m in methods.split(",") if m),
                            dim, epochs)
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


def main() -> None:
    cli(prog_name="graceful")


if __name__ == "__main__":
    main()
