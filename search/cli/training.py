"""Commands that train models: train (on a dataset, or fitted to the gallery) and the bench
group (compatibility matrix, upgrade chains, heterogeneous search)."""
from __future__ import annotations

from pathlib import Path

import click

from search import render
from search.cli.base import Context, bars, echo_lines, emit_json, fail, interrupted
from search.cli.jsonout import json_out_options, json_targets, write_json


@click.command("train")
@click.option("--from-gallery", is_flag=True,
              help="Fit the upgrade to this gallery: its stored photos, albums and stored vectors "
                   "(no --old/--data needed; measured on a held-out slice before it is saved).")
@click.option("--old", "old_name", help="The model to be compatible with (e.g. lite0).")
@click.option("--backbone", required=True, help="The new, frozen backbone (e.g. lite2).")
@click.option("--method", type=click.Choice(
    ["auto", "independent", "l2", "bct", "pct", "adapter", "procrustes", "bridge"]),
    help="With --from-gallery default auto: pct when albums give labels, else bridge (a "
         "label-free bridge to a backbone of another space: query map, gallery map, fused).")
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
    if from_gallery:
        if data or old_name:
            raise click.UsageError("--from-gallery learns from the gallery: drop --data / --old")
        obj.configure()
        return fit_from_gallery(obj, backbone, out, method or "auto", sample, loss, epochs, force,
                                as_json, replace)
    if not (old_name and method and data):
        raise click.UsageError("give --old, --method and --data (or --from-gallery)")
    from search.api import train_on_dataset

    obj.configure()
    out_model = train_on_dataset(old_name, backbone, method, data, out, obj.home, eval_dir,
                                 epochs=epochs, head=head, lam=lam, loss=loss, device=device,
                                 force=force or replace, finetune_blocks=finetune_blocks,
                                 finetune_epochs=finetune_epochs, old_classifier=old_classifier)
    if as_json:
        emit_json({k: out_model[k] for k in ("path", "name", "space", "dim", "compatible_with",
                                             "method", "metrics")})
        return
    click.echo(f"saved {out_model['name']} ({out_model['method']} on {out_model['backbone']}, "
               f"space {out_model['space']}) to {out_model['path']}")
    ev = out_model["metrics"].get("eval")
    if ev:
        for pair in ("old/old", "new/old", "new/new"):
            m = ev[pair]
            click.echo(f"  {pair:<8} top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  mAP {m['map']:.4f}"
                       + (f"  NFR {m['nfr']:.4f}  PFR {m['pfr']:.4f}" if "nfr" in m else ""))


def fit_from_gallery(obj: Context, backbone, out, method, sample, loss, epochs, force, as_json,
                     replace: bool = False) -> None:
    from search.api import ExtractionStopped, FitRefused

    try:
        report = obj.gallery().train(backbone, out, method, sample=sample, loss=loss,
                                     epochs=epochs, force=force, replace=replace,
                                     progress=bars(as_json))
    except FitRefused as e:
        emit_json(e.report) if as_json else echo_lines(render.fit_lines(e.report))
        fail(e)
    except (KeyboardInterrupt, ExtractionStopped):
        interrupted("features computed so far are kept; run the same command again to resume")
    except ValueError as e:
        fail(e)
    if as_json:
        emit_json(report.as_dict())
        return
    if report.method == "bridge":
        echo_lines(render.bridge_lines(report.as_dict()))
        return
    echo_lines(render.fit_lines(report.as_dict()))
    click.echo(f"saved {report.name} ({report.method} on {report.backbone}, space "
               f"{report.space}) to {report.path}")
    click.echo(f"next: {render.next_command(report.as_dict())}")


@click.group("bench")
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
@json_out_options
@click.pass_obj
def bench_compat_cmd(obj: Context, train_dir, test_dir, old_classes, old_backbone, new_backbone,
                     methods, dim, epochs, cache_dir, loss, old_classifier, json_to, out_file) -> None:
    """Old model on some classes, every method on all: compatibility, accuracy and flips."""
    from search.api import bench_compat

    obj.configure()
    result = bench_compat(train_dir, test_dir, cache_dir or obj.home / "cache", old_backbone,
                          new_backbone, old_classes, tuple(m for m in methods.split(",") if m),
                          dim, epochs, loss=loss, old_classifier=old_classifier)
    if _write(json_to, out_file, result):
        return
    click.echo(f"{'pair':<24} {'top1':>7} {'top5':>7} {'mAP':>7} {'NFR':>7} {'PFR':>7}")
    for pair, m in result["pairs"].items():
        click.echo(f"{pair:<24} {m['top1']:>7.4f} {m['top5']:>7.4f} {m['map']:>7.4f} "
                   f"{m.get('nfr', float('nan')):>7.4f} {m.get('pfr', float('nan')):>7.4f}")
    for method, c in result["criterion"].items():
        click.echo(f"criterion M({method},old) > M(old,old): top1 {c['top1']} ({c['top1_gain']:+.4f}), "
                   f"mAP {c['map']} ({c['map_gain']:+.4f})")
    click.echo(f"total {result['wall_times']['total_s']} s")


def _generations(obj: Context, kind, train_dir, test_dir, cache_dir, loss) -> dict:
    from search.api import bench_generations

    obj.configure()
    return bench_generations(kind, train_dir, test_dir, cache_dir or obj.home / "cache", loss)


def _write(json_to, out_file, result) -> bool:
    """Write the JSON report where asked; True when it went to stdout (and the text does not)."""
    to_stdout, files = json_targets(json_to, out_file)
    write_json(result, files)
    if to_stdout:
        emit_json(result)
    return to_stdout


_bench_data = [
    click.option("--train", "train_dir", required=True, type=click.Path(path_type=Path, exists=True)),
    click.option("--test", "test_dir", required=True, type=click.Path(path_type=Path, exists=True)),
    click.option("--cache", "cache_dir", type=click.Path(path_type=Path)),
    click.option("--loss", type=click.Choice(["ce", "lqf"]), default="ce", show_default=True),
    json_out_options,
]


def bench_data(fn):
    for option in reversed(_bench_data):
        fn = option(fn)
    return fn


@bench_group.command("chain")
@bench_data
@click.pass_obj
def bench_chain_cmd(obj: Context, train_dir, test_dir, cache_dir, loss, json_to, out_file) -> None:
    """v1 -> v2 -> v3 (lite0 -> lite1 -> lite2, classes growing): matrix and compatibility tax."""
    result = _generations(obj, "chain", train_dir, test_dir, cache_dir, loss)
    if _write(json_to, out_file, result):
        return
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
def bench_hetero_cmd(obj: Context, train_dir, test_dir, cache_dir, loss, json_to, out_file) -> None:
    """Small query models compatible with a large gallery model: accuracy vs images/s."""
    result = _generations(obj, "hetero", train_dir, test_dir, cache_dir, loss)
    if _write(json_to, out_file, result):
        return
    for r in result["rows"]:
        click.echo(f"{r['query_model']:<30} top1 {r['top1']:.4f} mAP {r['map']:.4f} "
                   f"{r['images_per_s']:>7.1f} img/s")

COMMANDS = [train_cmd, bench_group]
