"""Commands that change or measure the query model: upgrade, rollback, backfill, reembed, compare."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from search import render
from search.cli.base import Context, bars, emit_json, fail, interrupted, ray_flags, ray_options
from search.cli.jsonout import json_out_options, json_targets, write_json


@click.command("upgrade")
@click.argument("name")
@click.option("--force", is_flag=True, help="Switch even when the pre-flight check fails.")
@click.option("--dry-run", is_flag=True, help="Run the pre-flight check only.")
@click.option("--sample", default=64, show_default=True, help="Photos in the pre-flight sample.")
@click.option("--transform", is_flag=True, help="Also move the gallery: map every stored vector "
              "into NAME's own space by arithmetic (no photo decoded; resumable), then switch.")
@click.option("--mode", type=click.Choice(["native", "queries", "fused"]),
              help="For a model of another space, through its bridge (train --from-gallery): "
                   "native = move the stored vectors into its space by the gallery map; queries "
                   "= its queries mapped into the gallery's space; fused = search both "
                   "generations together. Default: the bridge's recommended path.")
@click.option("--weight", type=float, help="--mode fused: the old space's weight (0-1; "
              "default: the bridge plan's choice).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def upgrade_cmd(obj: Context, name, force, dry_run, sample, transform, mode, weight,
                as_json) -> None:
    """Make NAME the query model, instantly, when it is compatible with the gallery's space.

    With --transform the stored vectors move into NAME's space first (see the fit's plan). A
    model of another space goes through the bridge fitted to it (--mode)."""
    from search.api import PreflightRefused

    try:
        result = obj.gallery().upgrade(name, force=force, dry_run=dry_run, sample=sample,
                                       transform=transform, mode=mode, weight=weight,
                                       progress=bars(as_json))
    except KeyboardInterrupt:
        interrupted("vectors moved so far are kept; run the same command again to continue")
    except PreflightRefused as e:
        if as_json:
            emit_json(e.result.as_dict())
        fail(e)
    if as_json:
        emit_json(result.as_dict())
        return
    p = result.preflight
    if p is not None:
        click.echo(render.preflight_summary(p) + (" (forced)" if result.forced else ""))
        for reason in p.reasons:
            click.echo(f"  {reason}")
    for warning in result.warnings:
        click.echo(f"  warning: {warning}")
    if result.next_step:
        click.echo(result.next_step["text"])
    if result.changed and result.transform:
        click.echo(f"upgraded {result.previous} -> {result.model} in {result.seconds:.1f} s "
                   f"({result.mode} mode, space {result.space}, {result.vectors_transformed} "
                   f"vectors transformed, {result.photos_embedded} photos embedded)")
    elif result.changed:
        click.echo(f"upgraded {result.previous} -> {result.model} in {result.switch_ms:.1f} ms "
                   f"({result.mode} mode, space {result.space}, 0 vectors recomputed)")
    for note in result.notes:
        click.echo(note)
    if result.transform and not result.changed and not result.dry_run:
        sys.exit(130)


@click.command("rollback")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rollback_cmd(obj: Context, as_json) -> None:
    """Go back to the previous query model, instantly."""
    result = obj.gallery().rollback()
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(f"rolled back {result.previous} -> {result.model} in {result.switch_ms:.1f} ms")
    click.echo(f"{result.kept_vectors} vectors computed by {result.previous} stay searchable (same space)"
               if result.kept_vectors else "no vectors of the rolled-back model are in this space")
    if result.need_reembed:
        click.echo(f"{result.need_reembed} photos have no {result.model} vector: run `graceful backfill`")


@click.command("backfill")
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
    gallery = obj.gallery()
    if show_status:
        found = gallery.backfill_status().as_dict()
        emit_json(found) if as_json else click.echo(" ".join(f"{k}={v}" for k, v in found.items()))
        return
    curve = gallery.reports.curve_recorder(curve_dir) if curve_dir else None
    state = gallery.backfill(order, limit, batch_size=batch_size, progress=True, curve=curve,
                             ray=ray_options(ray_address, ray_workers))
    st = gallery.backfill_status()
    if as_json:
        emit_json({**state.as_dict(), "status": st.as_dict(),
                   **({"curve": curve.report()} if curve else {})})
    else:
        click.echo(f"re-embedded {state.done} photos with {state.model} in {state.seconds:.1f} s "
                   f"({state.rate:.1f} img/s); {st.fraction_backfilled:.0%} of the gallery is "
                   f"now embedded by {st.model}")
        if curve:
            for p in curve.curve:
                click.echo(f"  {p['fraction']:>6.1%} backfilled: top-1 {p['top1']:.4f}  mAP {p['map']:.4f}")
            click.echo(f"  area under the mAP curve {curve.report()['auc_map']:.4f}")
    if state.failed:
        click.echo(f"{state.failed} photos could not be re-embedded: their files are missing from "
                   f"the store or damaged. `graceful check --repair` restores what it can.", err=True)
        sys.exit(1)
    if state.interrupted:
        interrupted()


@click.command("reembed")
@click.argument("name")
@click.option("--no-switch", is_flag=True, help="Build the new index but keep the current model.")
@click.option("--batch-size", default=16, show_default=True)
@ray_flags
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reembed_cmd(obj: Context, name, no_switch, batch_size, ray_address, ray_workers, as_json) -> None:
    """Classic path for an incompatible model: re-embed every photo into a second index while
    search keeps serving the current one; switch atomically when complete (resumable)."""
    state, switched = obj.gallery().reembed(name, batch_size=batch_size, switch=not no_switch,
                                            progress=True, ray=ray_options(ray_address, ray_workers))
    if as_json:
        emit_json({**state.as_dict(), "switched": switched})
    else:
        click.echo(f"re-embedded {state.done} photos with {state.model} in {state.seconds:.1f} s"
                   + ("; switched to it" if switched else ""))
    if state.interrupted:
        interrupted()


@click.command("compare")
@click.option("--old", "old_name", help="Default: the previous model.")
@click.option("--new", "new_name", help="Default: the active model.")
@click.option("--queries", type=click.Path(path_type=Path),
              help="Folder of query photos; an ImageFolder (sub-folder per class) adds metrics.")
@click.option("--log", "from_log", is_flag=True, help="Use the searches recorded in the query log.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1))
@json_out_options
@click.pass_obj
def compare_cmd(obj: Context, old_name, new_name, queries, from_log, k, json_to, out_file) -> None:
    """Per query: results gained and lost between two models; flip rates when labelled."""
    if bool(queries) == bool(from_log):
        raise click.UsageError("give one of --queries DIR or --log")
    report = obj.gallery().compare(Path(queries) if queries else "log", old_name, new_name,
                                   k).as_dict()
    to_stdout, files = json_targets(json_to, out_file)
    write_json(report, files, indent=1)
    if to_stdout:
        return emit_json(report)
    s = report["summary"]
    click.echo(f"{s['queries']} queries, {s['old']} vs {s['new']}, top-{s['k']}: overlap "
               f"{s['overlap_at_k']:.3f}, {s['gained']} results gained, {s['lost']} lost")
    if s["labelled"]:
        for side in ("old_metrics", "new_metrics"):
            m = s[side]
            click.echo(f"  {s[side[:3]]:<24} top1 {m['top1']:.4f} top5 {m['top5']:.4f} mAP {m['map']:.4f}")
        click.echo(f"  NFR {s['nfr']:.4f}  PFR {s['pfr']:.4f}  "
                   + "  ".join(f"lost@{d} {v:.4f}" for d, v in s["lost_at_k"].items()))
        lost = [r for r in render.lost_first(report["queries"]) if r.get("lost_all")]
        if lost:
            click.echo(f"  {len(lost)} quer{'y' if len(lost) == 1 else 'ies'} lost every right "
                       f"photo from the top-{s['k']}:")
            for r in lost[:10]:
                click.echo(f"    {r['query']} ({r['label']}): lost {len(r['lost'])} results")
    check = s.get("plan_check")
    if check:
        click.echo(f"  {check['bridge']}'s plan for the {check['path']} path, predicted vs measured:")
        for name, c in check["checks"].items():
            click.echo(f"    {name:<10} {c['predicted']:.3f} ±{c['se']:.3f} -> {c['measured']:.3f} "
                       f"({c['off_by_se']:.1f} SE off)")
    click.echo(f"report: {report.get('path')}")


COMMANDS = [upgrade_cmd, rollback_cmd, backfill_cmd, reembed_cmd, compare_cmd]
