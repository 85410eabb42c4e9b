"""Statistics for the study tables: intervals, paired tests, Holm, claim verdicts, paper checks.

Pure functions (no I/O). Conventions (docs/contracts.md, DESIGN.md "Statistics and report"):

- Spread is the *sample* standard deviation (ddof=1); intervals are 95% t-intervals,
  ``mean +- t.ppf(0.975, n - 1) * std / sqrt(n)``.
- Methods are compared with their study's reference *paired by seed index*
  (``scipy.stats.ttest_rel``); difference = method - reference; effect size Cohen's
  ``d_z = mean(diff) / std(diff, ddof=1)``. With fewer than ``min_pairs`` (3) pairs the row says
  ``not testable (...)`` instead of a p-value.
- Holm's step-down correction (statsmodels) over a study's family of tested comparisons.

Claims (one entry of ``config/claims/<study>.yaml``; the format is documented in
``bench.aggregate``) get a verdict ``reproduced`` / ``not reproduced`` / ``not testable (...)``:

- ``value`` claims: reproduced when ``|mean(reproduced) - value| <= tolerance``. The tolerance is
  the claim's ``tolerance: {abs: x}`` or ``{rel: x}`` (x times ``|value|``); without one, the
  **default tolerance** is ``abs = 2 x the paper's stated std`` when the claim states a positive
  ``std``, else ``rel = 0.05`` (5% of ``|value|``). Every verdict gives the absolute half-width
  used (``tolerance``, the claims.csv column) and the rule that gave it (``tolerance_rule``).
- ``range: [low, high]`` claims: reproduced when the reproduced mean lies in the range; a claim
  ``tolerance`` widens both ends (abs: by x; rel: by x times ``|bound|``). No default widening.
- ``statistic: paired_p`` claims (``value`` = the paper's p): see :func:`pvalue_claim_verdict`.

Paper-internal checks (:func:`paper_checks`) recompute a claim's stated mean / std / p from the
paper's own per-run values. Numbers compare within *rounding*: half a unit in the last decimal
stated, plus how far the rounding of the runs themselves (half a unit in their last decimal) can
move the recomputed number (first order, by central differences). Numbers may be written as
strings in the claims file (``"0.8300"``) to keep trailing zeros, which YAML would drop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from bench.errors import BenchError, ConfigError

NAN = float("nan")
CONFIDENCE = 0.95
MIN_PAIRS = 3
DEFAULT_REL_TOLERANCE = 0.05  # claims without tolerance and without a stated std
DEFAULT_STD_MULTIPLE = 2.0  # claims without tolerance but with a stated std: abs = 2 x std
DEFAULT_ALPHA = 0.05  # p-value claims: "reproduced" = same side of alpha

TESTED = "tested"


class SeedMismatchError(BenchError, ValueError):
    """A method and its reference were run on different seed indices: the pairing is undefined."""


# --------------------------------------------------------------------------------------------
# numbers


def to_float(x: Any) -> float:
    """A number from a float, int, numeric string or None (-> NaN); bools are rejected."""
    if x is None:
        return NAN
    if isinstance(x, bool):
        raise ValueError(f"expected a number, got the boolean {x!r}")
    if isinstance(x, (int, float, np.integer, np.floating)):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x.strip())
        except ValueError:
            raise ValueError(f"expected a number, got the string {x!r}") from None
    raise ValueError(f"expected a number, got {type(x).__name__} {x!r}")


def decimals(x: Any) -> int:
    """How many decimals a stated number carries ('0.8300' -> 4, 433.49 -> 2, 465 -> 0)."""
    if isinstance(x, bool) or x is None:
        raise ValueError(f"expected a number, got {x!r}")
    if isinstance(x, (int, np.integer)):
        return 0
    text = x.strip() if isinstance(x, str) else repr(float(x))
    try:
        exponent = Decimal(text).as_tuple().exponent
    except InvalidOperation:
        raise ValueError(f"expected a number, got {x!r}") from None
    if not isinstance(exponent, int):  # NaN / inf
        return 0
    return max(0, -exponent)


def half_unit(x: Any) -> float:
    """Half a unit in the last stated decimal: the rounding error of a stated number."""
    return 0.5 * 10.0 ** (-decimals(x))


def _clean(values: Iterable[Any]) -> np.ndarray:
    arr = np.asarray([to_float(v) for v in values], dtype=float)
    return arr[~np.isnan(arr)]


@functools.lru_cache(maxsize=1024)
def _t_crit(n: int) -> float:
    return float(sps.t.ppf(0.5 + CONFIDENCE / 2, n - 1))


# --------------------------------------------------------------------------------------------
# summaries


def summarize(values: Iterable[Any]) -> dict[str, float | int]:
    """Mean, sample std (ddof=1), 95% t-interval and n of the non-NaN values.

    n < 2 -> std and interval NaN; n == 0 -> mean NaN too.
    """
    arr = _clean(values)
    n = int(arr.size)
    mean = float(arr.mean()) if n else NAN
    std = ci_low = ci_high = NAN
    if n >= 2:
        std = float(arr.std(ddof=1))
        half = _t_crit(n) * std / math.sqrt(n)
        ci_low, ci_high = mean - half, mean + half
    return {"mean": mean, "std": std, "ci_low": ci_low, "ci_high": ci_high, "n": n}


def describe(values: Iterable[Any]) -> dict[str, float | int]:
    """Mean, sample std, min, max and n of the non-NaN values (the memory summary)."""
    arr = _clean(values)
    n = int(arr.size)
    return {
        "mean": float(arr.mean()) if n else NAN,
        "std": float(arr.std(ddof=1)) if n >= 2 else NAN,
        "min": float(arr.min()) if n else NAN,
        "max": float(arr.max()) if n else NAN,
        "n": n,
    }


# --------------------------------------------------------------------------------------------
# paired tests


def paired_test(
    method_values: Mapping[int, Any],
    reference_values: Mapping[int, Any],
    min_pairs: int = MIN_PAIRS,
    *,
    method: str = "method",
    reference: str = "reference",
) -> dict[str, Any]:
    """Paired t-test of method vs reference over seed indices (the keys).

    Returns ``n_pairs, mean_method, mean_reference, mean_diff, diff_ci_low, diff_ci_high, t, p,
    d_z, status`` plus ``dropped_seeds`` and ``note``. Difference = method - reference.
    Different key sets raise :class:`SeedMismatchError`; pairs with NaN on either side (a
    diverged or failed cell) are dropped and named in ``note``. Fewer than ``min_pairs`` pairs, or
    zero variance of the differences, give ``status = "not testable (...)"`` and NaN t/p (means,
    difference and, from 2 pairs, its interval are still reported). A spread of the differences
    below 1e-12 x the largest |value| counts as zero (float noise).
    """
    m_keys, r_keys = set(method_values), set(reference_values)
    if m_keys != r_keys:
        raise SeedMismatchError(
            f"mismatched seed sets: method {method} has seeds {sorted(m_keys)} but reference "
            f"{reference} has {sorted(r_keys)} (missing for {method}: {sorted(r_keys - m_keys)}; "
            f"missing for {reference}: {sorted(m_keys - r_keys)}); run the missing cells or "
            "remove them"
        )
    seeds = sorted(m_keys)
    kept, dropped = [], []
    for s in seeds:
        mv, rv = to_float(method_values[s]), to_float(reference_values[s])
        (dropped if (math.isnan(mv) or math.isnan(rv)) else kept).append((s, mv, rv))
    dropped_seeds = [s for s, _, _ in dropped]
    notes = []
    if dropped_seeds:
        notes.append(f"dropped seeds {dropped_seeds} (NaN or non-ok cell on one side)")

    n = len(kept)
    m = np.array([mv for _, mv, _ in kept], dtype=float)
    r = np.array([rv for _, _, rv in kept], dtype=float)
    diff = m - r
    out: dict[str, Any] = {
        "n_pairs": n,
        "mean_method": float(m.mean()) if n else NAN,
        "mean_reference": float(r.mean()) if n else NAN,
        "mean_diff": float(diff.mean()) if n else NAN,
        "diff_ci_low": NAN,
        "diff_ci_high": NAN,
        "t": NAN,
        "p": NAN,
        "d_z": NAN,
        "status": TESTED,
    }
    # zero variance: all differences equal, or a spread at the level of float rounding noise
    # (e.g. method = reference + 0.1 computed in floats), which would give a meaningless p ~ 0
    scale = float(max(np.abs(m).max(), np.abs(r).max())) if n else 0.0
    zero_var = n >= 2 and (
        bool(np.all(diff == diff[0])) or float(diff.std(ddof=1)) <= 1e-12 * max(scale, 1e-300)
    )
    if n >= 2:
        sd = 0.0 if zero_var else float(diff.std(ddof=1))
        half = _t_crit(n) * sd / math.sqrt(n)
        out["diff_ci_low"], out["diff_ci_high"] = out["mean_diff"] - half, out["mean_diff"] + half
        if sd > 0:
            out["d_z"] = out["mean_diff"] / sd

    if n < min_pairs:
        out["status"] = f"not testable (n={n} pairs < {min_pairs})"
    elif zero_var:
        if bool(np.all(diff == 0)):
            out["status"] = (
                "not testable (zero variance of differences: all differences are exactly zero)"
            )
        else:
            out["status"] = "not testable (zero variance of differences)"
    else:
        res = sps.ttest_rel(m, r)
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    out["dropped_seeds"] = dropped_seeds
    out["note"] = "; ".join(notes)
    return out


def holm(pvalues: Sequence[Any]) -> list[float]:
    """Holm-adjusted p-values (statsmodels ``multipletests(method="holm")``); NaN stays NaN."""
    p = np.asarray([to_float(x) for x in pvalues], dtype=float)
    out = np.full(p.shape, NAN)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return [float(x) for x in out]


# --------------------------------------------------------------------------------------------
# claims


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def claim_tolerance(claim: Mapping[str, Any]) -> tuple[float, str]:
    """(absolute half-width, description) of a value claim's tolerance, default rule included."""
    value = to_float(claim.get("value"))
    tol = claim.get("tolerance")
    if tol:
        kind, x = _tolerance_spec(tol)
        if kind == "abs":
            return x, f"abs {_fmt(x)} (claim)"
        width = x * abs(value)
        return width, f"rel {_fmt(x)} (claim) = abs {_fmt(width)}"
    std = to_float(claim.get("std"))
    if not math.isnan(std) and std > 0:
        width = DEFAULT_STD_MULTIPLE * std
        return width, (
            f"abs {_fmt(width)} (default: {DEFAULT_STD_MULTIPLE:g} x stated std {_fmt(std)})"
        )
    width = DEFAULT_REL_TOLERANCE * abs(value)
    return width, f"rel {DEFAULT_REL_TOLERANCE:g} (default, no stated std) = abs {_fmt(width)}"


def _tolerance_spec(tol: Any) -> tuple[str, float]:
    if not isinstance(tol, Mapping) or len(tol) != 1 or next(iter(tol)) not in ("abs", "rel"):
        raise ConfigError(
            f"tolerance {tol!r} must be a mapping with exactly one of 'abs' or 'rel', "
            "e.g. {abs: 0.5} or {rel: 0.02}"
        )
    kind, x = next(iter(tol.items()))
    x = to_float(x)
    if math.isnan(x) or x < 0:
        raise ConfigError(f"tolerance {tol!r} must be a non-negative number")
    return kind, x


def claim_verdict(claim: Mapping[str, Any], reproduced_values: Iterable[Any]) -> dict[str, Any]:
    """Verdict of a ``value`` or ``range`` claim against the reproduced per-seed values.

    Returns ``reproduced`` (mean of the non-NaN values), ``n``, ``difference`` (reproduced - value;
    for a range, the signed distance to the nearest widened bound, 0 inside), ``tolerance`` (the
    absolute half-width used; for a range, how far its ends were widened), ``tolerance_rule``
    (text: which rule gave it, default or claim) and ``verdict``.
    """
    if claim.get("statistic") is not None:
        raise ConfigError(
            f"claim {claim.get('id')!r} is a {claim['statistic']} claim; "
            "use pvalue_claim_verdict with the reproduction's paired test"
        )
    s = summarize(reproduced_values)
    mean, n = s["mean"], s["n"]
    out: dict[str, Any] = {"reproduced": mean, "n": n, "difference": NAN}
    if "range" in claim and claim["range"] is not None:
        low, high = (to_float(v) for v in claim["range"])
        tol = claim.get("tolerance")
        if tol:
            kind, x = _tolerance_spec(tol)
            w_low, w_high = (x, x) if kind == "abs" else (x * abs(low), x * abs(high))
            low_w, high_w = low - w_low, high + w_high
            text = f"range widened by {kind} {_fmt(x)} (claim) to [{_fmt(low_w)}, {_fmt(high_w)}]"
            out["tolerance"] = max(w_low, w_high)
        else:
            low_w, high_w = low, high
            text = "range as stated (no widening)"
            out["tolerance"] = 0.0
        out["tolerance_rule"] = text
        if n == 0:
            out["verdict"] = "not testable (no matching cells with status ok)"
            return out
        out["difference"] = (
            mean - low_w if mean < low_w else mean - high_w if mean > high_w else 0.0
        )
        out["verdict"] = "reproduced" if low_w <= mean <= high_w else "not reproduced"
        return out

    value = to_float(claim.get("value"))
    width, text = claim_tolerance(claim)
    out["tolerance"], out["tolerance_rule"] = width, text
    if n == 0:
        out["verdict"] = "not testable (no matching cells with status ok)"
        return out
    out["difference"] = mean - value
    # a hair of slack so that a difference equal to the tolerance is not lost to float error
    ok = abs(mean - value) <= width + 1e-12 * max(1.0, abs(value))
    out["verdict"] = "reproduced" if ok else "not reproduced"
    return out


def pvalue_claim_verdict(claim: Mapping[str, Any], paired: Mapping[str, Any]) -> dict[str, Any]:
    """Verdict of a ``statistic: paired_p`` claim against the reproduction's paired test.

    ``paired`` is a :func:`paired_test` result for the claim's method vs its reference.
    Reproduced = the reproduced p and the stated p fall on the same side of ``alpha`` (the claim's
    ``alpha``, default 0.05): the same significance conclusion. The reproduced p is unadjusted, like
    the paper's single test.
    """
    stated = to_float(claim.get("value"))
    alpha = to_float(claim.get("alpha", DEFAULT_ALPHA))
    p = to_float(paired.get("p"))
    out: dict[str, Any] = {
        "reproduced": p,
        "n": int(paired.get("n_pairs", 0)),
        "difference": NAN,
        "tolerance": NAN,
        "tolerance_rule": f"same side of alpha={alpha:g} (reproduced paired-t p, unadjusted)",
    }
    status = str(paired.get("status", ""))
    if status != TESTED:
        out["verdict"] = status if status.startswith("not testable") else "not testable (no test)"
        return out
    out["difference"] = p - stated
    out["verdict"] = "reproduced" if (p < alpha) == (stated < alpha) else "not reproduced"
    return out


# --------------------------------------------------------------------------------------------
# paper-internal checks


def _rounding_spread(
    f: Callable[[list[np.ndarray]], float], groups: list[Sequence[Any]]
) -> float:
    """First-order bound on how far f moves when each run moves by its rounding half-unit."""
    base = [np.array([to_float(v) for v in g], dtype=float) for g in groups]
    total = 0.0
    for gi, g in enumerate(groups):
        for i, raw in enumerate(g):
            h = half_unit(raw)
            up = [a.copy() for a in base]
            down = [a.copy() for a in base]
            up[gi][i] += h
            down[gi][i] -= h
            delta = abs(f(up) - f(down)) / 2
            if math.isfinite(delta):
                total += delta
    return total


def _close(stated: float, recomputed: float, tol: float) -> bool:
    return abs(stated - recomputed) <= tol + 1e-12 * max(1.0, abs(stated))


def _row(claim_id: Any, check: str, stated: float, recomputed: float, consistent: Any, note: str):
    return {
        "claim_id": claim_id,
        "check": check,
        "stated": stated,
        "recomputed": recomputed,
        "consistent": consistent,
        "note": note,
    }


def _welch_p(groups: list[np.ndarray]) -> float:
    a, b = groups
    if len(a) < 2 or len(b) < 2 or (np.all(a == a[0]) and np.all(b == b[0])):
        return NAN
    return float(sps.ttest_ind(a, b, equal_var=False).pvalue)


def _paired_p(groups: list[np.ndarray]) -> float:
    a, b = groups
    d = a - b
    if len(a) != len(b) or len(a) < 2 or np.all(d == d[0]):
        return NAN
    return float(sps.ttest_rel(a, b).pvalue)


def paper_checks(claim: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Recompute a claim's stated numbers from the paper's per-run values (``runs``).

    Rows ``claim_id, check, stated, recomputed, consistent, note``:

    - ``mean``: mean of ``runs`` vs ``value``.
    - ``std (ddof=1)`` / ``std (ddof=0)``: ``runs``' sample std vs the stated ``std``; when the
      stated std matches only the population std the row is named ``std (ddof=0)`` (consistent,
      the note names the convention); the note always gives both.
    - ``statistic: paired_p`` claims: ``p (paired t-test)`` and ``p (Welch t-test)`` recomputed from
      ``runs`` (method) and ``reference_runs`` vs the stated p ``value``.

    Tolerance: see the module docstring (stated rounding + the runs' rounding, first order).
    A claim without ``runs`` gives no rows.
    """
    cid = claim.get("id")
    runs_raw = claim.get("runs")
    if not runs_raw:
        return []
    runs = np.array([to_float(v) for v in runs_raw], dtype=float)
    rows: list[dict[str, Any]] = []

    if claim.get("statistic") == "paired_p":
        ref_raw = claim.get("reference_runs") or []
        stated_raw = claim.get("value")
        stated = to_float(stated_raw)
        stated_h = half_unit(stated_raw) if stated_raw is not None else 0.0
        groups = [runs_raw, ref_raw]
        results = {}
        for name, f in (("p (paired t-test)", _paired_p), ("p (Welch t-test)", _welch_p)):
            arrs = [np.array([to_float(v) for v in g], dtype=float) for g in groups]
            rec = f(arrs)
            tol = stated_h + _rounding_spread(f, groups)
            results[name] = (rec, tol)
        matched = [
            k
            for k, (rec, tol) in results.items()
            if math.isfinite(rec) and _close(stated, rec, tol)
        ]
        for name, (rec, tol) in results.items():
            if not math.isfinite(rec):
                why = (
                    "needs equal numbers of method and reference runs (>= 2) with non-constant "
                    "differences"
                    if "paired" in name
                    else "needs >= 2 runs per side and some spread"
                )
                rows.append(_row(cid, name, stated, NAN, None, f"cannot recompute: {why}"))
                continue
            note = f"tolerance +-{_fmt(tol)} (rounding of the stated p and of the runs)"
            if not matched:
                others = ", ".join(f"{k} {_fmt(v[0])}" for k, v in results.items())
                note += f"; no t-test on the stated runs gives p = {_fmt(stated)} ({others})"
            rows.append(_row(cid, name, stated, rec, name in matched, note))
        return rows

    runs_h = _rounding_spread(lambda g: float(np.mean(g[0])), [runs_raw])
    if claim.get("value") is not None and not isinstance(claim.get("value"), (list, dict)):
        stated_raw = claim["value"]
        stated = to_float(stated_raw)
        rec = float(runs.mean())
        tol = half_unit(stated_raw) + runs_h
        rows.append(
            _row(
                cid,
                "mean",
                stated,
                rec,
                _close(stated, rec, tol),
                f"mean of {runs.size} runs; tolerance +-{_fmt(tol)} (rounding)",
            )
        )
    if claim.get("std") is not None and runs.size >= 2:
        stated_raw = claim["std"]
        stated = to_float(stated_raw)
        sample = float(runs.std(ddof=1))
        population = float(runs.std(ddof=0))
        tol_s = half_unit(stated_raw) + _rounding_spread(
            lambda g: float(np.std(g[0], ddof=1)), [runs_raw]
        )
        tol_p = half_unit(stated_raw) + _rounding_spread(
            lambda g: float(np.std(g[0], ddof=0)), [runs_raw]
        )
        k = decimals(stated_raw)  # shown at the paper's precision; full values in `recomputed`
        both = f"sample std (ddof=1) {sample:.{k}f}, population std (ddof=0) {population:.{k}f}"
        if _close(stated, sample, tol_s):
            rows.append(
                _row(
                    cid,
                    "std (ddof=1)",
                    stated,
                    sample,
                    True,
                    (
                        "matches the sample std"
                        if round(sample, k) == round(stated, k)
                        else "matches the sample std only within rounding (the printed runs "
                        "are rounded too)"
                    )
                    + f", tolerance +-{_fmt(tol_s)}; {both}",
                )
            )
        elif _close(stated, population, tol_p):
            rows.append(
                _row(
                    cid,
                    "std (ddof=0)",
                    stated,
                    population,
                    True,
                    f"matches the population std (ddof=0), not the sample std: the paper "
                    f"likely used ddof=0; {both}",
                )
            )
        else:
            rows.append(
                _row(
                    cid,
                    "std (ddof=1)",
                    stated,
                    sample,
                    False,
                    f"matches neither the sample nor the population std of its runs "
                    f"(tolerance +-{_fmt(tol_s)}); {both}",
                )
            )
    elif claim.get("std") is not None:
        rows.append(
            _row(cid, "std (ddof=1)", to_float(claim["std"]), NAN, None, "needs >= 2 runs")
        )
    return rows
