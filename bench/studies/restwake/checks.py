"""Mechanism checks of study `restwake` (../shared/METHODS.md, study `restwake`): is the
Rest-Wake mechanism alive in the cells whose verdicts the report gives?

- `rest_fraction_in_range` (each adaptive cell, per seed): the share of REST epochs lies in
  [0.05, 0.3]. Outside it the adaptive variant is SGD (no rest) or mostly resting, and a
  verdict on it says nothing about Rest-Wake.
- `last_epoch_wake` (every cell, per seed, `sgd` included): the final epoch is not REST, so the
  final accuracy is never a weight average that `sgd` does not get.
- `rule_rests_after_spikes` (each adaptive method and group): the rule with the cell's options,
  replayed on a scripted flat variance trace with isolated spikes, rests right after each one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.checks import Check, axes_of, register_checks
from bench.studies.restwake.rule import REST, SwitchingRule, simulate, spike_trace

STUDY = "restwake"
ADAPTIVE = "restwake_improved"  # the method implementation whose phases follow the rule
REST_FRACTION = (0.05, 0.3)


def _phases(r: Mapping[str, Any]) -> list[str]:
    return [str(h.get("phase")) for h in r.get("history") or []]


def _is_adaptive(r: Mapping[str, Any]) -> bool:
    return (r.get("config") or {}).get("method_impl") == ADAPTIVE


CHECKS = ("rest_fraction_in_range", "last_epoch_wake", "rule_rests_after_spikes")


@register_checks(STUDY, *CHECKS)
def checks(results: Sequence[Mapping[str, Any]]) -> list[Check]:
    out: list[Check] = []
    spike_groups: dict[tuple[str, str, str, str], Mapping[str, Any]] = {}
    lo, hi = REST_FRACTION
    for r in results:
        if r.get("status") != "ok":
            continue
        a = axes_of(r)
        phases = _phases(r)
        if not phases:
            continue
        last = phases[-1]
        out.append(Check("last_epoch_wake", **a, passed=last != REST,
                         value=f"epoch {len(phases)}: {last}", expected="not rest"))
        if _is_adaptive(r):
            rests = phases.count(REST)
            frac = rests / len(phases)
            out.append(Check("rest_fraction_in_range", **a, passed=lo <= frac <= hi,
                             value=f"{frac:.3f} ({rests}/{len(phases)} epochs)",
                             expected=f"in [{lo}, {hi}]"))
            key = (a["method"], a["model"], a["dataset"], a["budget"])
            spike_groups.setdefault(key, r["config"].get("method_options") or {})
    for (method, model, dataset, budget), options in sorted(spike_groups.items()):
        rule = SwitchingRule.from_options(options)
        trace, spikes = spike_trace(rule)
        phases = simulate(rule, trace, int(options.get("buffer_capacity", 3)),
                          int(options.get("min_snapshots", 2)))
        missed = [t + 1 for t in spikes if phases[t + 1] != REST]
        rests = [t + 1 for t, p in enumerate(phases) if p == REST]
        out.append(Check("rule_rests_after_spikes", method, model, dataset, budget, None,
                         passed=bool(spikes) and not missed,
                         value=f"spikes at epochs {[t + 1 for t in spikes]}, REST at {rests}",
                         expected="REST in the epoch after each spike",
                         detail=f"missed after {missed}" if missed else ""))
    return out
