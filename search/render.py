"""Reports as people read them: the rows and lines that the CLI prints and the app shows (one
rendering of the fit report, the upgrade plan, the compatibility matrix and the pre-flight).
A base module (wording, like search.units): both faces import it, it imports no engine layer."""
from __future__ import annotations

from search.units import duration_text

__all__ = ["duration_text", "preflight_summary", "lost_first", "next_command", "plan_table",
           "fit_pairs", "fit_lines", "bridge_lines", "command_text", "plan_lines", "compat_cell", "compat_lines", "info_lines"]

PAIR_LABELS = {"old/old": "before (old model)", "new/old": "after the upgrade",
               "new/new": "after a full backfill"}


def preflight_summary(p) -> str:
    """One line for a pre-flight (search.ops.preflight.Preflight)."""
    state = "passed" if p.passed else "FAILED"
    where = "stored vectors" if p.path == "queries" else "transformed vectors"
    how = f"; measured by {p.reused}" if p.reused else ""
    return (f"pre-flight {state} ({p.verdict}, {p.sample} photos against {p.reference} {where}"
            f"{how}): {p.expectation}")


def lost_first(rows: list[dict]) -> list[dict]:
    """Compare report rows for display: queries that lost every right photo first, then by how
    many results they lost."""
    return sorted(rows, key=lambda r: (not r.get("lost_all", False), -len(r["lost"])))


def next_command(report: dict) -> str:
    """What to run after a fit: the recommended path's command."""
    name = report["name"]
    return {"queries": f"graceful upgrade {name}",
            "blend": f"graceful upgrade {name} --mode fused",
            "transform": f"graceful upgrade {name} --transform",
            "backfill": f"graceful upgrade {name} --transform, then graceful backfill --order "
                        f"uncertainty"}.get(report.get("recommended") or "",
                                            f"keep {report['old_model']} (no path is safe), or "
                                            f"graceful upgrade {name} to try it")


def plan_table(r: dict) -> list[dict]:
    """The upgrade plan as rows: now, then each measured path (quality ± standard error, flip
    and loss rates, neighbours kept, photos embedded, time; `recommended` marks the one)."""
    o = r["measured"]["old"]
    rows = [{"path": "now", "top1": o["top1"], "top1_se": o["top1_se"], "top5": o["top5"],
             "top5_se": o["top5_se"], "map": o["map"], "map_se": o["map_se"], "nfr": None,
             "lost_at_5": None, "retention": None, "photos_embedded": None, "time": None,
             "seconds": None, "recommended": False, "flags": [], "verdict": None}]
    for p in r["plan"]:
        se = p["se"]
        rows.append({"path": p["path"], "top1": p["top1"], "top1_se": se["top1"],
                     "top5": p["top5"], "top5_se": se["top5"], "map": p["map"],
                     "map_se": se["map"], "nfr": p["nfr"], "lost_at_5": p["lost_at_5"],
                     "retention": p["retention"], "photos_embedded": p["photos_embedded"],
                     "time": duration_text(p["seconds"]), "seconds": p["seconds"],
                     "recommended": p["path"] == r.get("recommended"), "flags": p["flags"],
                     "verdict": p.get("verdict")})
    return rows


def fit_pairs(r: dict) -> list[dict]:
    """A fit's album metrics per query/gallery pair (shown when it has no plan)."""
    albums = r["held_out"].get("albums")
    if not albums or r.get("plan"):
        return []
    rows = []
    for pair, label in PAIR_LABELS.items():
        m = albums.get(pair)
        if m:
            nfr, pfr = (albums["nfr"], albums["pfr"]) if pair == "new/old" else (m.get("nfr"), m.get("pfr"))
            rows.append({"pair": pair, "label": label, "top1": m["top1"], "map": m["map"],
                         "nfr": nfr, "pfr": pfr})
    return rows


def fit_sample_text(r: dict) -> str:
    s = r["sample"]
    return (f"on {s['train']} photos" + (f" of {s['albums']} albums" if s["labelled"] else "")
            + f"; held out {s['held_out']} photos of {r['gallery_photos']}")


def fit_lines(r: dict) -> list[str]:
    """The fit report as the CLI prints it."""
    h = r["held_out"]
    lines = [f"fitted {r['name']} ({r['method']}) {fit_sample_text(r)}; "
             f"{r['seconds']['total']:.0f} s"]
    for row in fit_pairs(r):
        extra = f"  NFR {row['nfr']:.4f}  PFR {row['pfr']:.4f}" if row["nfr"] is not None else ""
        lines.append(f"  {row['pair']:<8} top1 {row['top1']:.4f}  mAP {row['map']:.4f}{extra}")
    lines.append(f"  own stored vector rank {h['own_rank']:.2%} (median), agreement "
                 f"{h['agreement']:.2f}, mean cosine {h['mean_cosine']:.3f}")
    if r.get("plan"):
        lines += plan_lines(r)
    lines.append(f"verdict: {r['verdict']} - {r['expectation']}")
    return lines


def command_text(argv: list[str] | None) -> str | None:
    return "graceful " + " ".join(argv) if argv else None


def bridge_lines(r: dict) -> list[str]:
    """A label-free bridge's report: the sample, the maps and the plan of every path."""
    s, m = r["sample"], r["measured"]
    curve = ", ".join(f"{c['photos']}: {c['oof_cosine']:.3f}" for c in s["curve"])
    lines = [f"bridge {r['name']}: {r['old_model']} (space {r['space']}) <-> {r['backbone']}, "
             f"{r['photos_embedded']} of {r['gallery_photos']} photos embedded by "
             f"{r['backbone']} (learning curve, photos: map cosine {curve}); "
             f"{r['seconds']['total']:.0f} s",
             f"  maps: gallery {r['maps']['gallery']['map']}, query {r['maps']['query']['map']}",
             f"plan ({m['queries']} held-out photos searching {m['reference']} photos of the "
             f"gallery; ± standard error; fidelity: share of a full re-embed's first 10 results, "
             f"kept: share of the old search's first 10):"]
    labelled = r["labelled"]
    if r.get("albums_unusable"):
        lines.append(f"  albums: {r['albums_unusable']}")
    head = f"  {'path':<10} {'fidelity':>14} {'kept':>14}"
    if labelled:
        head += f" {'top-1':>6} {'mAP':>6} {'NFR':>6} {'lost@5':>7}"
    lines.append(head + f" {'photos':>7} {'time':>8}")
    for p in r["plan"]:
        name = p["path"] + (f"@{p['weight']:.2f}" if p["path"] == "fused" else "")
        row = (f"  {name:<10} {p['fidelity']:>6.3f} ±{p['fidelity_se']:.3f} "
               f"{p['kept_old']:>6.3f} ±{p['kept_old_se']:.3f}")
        if labelled:
            row += f" {p['top1']:>6.3f} {p['map']:>6.3f} {p['nfr']:>6.3f} {p['lost_at_5']:>7.3f}"
        mark = " *" if p["path"] == r["recommended"] else ("  !" if p["flags"] else "")
        lines.append(row + f" {p['photos_embedded']:>7} {duration_text(p['seconds']):>8}{mark}")
        lines += [f"      ! {flag}" for flag in p["flags"]]
    lines.append(f"  {r['recommendation']}")
    for e in r.get("earlier_predictions") or []:
        gaps = ", ".join(f"{k} {c['predicted']:.3f} -> {c['measured']:.3f}"
                         for k, c in e["checks"].items())
        lines.append(f"  earlier on this gallery: {e['bridge']} {e['path']} on {e['queries']} "
                     f"searches: {gaps}" + ("" if e["within_2_se"] else " (beyond 2 SE)"))
    nxt = command_text(r.get("next_command"))
    lines.append(f"next: {nxt}" if nxt else f"next: keep {r['old_model']}")
    return lines


def plan_lines(r: dict) -> list[str]:
    """The upgrade plan: each path measured on the held-out photos, with its cost."""
    m = r["measured"]
    lines = [f"upgrade plan (measured on {m['queries']} held-out photos, their near duplicates "
             f"left out: {m['near_duplicates']['rule']}; ± = standard error):",
             f"  {'path':<10} {'top-1':>13} {'top-5':>13} {'mAP':>13} {'NFR':>6} {'lost@5':>7} "
             f"{'kept':>5} {'photos':>7} {'time':>8}"]
    for row in plan_table(r):
        head = (f"  {row['path']:<10} {row['top1']:>6.3f} ±{row['top1_se']:.3f} "
                f"{row['top5']:>6.3f} ±{row['top5_se']:.3f} {row['map']:>6.3f} ±{row['map_se']:.3f}")
        if row["path"] == "now":
            lines.append(head + f" {'-':>6} {'-':>7} {'-':>5} {'-':>7} {'-':>8}")
            continue
        mark = " *" if row["recommended"] else ("  !" if row["flags"] else "")
        lines.append(head + f" {row['nfr']:>6.3f} {row['lost_at_5']:>7.3f} {row['retention']:>5.2f} "
                     f"{row['photos_embedded']:>7} {row['time']:>8}{mark}")
        lines += [f"      ! {flag}" for flag in row["flags"]]
    lines.append("  (kept: share of each photo's old first results still among its new ones; "
                 "photos: embedded by the path; * recommended)")
    lines.append(f"  {r['recommendation']}")
    return lines


def compat_cell(c: dict) -> str:
    """One cell of the compatibility matrix: -, native, yes, or yes with the measured top-1."""
    if not c["compatible"]:
        return "-"
    if c.get("measured") and c["measured"].get("new/old"):
        return f"yes {c['measured']['new/old']['top1']:.3f}"
    return "native" if c.get("native") else "yes"


def compat_lines(matrix: dict) -> list[str]:
    if not matrix["models"]:
        return []
    width = max(len(m) for m in matrix["models"]) + 2
    lines = ["compatibility (query model x gallery space; new/old top-1 where measured):",
             " " * width + "".join(f"{s:>14}" for s in matrix["spaces"])]
    for name in matrix["models"]:
        lines.append(f"{name:<{width}}" + "".join(f"{compat_cell(matrix['cells'][name][s]):>14}"
                                                 for s in matrix["spaces"]))
    return lines


def info_lines(info: dict) -> list[str]:
    lines = [f"gallery      {info['home']} (schema v{info['schema_version']})",
             f"images       {info['images']} in {info['albums']} albums",
             f"active model {info['active_model']}  (space {info['space']})",
             f"index        {info['index']['vectors']} vectors, {info['index']['dim']}-d"]
    where = info["vector_store"]
    lines.append(f"store        {where['kind']} ({where.get('uri') or where.get('path')})")
    sv = info.get("serving") or {}
    if sv.get("mode"):
        parts = " + ".join(f"{sp} {w:.2f}" for sp, w in zip(sv["spaces"], sv["weights"]))
        lines.append(f"serving      {sv['mode']} ({parts}); index {sv['index_bytes'] / 2**20:.1f} MiB"
                     + (f", search p50 {sv['search_p50_ms']:.2f} ms"
                        if sv.get("search_p50_ms") is not None else "")
                     + f"; spaces kept: {', '.join(sv['spaces_held'])}")
    for row in info["vectors"]:
        via = "/".join(info["runtimes"].get(row["model"], []))
        lines.append(f"vectors      {row['vectors']:>7} by {row['model']} in space {row['space']}"
                     + (f" (computed with {via})" if via else "")
                     + (f", {row['transformed']} of them transformed from stored vectors"
                        if row.get("transformed") else ""))
    return lines + compat_lines(info["compatibility"])
