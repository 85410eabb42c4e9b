"""Mechanism checks of study `restwake` (METHODS.md in this folder): is the
Rest-Wake mechanism alive in the cells whose verdicts the report gives?

- `rest_fraction_in_range` (each adaptive cell, per seed): the share of REST epochs lies in
  [0.05, 0.3]. Outside it the adaptive variant is SGD (no rest) or mostly resting, and a
  verdict on it says nothing about Rest-Wake.
- `last_epoch_wake` (every cell, per seed, `sgd` included): the final epoch is not REST, so the
  final accuracy is never a weight average that `sgd` does not get.
- `rule_rests_after_spikes` (each adaptive method and group): the rule with the cell's options,
  replayed on a scripted flat variance trace with isolated spikes, rests right after each one.
- `rule_replays_own_trace` (each adaptive cell, per seed): the rule with the cell's options and
  the constraints of every variant (`rule.simulate`), replayed on the cell's *own* recorded
  variance trace (`grad_cv2` of each WAKE epoch), gives exactly the phases the cell took. A fixed
  schedule, rests at arbitrary epochs, or a variant that never rests although its trace crossed
  the threshold all fail it (the rest fraction alone passes a 1-in-5 schedule).
- `rule_false_spike_rate` (each adaptive cell, per seed; reported, no claim requires it): how
  often v reached the threshold on the cell's own trace (crossed / decided WAKE epochs), the
  trace's log-noise around its trailing median, and the rate at which the rule crosses on pure
  noise of that level (its false-spike rate: about 0.25 at log-noise 0.3). Fails only when every
  decided epoch crossed: then the rest cap, not the trace, sets the RESTs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.checks import Check, axes_of, register_checks
from bench.studies.restwake.rule import (
    REST,
    SwitchingRule,
    crossings,
    noise_crossing_rate,
    simulate,
    spike_trace,
    trace_noise,
    wake_trace,
)

STUDY = "restwake"
ADAPTIVE = "restwake_improved"  # the method implementation whose phases follow the rule
REST_FRACTION = (0.05, 0.3)


def _phases(r: Mapping[str, Any]) -> list[str]:
    return [str(h.get("phase")) for h in r.get("history") or []]


def _is_adaptive(r: Mapping[str, Any]) -> bool:
    return (r.get("config") or {}).get("method_impl") == ADAPTIVE


CHECKS = ("rest_fraction_in_range", "last_epoch_wake", "rule_rests_after_spikes",
          "rule_replays_own_trace", "rule_false_spike_rate")


def _fmt_phases(phases: list[str]) -> str:
    """`....R.....`: one character per epoch, R for REST."""
    return "".join("R" if p == REST else "." for p in phases)


def _replay(a: dict[str, Any], r: Mapping[str, Any], phases: list[str]) -> list[Check]:
    """`rule_replays_own_trace` and `rule_false_spike_rate` of one adaptive cell."""
    options = (r.get("config") or {}).get("method_options") or {}
    rule = SwitchingRule.from_options(options)
    history = r.get("history") or []
    trace = wake_trace(history)
    recorded = any(h.get("grad_cv2") is not None for h in history)
    out = []
    if not recorded:
        out.append(Check("rule_replays_own_trace", **a, passed=False,
                         value="no variance trace (grad_cv2) in the history",
                         expected="the rule replayed on the cell's own trace gives its phases"))
        out.append(Check("rule_false_spike_rate", **a, passed=False,
                         value="no variance trace (grad_cv2) in the history",
                         expected="< 1 (reported; no claim requires it)"))
        return out
    replay = simulate(rule, trace, int(options.get("buffer_capacity", 3)),
                      int(options.get("min_snapshots", 2)),
                      bool(options.get("last_epoch_wake", True)))
    first = next((t for t, (p, q) in enumerate(zip(phases, replay, strict=True)) if p != q), None)
    out.append(Check(
        "rule_replays_own_trace", **a, passed=first is None,
        value=("identical" if first is None
               else f"differs from epoch {first + 1}: the rule gives {replay[first]}, the cell "
                    f"took {phases[first]}"),
        expected="the rule replayed on the cell's own trace gives its phases",
        detail=f"cell {_fmt_phases(phases)}, replay {_fmt_phases(replay)}"))
    c = crossings(rule, trace, phases)
    noise = trace_noise(rule, c)
    rate = c.rate
    value = (f"{rate:.2f} ({c.crossed}/{c.decided} decided WAKE epochs at or over the threshold)"
             if rate is not None else "no decided WAKE epoch (all in the warm-up)")
    detail = ""
    if noise is not None and noise > 0:
        detail = (f"trace log-noise {noise:.2f}; on pure noise of that level the rule crosses on "
                  f"{noise_crossing_rate(rule, noise):.2f} of decided epochs")
    out.append(Check("rule_false_spike_rate", **a, passed=rate is not None and rate < 1.0,
                     value=value, expected="< 1 (reported; no claim requires it)",
                     detail=detail))
    return out


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
            out.extend(_replay(a, r, phases))
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
