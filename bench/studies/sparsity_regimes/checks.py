"""Mechanism checks of study `sparsity_regimes` (METHODS.md in this folder; bench/checks.py).

The thesis claims (S1 / S2 beat dense) mean something only if the adaptive controllers adapted:
when both guards compared the epoch's training loss with an earlier dense epoch's, neither ever
tripped and S1, S2 and the sawtooth were one open-loop schedule under three names. Per group
(model, dataset, budget) and seed, from each cell's per-epoch `keep_ratio` and `reset_cause`:

- `trajectories_differ` (one row for `topk_s1` and one for `topk_s2` per seed): their keep-ratio
  trajectories differ in at least one epoch, in a run longer than one cycle (the sawtooth's
  period, `period`, default 10: the open-loop reference's cycle). A run of at most one cycle
  passes as not applicable (its value says so); a missing partner trajectory fails.
- `guard_reset` (per adaptive cell): at least one reset caused by the guard above the floor
  (`reset_cause` "guard" at r > r_min), not only floor resets.
- `not_degenerate` (per adaptive cell): fails, value `degenerate`, when the trajectory equals the
  sawtooth cell's of the same seed, or the open-loop schedule the controller follows when its
  guard never acts (compress by beta from 1 to r_min, reset at the floor).
- `sparsity_bites` (per adaptive cell): at least one epoch trained at a keep ratio r below the
  natural density of the hooked ReLU outputs, so that top-k removed activations the ReLUs had
  kept. The natural density of epoch t is the cell's own `effective_activation_rate` in its
  latest epoch at r = 1 up to t (TopK is then the identity and only counts), or, before any such
  epoch, the `dense` cell's of the same group and seed in epoch t. Above it top-k changes
  nothing (the study's README: ~0.45-0.58 on digits), and a controller that never goes below it
  trains a dense network under another name. No measured density fails the check and says so.

Reads result.json documents only (no torch). The controller constants are the cell's
`config.method_options` over METHODS.md's defaults (`DEFAULTS`, the methods' own defaults: a test
holds them equal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.checks import Check, axes_of, register_checks

ADAPTIVE = ("topk_s1", "topk_s2")
SAWTOOTH = "topk_sawtooth"
DENSE = "dense"
DEFAULTS = {"r_min": 0.05, "beta": 0.8, "period": 10}  # METHODS.md, as the methods' defaults
TOL = 1e-9


def _options(result: Mapping[str, Any]) -> dict[str, Any]:
    opts = (result.get("config") or {}).get("method_options") or {}
    return {**DEFAULTS, **{k: v for k, v in opts.items() if k in DEFAULTS}}


def trajectory(result: Mapping[str, Any]) -> list[float]:
    """The keep ratio of every recorded epoch (None where missing)."""
    return [h.get("keep_ratio") for h in result.get("history") or []]


def same(a: Sequence[float | None], b: Sequence[float | None]) -> bool:
    """Equal over their common length (and both non-empty)."""
    n = min(len(a), len(b))
    if n == 0:
        return False
    return all(x is not None and y is not None and abs(float(x) - float(y)) <= TOL
               for x, y in zip(a[:n], b[:n], strict=True))


def open_loop(r_min: float, beta: float, epochs: int) -> list[float]:
    """Compress by beta from 1 to r_min, reset at the floor (no guard ever acting); the same as
    controllers.open_loop_ratios, repeated here because checks import no torch."""
    out, r = [], 1.0
    for _ in range(epochs):
        out.append(r)
        r = max(r_min, beta * r) if r > r_min else 1.0
    return out


def _fmt(traj: Sequence[float | None], n: int = 14) -> str:
    s = ", ".join("-" if r is None else f"{float(r):.3g}" for r in traj[:n])
    return f"[{s}{', ...' if len(traj) > n else ''}]"


def _rate(h: Mapping[str, Any]) -> float | None:
    v = h.get("effective_activation_rate")
    try:
        return float(v) if v is not None and float(v) == float(v) else None
    except (TypeError, ValueError):
        return None


def natural_density(history: Sequence[Mapping[str, Any]],
                    dense: Sequence[Mapping[str, Any]] | None) -> list[float | None]:
    """Per epoch of `history`: the natural density of the hooked outputs (see `sparsity_bites`
    in the module docstring); None where neither source measured it."""
    out: list[float | None] = []
    own: float | None = None
    for t, h in enumerate(history):
        kr = h.get("keep_ratio")
        if kr is not None and float(kr) >= 1.0 - TOL and _rate(h) is not None:
            own = _rate(h)
        if own is not None:
            out.append(own)
        elif dense is not None and t < len(dense):
            out.append(_rate(dense[t]))
        else:
            out.append(None)
    return out


def _bites(m: str, group: dict[str, Any], r: Mapping[str, Any],
           dense: Mapping[str, Any] | None) -> Check:
    history = r.get("history") or []
    density = natural_density(history, (dense.get("history") or []) if dense else None)
    expected = "r < the natural density in >= 1 epoch"
    measured = [(t, float(h["keep_ratio"]), d) for t, (h, d) in enumerate(zip(history, density,
                                                                                strict=True))
                if d is not None and h.get("keep_ratio") is not None]
    if not measured:
        return Check("sparsity_bites", m, **group, passed=False,
                     value="no natural density measured",
                     expected=expected,
                     detail="record effective_activation_rate per epoch (a cell at r = 1, or a "
                            "dense cell of the same group and seed)")
    biting = [(t, kr, d) for t, kr, d in measured if kr < d - TOL]
    t, kr, d = min(measured, key=lambda x: x[1] - x[2])
    rate = _rate(history[t])
    value = (f"{len(biting)} of {len(history)} epochs below; lowest r {kr:.3g} in epoch {t + 1} "
             f"vs density {d:.3g}")
    return Check("sparsity_bites", m, **group, passed=bool(biting), value=value,
                 expected=expected,
                 detail=(f"effective rate {rate:.3g} in epoch {t + 1}" if rate is not None
                         else ""))


@register_checks("sparsity_regimes", "trajectories_differ", "guard_reset", "not_degenerate",
                 "sparsity_bites")
def checks(results: Sequence[Mapping[str, Any]]) -> list[Check]:
    by_key: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for r in results:
        a = axes_of(r)
        key = (a["model"], a["dataset"], a["budget"], a["seed"])
        by_key.setdefault(key, {})[a["method"]] = r
    out: list[Check] = []
    for (model, dataset, budget, seed), cells in sorted(by_key.items()):
        group = {"model": model, "dataset": dataset, "budget": budget, "seed": seed}
        saw = cells.get(SAWTOOTH)
        saw_traj = trajectory(saw) if saw is not None else []
        period = int(_options(saw)["period"]) if saw is not None else DEFAULTS["period"]
        present = [m for m in ADAPTIVE if m in cells]
        trajs = {m: trajectory(cells[m]) for m in present}
        for m in present:
            other = ADAPTIVE[1 - ADAPTIVE.index(m)]
            mine, theirs = trajs[m], trajs.get(other, [])
            n = min(len(mine), len(theirs))
            if not mine or not theirs:
                passed, value = False, f"no {other if mine else m} keep-ratio trajectory"
            elif n <= period:
                passed, value = True, f"n/a: {n} epochs <= one cycle ({period})"
            else:
                passed = not same(mine, theirs)
                first = next((i for i in range(n) if abs((mine[i] or 0) - (theirs[i] or 0)) > TOL),
                             None)
                value = (f"differ from epoch {first + 1} of {n}" if passed
                         else f"identical in {n} of {n} epochs")
            out.append(Check("trajectories_differ", m, **group, passed=passed, value=value,
                             expected=f"{ADAPTIVE[0]} != {ADAPTIVE[1]} in a run > {period} epochs",
                             detail=f"{m} {_fmt(mine)}; {other} {_fmt(theirs)}"))
        for m in present:
            r = cells[m]
            history = r.get("history") or []
            opts = _options(r)
            r_min = float(opts["r_min"])
            if not any("reset_cause" in h for h in history):
                out.append(Check("guard_reset", m, **group, passed=False,
                                 value="no reset causes recorded",
                                 expected=">= 1 guard reset above r_min"))
            else:
                causes = [(h.get("reset_cause") or "", h.get("keep_ratio")) for h in history]
                guard = sum(c == "guard" and kr is not None and kr > r_min + TOL
                            for c, kr in causes)
                floor = sum(c == "floor" or (c == "guard" and (kr is None or kr <= r_min + TOL))
                            for c, kr in causes)
                out.append(Check("guard_reset", m, **group, passed=guard >= 1,
                                 value=f"{guard} guard, {floor} floor resets",
                                 expected=">= 1 guard reset above r_min",
                                 detail=f"{len(history)} epochs"))
            traj = trajs[m]
            loop = open_loop(r_min, float(opts["beta"]), len(traj))
            why = []
            if saw is not None and same(traj, saw_traj):
                why.append(f"equals {SAWTOOTH}'s trajectory")
            if traj and same(traj, loop):
                why.append("equals the open-loop schedule (the guard never acted)")
            if not traj:
                why.append("no trajectory")
            out.append(Check("not_degenerate", m, **group, passed=not why,
                             value=("degenerate: " + "; ".join(why)) if why else "adaptive",
                             expected=f"differs from {SAWTOOTH} and from the open-loop schedule",
                             detail=_fmt(traj)))
            out.append(_bites(m, group, r, cells.get(DENSE)))
    return out
