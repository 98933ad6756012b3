"""The one judge: a verdict and the flags an average hides, from what `score` (and the
pre-flight's label-free signals) measured. Pure, no numpy needed.

`judge(figures, limits)` reads one flat mapping of whatever was measured and applies, in order:

  1. the compatibility gate (label-free, when `own_rank` and `agreement` were measured): are the
     new queries in the stored vectors' space at all? If not: "incompatible", nothing else;
  2. the label-free floor on kept old results (`kept_old` ± its SE over every query, when
     `limits.min_kept` is set: bridges, whose paths are judged without albums too);
  3. with labels (`delta_map` measured): worse / better / no worse beyond `significance`
     standard errors of the paired deltas (so a sample of 64 cannot overturn a gain measured
     on 300), and the flags (lost@5, NFR, top-5 beyond their limits by more than their SE; the
     labelled queries' kept share below `min_retention`);
  4. label-free only: "compatible" after a passed gate, else "unjudged".

The two rules the engine had (the plan's worse/better/no worse and the pre-flight's gate) are
steps 3 and 1 of this one rule: they answer different questions (does search get better? is
the model in the space at all?) and a pre-flight with albums asks both. The configurations
differ only in their `Limits`: `PLAN` (upgrade plan, pre-flight, fit) and `BRIDGE` (the bridge
plan: the kept floor with its SE instead of the labelled retention limit).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping


@dataclass(frozen=True)
class Limits:
    # how much worse counts as worse: at least this much, and beyond `significance` paired SEs
    worse_map: float = 0.01
    worse_top1: float = 0.02
    significance: float = 2.0
    # what a judged path may lose (outside checks: averages hid lost results)
    max_lost_at_5: float = 0.02
    max_nfr: float = 0.03
    max_top5_drop: float = 0.005
    # label-free, on the labelled queries: a path keeping fewer of the old first results has
    # erased similarity albums cannot see (a compatible path keeps 0.5-0.8, docs/BENCHMARKS.md
    # section 13; one that collapses albums < 0.3). None: not checked.
    min_retention: float | None = 0.35
    # label-free, on every query (bridges): floor on `kept_old`, beyond its SE. None: not checked.
    min_kept: float | None = None
    # the compatibility gate: a photo's own stored vector ranks within this share of the gallery
    # for its new query, and the neighbourhoods agree this far beyond chance
    own_rank_max: float = 0.30
    agreement_min: float = 0.10


PLAN = Limits()
BRIDGE = replace(PLAN, min_retention=None, min_kept=0.6)


@dataclass(frozen=True)
class Verdict:
    verdict: str  # incompatible | worse | better | no worse | compatible | unjudged
    flags: list[str] = field(default_factory=list)  # what it loses that averages hide
    reasons: list[str] = field(default_factory=list)  # the gate's figures in words

    @property
    def passed(self) -> bool:
        return self.verdict not in ("incompatible", "worse")


def gate(figures: Mapping, limits: Limits = PLAN) -> tuple[bool, list[str]]:
    """Step 1 alone: (passed, reasons) of the label-free compatibility gate."""
    rank, agree = figures["own_rank"], figures["agreement"]
    reasons = [f"a typical photo's own stored vector ranks in the top {rank:.2%} of the gallery "
               f"for its new query (limit {limits.own_rank_max:.0%})",
               f"neighbourhood agreement with the old queries {agree:.2f} (0 = unrelated, "
               f"limit {limits.agreement_min:.2f})"]
    return rank <= limits.own_rank_max and agree >= limits.agreement_min, reasons


def _labelled(s: Mapping, lim: Limits) -> tuple[str, list[str]]:
    d_map, d_map_se = s["delta_map"], s["delta_map_se"]
    d_top1, d_top1_se = s["delta_top1"], s["delta_top1_se"]
    worse = (d_map < -max(lim.worse_map, lim.significance * d_map_se)
             or (d_top1 < -max(lim.worse_top1, lim.significance * d_top1_se)
                 and d_map < max(lim.worse_map, lim.significance * d_map_se)))
    if worse:
        verdict = "worse"
    elif d_map > max(lim.worse_map, lim.significance * d_map_se):
        verdict = "better"
    else:
        verdict = "no worse"
    # a flag needs evidence: the figure beyond its limit by more than its standard error (a
    # held-out slice of a few hundred photos cannot tell 3% from 4%)
    flags = []
    if s["lost_at_5"] > lim.max_lost_at_5 + s.get("lost_at_5_se", 0.0):
        flags.append(f"{s['lost_at_5']:.1%} of searches lose every right photo from their first "
                     f"five (lost@5, limit {lim.max_lost_at_5:.0%})")
    if s["nfr"] > lim.max_nfr + s.get("nfr_se", 0.0):
        flags.append(f"{s['nfr']:.1%} of searches that were right first turn wrong (NFR, limit "
                     f"{lim.max_nfr:.0%})")
    if s["delta_top5"] < -(lim.max_top5_drop + s.get("delta_top5_se", 0.0)):
        flags.append(f"top-5 falls by {-s['delta_top5']:.3f}")
    if lim.min_retention is not None and "retention" in s and s["retention"] < lim.min_retention:
        flags.append(f"only {s['retention']:.0%} of each photo's old first results stay among its "
                     f"new ones (limit {lim.min_retention:.0%}): similarity the albums do not "
                     f"describe is being erased")
    return verdict, flags


def judge(figures: Mapping, limits: Limits = PLAN) -> Verdict:
    """The verdict of one measured path (see the module's docstring for the steps)."""
    reasons: list[str] = []
    gated = "own_rank" in figures and "agreement" in figures
    if gated:
        passed, reasons = gate(figures, limits)
        if not passed:
            return Verdict("incompatible", [], reasons)
    flags = []
    if limits.min_kept is not None and "kept_old" in figures:
        kept, se = figures["kept_old"], figures.get("kept_old_se", 0.0)
        if kept < limits.min_kept - se:
            flags.append(f"keeps {kept:.0%} of each search's old first results "
                         f"(label-free floor {limits.min_kept:.0%})")
    if "delta_map" in figures:
        verdict, more = _labelled(figures, limits)
        return Verdict(verdict, flags + more, reasons)
    return Verdict("compatible" if gated else "unjudged", flags, reasons)
