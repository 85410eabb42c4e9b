"""Statistics for the study tables: intervals, paired tests, Holm, the verdict rule's tests,
paper checks.

Pure functions (no I/O). Conventions (docs/contracts.md, docs/statistics.md):

- Spread is the *sample* standard deviation (ddof=1); intervals are t-intervals,
  ``mean +- t.ppf(0.5 + level / 2, n - 1) * std / sqrt(n)`` (95% in the tables).
- Methods are compared *paired by seed index* (``scipy.stats.ttest_rel``); difference =
  method - versus; effect size Cohen's ``d_z = mean(diff) / std(diff, ddof=1)``. With fewer than
  ``min_pairs`` (3) pairs the row says ``not testable (...)`` instead of a p-value.
- Holm's step-down correction (statsmodels) over a family of tested comparisons.
- The claims' verdict rule lives in :mod:`bench.claims`; its tests are here: TOST
  (statsmodels ``ttost_paired`` / ``DescrStatsW.ttost_mean``), one-sided t-tests (scipy),
  seeds needed for a decisive verdict (statsmodels ``TTestPower``), and the Welch-type bands
  that turn a paper's per-run values or stds into a margin.

Paper-internal checks (:func:`paper_checks`) recompute a claim's stated mean / std / p from the
paper's own per-run values. Numbers compare within *rounding*: half a unit in the last decimal
stated, plus how far the rounding of the runs themselves (half a unit in their last decimal) can
move the recomputed number (first order, by central differences). Numbers may be written as
strings in the claims file (``"0.8300"``) to keep trailing zeros, which YAML would drop.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

from bench.errors import BenchError

NAN = float("nan")
CONFIDENCE = 0.95
MIN_PAIRS = 3

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
    if ok.sum() == 1:  # a family of one is its own adjustment (and multipletests runs gc)
        out[ok] = np.minimum(p[ok], 1.0)
    elif ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return [float(x) for x in out]


# --------------------------------------------------------------------------------------------
# the verdict rule's building blocks (bench.claims applies them; docs/design.md, "Claims and
# verdicts")
#
# Every function takes the per-seed sample along axis 0: shape (n,) for one group, or (n, R)
# for R simulated reproductions at once (the calibration in tests/test_claims.py), and returns
# one number per column. Paired samples are (method, versus) arrays of the same shape, paired by
# row (seed index).

SEEDS_MAX = 10_000  # seeds_needed searches up to here; beyond it a verdict is out of reach


def t_interval(x: Any, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample std (ddof=1) and the two-sided ``level`` t-interval of each column of x."""
    x = np.asarray(x, dtype=float)
    n = x.shape[0]
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1) if n >= 2 else np.full(np.shape(mean), NAN)
    half = sps.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n) if n >= 2 else sd
    return mean, sd, mean - half, mean + half


def tost_p(x: Any, low: float, high: float, versus: Any = None) -> np.ndarray:
    """p of the two one-sided tests (TOST) that low < mean(x - versus) < high.

    statsmodels ``ttost_paired`` for a paired sample, ``DescrStatsW.ttost_mean`` for one sample
    (versus None). p < alpha exactly when the (1 - 2 alpha) t-interval lies inside (low, high).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        if versus is None:
            return np.asarray(DescrStatsW(np.asarray(x, dtype=float)).ttost_mean(low, high)[0])
        return np.asarray(ttost_paired(np.asarray(x, dtype=float),
                                       np.asarray(versus, dtype=float), low, high)[0])


def greater_p(x: Any, threshold: float, versus: Any = None) -> np.ndarray:
    """One-sided p that mean(x - versus) > threshold: scipy ``ttest_rel`` (paired, alternative
    'greater', on x - threshold vs versus) or ``ttest_1samp`` (versus None)."""
    x = np.asarray(x, dtype=float)
    # spreadless samples warn about precision loss; bench.claims decides those exactly
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if versus is None:
            res = sps.ttest_1samp(x, threshold, axis=0, alternative="greater")
        else:
            res = sps.ttest_rel(x - threshold, np.asarray(versus, dtype=float), axis=0,
                                alternative="greater")
    return np.asarray(res.pvalue)


def _power_larger(effect: float, nobs: int, alpha: float) -> float:
    return float(TTestPower().power(effect_size=effect, nobs=nobs, alpha=alpha,
                                    alternative="larger"))


def _smallest_n(power_at: Callable[[int], float], target: float) -> int | None:
    """Smallest n in [2, SEEDS_MAX] with power_at(n) >= target (power grows with n), else None."""
    if power_at(SEEDS_MAX) < target:
        return None
    lo, hi = 1, 2
    while power_at(hi) < target:
        lo, hi = hi, min(2 * hi, SEEDS_MAX)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power_at(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def seeds_one_sided(distance: float, sd: float, alpha: float, power: float = 0.8) -> int | None:
    """Seeds a one-sided t-test needs to reject at ``alpha`` with probability ``power`` when the
    true mean lies ``distance`` beyond the null value at seed-to-seed spread ``sd``
    (statsmodels ``TTestPower``). None: more than SEEDS_MAX, or no distance."""
    if not (distance > 0 and sd > 0 and math.isfinite(distance / sd)):
        return None
    return _smallest_n(lambda n: _power_larger(distance / sd, n, alpha), power)


def seeds_tost(mean: float, sd: float, low: float, high: float, alpha: float = 0.05,
               power: float = 0.8) -> int | None:
    """Seeds a TOST of low < mean < high needs to succeed with probability ``power`` if the
    truth is ``mean`` at spread ``sd``. Power of the pair of one-sided tests, bounded below by
    P(lower rejects) + P(upper rejects) - 1 (each from statsmodels ``TTestPower``)."""
    if not (low < mean < high and sd > 0):
        return None

    def tost_power(n: int) -> float:
        return (_power_larger((mean - low) / sd, n, alpha)
                + _power_larger((high - mean) / sd, n, alpha) - 1.0)

    return _smallest_n(tost_power, power)


def mean_halfwidth(std: float, n: int, level: float = CONFIDENCE) -> float:
    """Half-width of the ``level`` t-interval of a mean of n values with sample std ``std``."""
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got n={n}")
    return float(sps.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))


def welch_halfwidth(std1: float, n1: int, std2: float, n2: int,
                    level: float = CONFIDENCE) -> tuple[float, float]:
    """(half-width, Welch-Satterthwaite df) of the ``level`` interval of a difference of two
    independent means (a Welch-type band)."""
    if n1 < 2 or n2 < 2:
        raise ValueError(f"a Welch interval needs at least 2 values per side, got {n1} and {n2}")
    v1, v2 = std1**2 / n1, std2**2 / n2
    se = math.sqrt(v1 + v2)
    if se == 0:
        return 0.0, NAN
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    return float(sps.t.ppf(0.5 + level / 2, df) * se), float(df)

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


def _fmt(x: float) -> str:
    return f"{x:.6g}"


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
    """Recompute a claim's stated numbers from the paper's per-run values.

    Rows ``claim_id, check, stated, recomputed, consistent, note``:

    - ``mean``: mean of ``runs`` vs ``value`` (a claim without ``versus_runs``);
      ``difference of means``: mean(``runs``) - mean(``versus_runs``) vs ``value`` (a
      ``difference`` claim with both).
    - ``std (ddof=1)`` / ``std (ddof=0)``: ``runs``' sample std vs the stated ``std`` (and
      ``versus_runs`` vs ``versus_std``, named ``versus std``); when the stated std matches only
      the population std the row is named ``std (ddof=0)`` (consistent, the note names the
      convention); the note always gives both.
    - ``stated_p``: ``p (paired t-test)`` and ``p (Welch t-test)`` recomputed from ``runs``
      (method) and ``versus_runs`` vs the stated p.

    Tolerance: see the module docstring (stated rounding + the runs' rounding, first order).
    A claim without ``runs`` gives no rows. The paper's qualitative statements (its claim's
    verdict on its own runs) are added by :func:`bench.claims.paper_check_rows`.
    """
    cid = claim.get("id")
    runs_raw = claim.get("runs")
    if not runs_raw:
        return []
    versus_raw = claim.get("versus_runs")
    rows: list[dict[str, Any]] = []

    value_raw = claim.get("value")
    if value_raw is not None and not isinstance(value_raw, (list, dict)):
        stated = to_float(value_raw)
        if versus_raw and claim.get("kind") == "difference":

            def f(g: list[np.ndarray]) -> float:
                return float(np.mean(g[0]) - np.mean(g[1]))

            groups = [runs_raw, versus_raw]
            check, what = "difference of means", "mean of runs - mean of versus_runs"
        elif not versus_raw:

            def f(g: list[np.ndarray]) -> float:
                return float(np.mean(g[0]))

            groups = [runs_raw]
            check, what = "mean", f"mean of {len(runs_raw)} runs"
        else:
            groups = []
        if groups:
            arrs = [np.array([to_float(v) for v in g], dtype=float) for g in groups]
            rec = f(arrs)
            tol = half_unit(value_raw) + _rounding_spread(f, groups)
            rows.append(_row(cid, check, stated, rec, _close(stated, rec, tol),
                             f"{what}; tolerance +-{_fmt(tol)} (rounding)"))
    if claim.get("std") is not None:
        rows.append(_std_row(cid, "std", claim["std"], runs_raw))
    if claim.get("versus_std") is not None and versus_raw:
        rows.append(_std_row(cid, "versus std", claim["versus_std"], versus_raw))
    if claim.get("stated_p") is not None and versus_raw:
        rows.extend(_p_rows(cid, claim["stated_p"], runs_raw, versus_raw))
    return rows


def _p_rows(cid: Any, stated_raw: Any, runs_raw: Sequence[Any], versus_raw: Sequence[Any]
            ) -> list[dict[str, Any]]:
    stated = to_float(stated_raw)
    stated_h = half_unit(stated_raw)
    groups = [runs_raw, versus_raw]
    results = {}
    for name, f in (("p (paired t-test)", _paired_p), ("p (Welch t-test)", _welch_p)):
        arrs = [np.array([to_float(v) for v in g], dtype=float) for g in groups]
        results[name] = (f(arrs), stated_h + _rounding_spread(f, groups))
    matched = [k for k, (rec, tol) in results.items()
               if math.isfinite(rec) and _close(stated, rec, tol)]
    rows = []
    for name, (rec, tol) in results.items():
        if not math.isfinite(rec):
            why = (
                "needs equal numbers of method and versus runs (>= 2) with non-constant "
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


def _std_row(cid: Any, label: str, stated_raw: Any, runs_raw: Sequence[Any]) -> dict[str, Any]:
    stated = to_float(stated_raw)
    runs = np.array([to_float(v) for v in runs_raw], dtype=float)
    if runs.size < 2:
        return _row(cid, f"{label} (ddof=1)", stated, NAN, None, "needs >= 2 runs")
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
        exact = round(sample, k) == round(stated, k)
        how = ("matches the sample std" if exact else "matches the sample std only within "
               "rounding (the printed runs are rounded too)")
        return _row(cid, f"{label} (ddof=1)", stated, sample, True,
                    f"{how}, tolerance +-{_fmt(tol_s)}; {both}")
    if _close(stated, population, tol_p):
        return _row(cid, f"{label} (ddof=0)", stated, population, True,
                    f"matches the population std (ddof=0), not the sample std: the paper "
                    f"likely used ddof=0; {both}")
    return _row(cid, f"{label} (ddof=1)", stated, sample, False,
                f"matches neither the sample nor the population std of its runs "
                f"(tolerance +-{_fmt(tol_s)}); {both}")
