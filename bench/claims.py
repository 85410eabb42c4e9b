"""Claims and verdicts, in one place (docs/design.md, "Claims and verdicts").

A claims file (``bench/studies/<study>/claims.yaml``; format in docs/contracts.md "Claims") states the
paper's numbers and statements as claims of five kinds, each with a margin whose origin it
states. This module validates the files (structure, and names against the study, before any job
runs), evaluates every claim on a study's cells, and gives each (claim, group) one verdict:

``reproduced``
    value / range / difference / equivalence: TOST at alpha 0.05, i.e. the 90% t-interval of
    the reproduced quantity lies inside the band (paper value +- margin; for a difference, the
    band never crosses zero: a gain cannot be reproduced by its reversal). superiority: the
    one-sided paired t-test of gain > margin has p < 0.05 after Holm's correction over the
    study's primary superiority claims (unadjusted for a secondary claim).
``contradicted``
    the 95% t-interval lies wholly outside the band (superiority: wholly below the margin, i.e.
    the gain is reversed or smaller than the claim says): the one-sided p beyond the band's
    nearer edge is below 0.025, Holm-adjusted over the study's primary claims (unadjusted for a
    secondary claim). 95% rather than 90% so that a reproduction whose truth equals the paper's
    value is called contradicted at most 5% of the time, whatever the margin (2.5% per side).
``inconclusive (about N seeds needed to reproduce|to contradict)``
    neither; N is the number of seeds at which the test that the estimate points to (TOST inside
    the band, or the one-sided test outside it) would decide with power 0.8 at the observed
    seed-to-seed spread (statsmodels ``TTestPower``), and the words say which verdict it would
    reach. ``inconclusive (no seed-to-seed spread)``: every seed gives the same value of a
    measured metric (an accuracy moving in steps of one image), which no interval can decide.
``not testable (reason)``
    the cells are missing: the paper's setting is not in the run, a method is not in it, a
    metric was not measured, fewer than 2 seeds have a value, or the claim holds on a device
    class (``device: accelerator``) the cells did not run on (each result's provenance).
``withheld (mechanism check failed: ...)``
    a mechanism check the claim ``requires`` failed for its method (or versus) in that group
    (a study registers its checks with ``bench.checks.register_checks``; aggregation passes
    their rows, ``mechanism_checks.csv``, to :func:`claims_table`). A value or range claim of a
    method also needs the checks the file's other claims of that method require.
``check (consistent|inconsistent|...)``
    a claim marked ``check: <why>``: its paper value is computed from our own model (a
    modelled byte count), so agreement is a consistency check of the model, not a
    reproduction; decided by the same rule, never counted as reproduced, outside Holm.

A quantity declared ``deterministic: true`` (a parameter count, a modelled memory figure) with
no spread across seeds is decided exactly: inside the band reproduced, outside contradicted.
A measured metric with no spread is ``inconclusive (no seed-to-seed spread)``.

Dropped seeds (a NaN, a diverged or failed cell) are named in the reason; ``seeds_used`` lists
the seeds a verdict rests on.

The rule is calibrated by simulation (:func:`calibrate`; tests/test_claims.py,
docs/statistics.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.stats import t as sps_t

from bench import stats
from bench.checks import declared_checks, failures as check_failures
from bench.config import unique_key_loader
from bench.errors import ConfigError

ALPHA = 0.05  # TOST and one-sided tests; the 90% interval decides "reproduced"
CONTRADICT_LEVEL = 0.95  # the interval that decides "contradicted" (2.5% per side)
POWER = 0.8  # seeds_needed: power of the decisive test
MIN_SEEDS = 2  # fewer seeds with a value: not testable (no interval)

KINDS = ("value", "range", "difference", "superiority", "equivalence")
RELATIVE = ("difference", "superiority", "equivalence")  # compare method with versus
SCOPES = ("paper", "thesis")
GROUP = ("model", "dataset", "budget")
MARGIN_ORIGINS = ("from_runs", "from_std")

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
NOT_TESTABLE, WITHHELD = "not testable", "withheld"
CHECK = "check"  # a claim whose paper value comes from our own model: a consistency check

TOP_KEYS = ("study", "paper", "notes", "methods", "metrics", "claims")
CLAIM_KEYS = (
    "id", "description", "source", "note", "kind", "scope", "method", "versus", "over", "metric",
    "where", "value", "range", "margin", "margin_reason", "scale_by", "runs", "versus_runs",
    "std", "versus_std", "n_runs", "stated_p", "requires", "given", "not_testable",
    "range_rule", "deterministic", "check", "device",
)  # fmt: skip
RANGE_RULES = ("inside",)  # a range claim's rule (`range_rule`; default inside)
DEVICES = ("any", "accelerator", "cpu")  # `device`: the device class a claim holds on
# a rule that was removed, with why and what replaces it
REMOVED_RANGE_RULES = {
    "overlap": "it read reproduced about half the time with the truth at the range's edge "
               "(docs/statistics.md, 'Ranges'); leave range_rule out: a group's 90% CI must then "
               "lie inside the range (TOST), calibrated like every other kind",
}  # fmt: skip
REQUIRED = ("id", "source", "kind", "scope", "method", "metric", "margin")
REQUIRED_NOT_TESTABLE = ("id", "source", "kind", "scope", "description")
# keys of the earlier format, with what replaces them
REPLACED = {
    "tolerance": "a required `margin` (a number with `margin_reason`, or from_runs / from_std); "
                 "there is no default tolerance",
    "statistic": "the statement the p-value backs as a claim of its own kind (e.g. `kind: "
                 "equivalence`), with the paper's p as `stated_p`",
    "reference_runs": "`versus_runs`",
    "reference": "`versus`",
    "alpha": "nothing: alpha is 0.05 for every claim",
}  # fmt: skip

CLAIMS_COLUMNS = (
    "claim_id", "study", "kind", "scope", "method", "versus", "model", "dataset", "budget",
    "metric", "paper_value", "paper_low", "paper_high", "margin", "margin_origin", "estimate",
    "ci_low", "ci_high", "test", "p", "p_holm", "p_contradict", "p_contradict_holm", "n",
    "seeds_used", "seeds_needed", "verdict", "reason", "device", "description", "source",
)  # fmt: skip
PAPER_CHECKS_COLUMNS = ("claim_id", "check", "stated", "recomputed", "consistent", "note")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# --------------------------------------------------------------------------------------------
# loading and validating a claims file (structure; names are checked by check_against_study)


def load_claims(path: str | Path | None) -> dict | None:
    """Read and validate a claims file; a missing file (or None) -> None (no claims)."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return None
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _LOADED:
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e}); fix the claims file") from None
        validate_claims(doc, str(path))
        _LOADED[key] = doc
    return copy.deepcopy(_LOADED[key])


# libyaml's loader when present (10x faster: the config check reads every claims file)
_YAML_LOADER = unique_key_loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # no key twice
_LOADED: dict[tuple[str, int, int], dict] = {}  # validated files by (path, mtime, size)


def validate_claims(doc: Any, name: str = "claims") -> None:
    """Raise ConfigError naming the file, the claim and the fix for anything outside the
    format (docs/contracts.md "Claims")."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: the top level must be a mapping with a 'claims' list")
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{name}: unknown top-level keys {unknown}; accepted: {list(TOP_KEYS)}")
    for key in ("methods", "metrics"):
        v = doc.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise ConfigError(f"{name}: top-level '{key}' must be a list of names")
    claims = doc.get("claims")
    if claims is None:
        doc["claims"] = claims = []
    if not isinstance(claims, list):
        raise ConfigError(f"{name}: 'claims' must be a list of claims")
    ids: dict[str, Mapping] = {}
    for i, c in enumerate(claims):
        where = f"{name}: claim #{i + 1}"
        if not isinstance(c, dict):
            raise ConfigError(f"{where}: must be a mapping")
        if "id" in c:
            where = f"{name}: claim {c['id']!r}"
        _validate_claim(c, where)
        if c["id"] in ids:
            raise ConfigError(f"{where}: duplicate claim id; ids must be unique")
        ids[c["id"]] = c
    for c in claims:
        for g in c.get("given") or []:
            where = f"{name}: claim {c['id']!r}"
            if g not in ids or g == c["id"]:
                raise ConfigError(f"{where}: given {g!r} is not another claim of this file; "
                                  f"name a claim id (ids: {', '.join(map(str, ids))})")
            if ids[g].get("check") is not None:
                raise ConfigError(f"{where}: given {g!r} is a check of our own model, not a "
                                  "reproduction; a guard must be a claim that can read "
                                  "reproduced")
            if ids[g].get("given"):
                raise ConfigError(f"{where}: given {g!r} has a 'given' of its own; guards do not "
                                  "chain: name the guards of {g!r} here too")


def _number(c: Mapping, key: str, where: str, *, minimum: float | None = None) -> float:
    try:
        x = stats.to_float(c[key])
        stats.decimals(c[key])
    except ValueError as e:
        raise ConfigError(f"{where}: '{key}' {e}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {c[key]!r}; "
                          f"{_FINITE_FIX}")
    if minimum is not None and x < minimum:
        raise ConfigError(f"{where}: '{key}' must be >= {minimum:g}, got {c[key]!r}")
    return x


def _numbers(c: Mapping, key: str, where: str, min_len: int = 1) -> None:
    v = c[key]
    if not isinstance(v, list) or len(v) < min_len:
        raise ConfigError(f"{where}: '{key}' must be a list of at least {min_len} numbers")
    for x in v:
        try:
            if math.isnan(stats.to_float(x)):
                raise ValueError(f"expected a number, got {x!r}")
            stats.decimals(x)
        except ValueError as e:
            raise ConfigError(f"{where}: '{key}': {e}") from None
        if not math.isfinite(stats.to_float(x)):
            raise ConfigError(f"{where}: '{key}': {x!r} is not a finite number; {_FINITE_FIX}")


# every number of a claims file is finite: an infinite margin, range end or std makes a band
# that any data fall inside (a verdict decided by the file, not by the runs)
_FINITE_FIX = ("state the paper's number (an open-ended statement such as 'at least 2x' is a "
               "superiority claim with `over`, not an infinite range end)")


def _names(v: Any) -> list[str]:
    return [str(x) for x in (v if isinstance(v, list) else [v])]


def _validate_claim(c: Mapping, where: str) -> None:
    unknown = sorted(set(c) - set(CLAIM_KEYS))
    if unknown:
        hints = "; ".join(f"'{k}' is replaced by {REPLACED[k]}" for k in unknown if k in REPLACED)
        raise ConfigError(f"{where}: unknown keys {unknown}" + (f" ({hints})" if hints else "")
                          + f"; accepted keys: {list(CLAIM_KEYS)}")
    not_testable = c.get("not_testable") is not None
    required = REQUIRED_NOT_TESTABLE if not_testable else REQUIRED
    missing = [k for k in required if c.get(k) in (None, "")]
    if missing:
        fix = ("; every claim states its margin: a number with `margin_reason`, or from_runs / "
               "from_std (docs/contracts.md, Claims)") if "margin" in missing else ""
        raise ConfigError(f"{where}: missing required keys {missing}{fix}")
    if c["kind"] not in KINDS:
        raise ConfigError(f"{where}: kind {c['kind']!r} unknown; kinds: {list(KINDS)}")
    if c["scope"] not in SCOPES:
        raise ConfigError(f"{where}: scope {c['scope']!r} unknown; scopes: {list(SCOPES)}")
    kind = c["kind"]
    if not_testable and (not isinstance(c["not_testable"], str)
                         or not c["not_testable"].strip()):
        raise ConfigError(f"{where}: 'not_testable' must say why, e.g. 'not implemented'")
    # what the paper states
    if kind == "range":
        r = c.get("range")
        if not isinstance(r, list) or len(r) != 2:
            raise ConfigError(f"{where}: a range claim needs 'range: [low, high]'")
        _numbers(c, "range", where)
        if stats.to_float(r[0]) > stats.to_float(r[1]):
            raise ConfigError(f"{where}: 'range' low {r[0]} is above high {r[1]}")
        if c.get("value") is not None:
            raise ConfigError(f"{where}: a range claim states 'range', not 'value'")
        if c.get("range_rule") in REMOVED_RANGE_RULES:
            raise ConfigError(f"{where}: range_rule {c['range_rule']!r} was removed: "
                              f"{REMOVED_RANGE_RULES[c['range_rule']]}")
        if c.get("range_rule", "inside") not in RANGE_RULES:
            raise ConfigError(f"{where}: range_rule {c['range_rule']!r} unknown; rules: "
                              f"{list(RANGE_RULES)}")
    elif c.get("range") is not None:
        raise ConfigError(f"{where}: 'range' belongs to kind range; this claim is kind {kind}")
    elif c.get("range_rule") is not None:
        raise ConfigError(f"{where}: 'range_rule' belongs to kind range; this claim is {kind}")
    if kind in ("value", "difference") and c.get("value") is None:
        raise ConfigError(f"{where}: a {kind} claim needs 'value' (the paper's number"
                          + (", method - versus" if kind == "difference" else "") + ")")
    if c.get("value") is not None:
        _number(c, "value", where)
    # what it compares
    if kind in RELATIVE:
        if kind == "superiority" and (c.get("versus") is None) == (c.get("over") is None):
            raise ConfigError(f"{where}: a superiority claim names exactly one of 'versus' (a "
                              "method of the study) and 'over' (a constant, e.g. a speed-up of 1)")
        if kind != "superiority" and c.get("versus") is None and not not_testable:
            raise ConfigError(f"{where}: a {kind} claim needs 'versus' (the method it is "
                              "compared with, paired by seed)")
        if c.get("over") is not None and kind != "superiority":
            raise ConfigError(f"{where}: 'over' is for superiority claims only")
        if c.get("over") is not None:
            _number(c, "over", where)
        if c.get("versus") is not None and str(c["versus"]) == str(c.get("method")):
            raise ConfigError(f"{where}: versus is the method itself; name another method")
    else:
        for k in ("versus", "over", "versus_runs", "versus_std"):
            if c.get(k) is not None:
                raise ConfigError(f"{where}: '{k}' is for claims that compare two methods "
                                  f"({', '.join(RELATIVE)}); this claim is kind {kind}")
    # per-run numbers
    for k in ("runs", "versus_runs"):
        if c.get(k) is not None:
            _numbers(c, k, where)
    for k in ("std", "versus_std"):
        if c.get(k) is not None:
            _number(c, k, where, minimum=0)
    n_runs = c.get("n_runs")
    if n_runs is not None and (isinstance(n_runs, bool) or not isinstance(n_runs, int)
                               or n_runs < 2):
        raise ConfigError(f"{where}: 'n_runs' must be the paper's number of runs (>= 2)")
    if c.get("stated_p") is not None:
        _number(c, "stated_p", where, minimum=0)
        if c.get("runs") is None or c.get("versus_runs") is None:
            raise ConfigError(f"{where}: 'stated_p' needs 'runs' and 'versus_runs' to recompute "
                              "the paper's test")
    if not not_testable or c.get("margin") is not None:
        _validate_margin(c, where)
    # where, scale_by, requires, given
    w = c.get("where")
    if w is not None:
        if not isinstance(w, dict):
            raise ConfigError(f"{where}: 'where' must be a mapping of {list(GROUP)}")
        unknown = sorted(set(w) - set(GROUP))
        if unknown:
            raise ConfigError(f"{where}: unknown 'where' keys {unknown}; accepted: {list(GROUP)}")
        for k, v in w.items():
            vals = v if isinstance(v, list) else [v]
            if not vals or any(x is None or isinstance(x, (list, dict, bool)) for x in vals):
                raise ConfigError(f"{where}: where.{k} must be a name or number, or a list of "
                                  f"them (got {v!r}); leave the key out to match every value")
    if c["scope"] == "paper" and not not_testable:
        missing = [k for k in GROUP if k not in (w or {})]
        if missing:
            raise ConfigError(f"{where}: a scope: paper claim is tested only at the paper's "
                              f"setting; pin it with where.{', where.'.join(missing)} (or make "
                              "it scope: thesis if it holds at any scale)")
    if c.get("scale_by") is not None:
        if kind not in ("value", "difference", "equivalence"):
            raise ConfigError(f"{where}: 'scale_by' is for value, difference and equivalence "
                              "claims")
        if not isinstance(c.get("margin"), (int, float)) or isinstance(c.get("margin"), bool):
            raise ConfigError(f"{where}: with 'scale_by' the margin is a number in the same "
                              "units (the paper's runs are in other units)")
    if c.get("deterministic") is not None and not isinstance(c["deterministic"], bool):
        raise ConfigError(f"{where}: 'deterministic' must be true or false (true: the quantity "
                          "is computed without randomness, e.g. a parameter count or a modelled "
                          "byte count, so a result with no seed-to-seed spread is decided exactly)")
    if c.get("check") is not None and (not isinstance(c["check"], str)
                                       or not c["check"].strip()):
        raise ConfigError(f"{where}: 'check' must say why the claim is a consistency check, not a "
                          "reproduction (e.g. 'the paper value is computed from our own memory "
                          "model')")
    if c.get("device") is not None and c["device"] not in DEVICES:
        raise ConfigError(f"{where}: device {c['device']!r} unknown; the device class the claim "
                          f"holds on is one of {list(DEVICES)} (e.g. accelerator for a speed "
                          "claim made for GPUs)")
    for key in ("requires", "given"):
        v = c.get(key)
        if v is not None and (not isinstance(v, list) or not v
                              or not all(isinstance(x, str) and x for x in v)):
            raise ConfigError(f"{where}: '{key}' must be a list of names")


def _validate_margin(c: Mapping, where: str) -> None:
    m, kind = c.get("margin"), c["kind"]
    if isinstance(m, str) and m in MARGIN_ORIGINS:
        if kind in ("range", "superiority"):
            raise ConfigError(
                f"{where}: margin {m} is a band around a paper's number; a {kind} claim states "
                "its margin as a number with `margin_reason` (e.g. 0 with the reason)")
        relative = kind in RELATIVE
        if m == "from_runs":
            need = ["runs"] + (["versus_runs"] if relative else [])
            for k in need:
                if c.get(k) is None or len(c[k]) < 2:
                    raise ConfigError(f"{where}: margin from_runs needs the paper's per-run values "
                                      f"in '{k}' (at least 2), or give from_std or a number")
        else:
            need = ["std", "n_runs"] + (["versus_std"] if relative else [])
            missing = [k for k in need if c.get(k) is None]
            if missing:
                raise ConfigError(f"{where}: margin from_std needs {missing} (the paper's stated "
                                  "std and its number of runs), or give from_runs or a number")
        if c.get("margin_reason") is not None:
            raise ConfigError(f"{where}: margin {m} carries its origin; 'margin_reason' is for "
                              "an explicit number")
        return
    if isinstance(m, bool) or isinstance(m, str) and m not in MARGIN_ORIGINS:
        try:
            stats.to_float(m)
        except ValueError:
            raise ConfigError(f"{where}: margin {m!r} must be a number, from_runs or from_std"
                              ) from None
    # A superiority claim's margin may be negative: method - versus > -m is non-inferiority
    # ("maintains accuracy": not more than m worse), the reading a guard against a worse method
    # needs; a better method must not fail it, as it would an equivalence band.
    x = _number(c, "margin", where, minimum=None if kind == "superiority" else 0)
    if x == 0 and kind in ("value", "difference", "equivalence"):
        raise ConfigError(f"{where}: a {kind} claim needs a margin > 0 (no finite number of seeds "
                          "can show a mean equal to a number exactly); state the difference that "
                          "still counts as the same")
    reason = c.get("margin_reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError(f"{where}: margin {c['margin']} needs 'margin_reason': one line on "
                          "where the number comes from")


def claim_margin(c: Mapping) -> tuple[float, str]:
    """(margin in the metric's units, its origin in words) of a validated claim; with
    ``scale_by`` the margin is in units of that metric (scaled per group when evaluated)."""
    m = c.get("margin")
    relative = c["kind"] in RELATIVE
    if m == "from_runs":
        runs = [stats.to_float(v) for v in c["runs"]]
        if relative:
            vr = [stats.to_float(v) for v in c["versus_runs"]]
            half, df = stats.welch_halfwidth(float(np.std(runs, ddof=1)), len(runs),
                                             float(np.std(vr, ddof=1)), len(vr))
            return half, (f"from_runs: 95% Welch half-width of the paper's difference of means "
                          f"({len(runs)} vs {len(vr)} runs, df {df:.2f})")
        sd = float(np.std(runs, ddof=1))
        return stats.mean_halfwidth(sd, len(runs)), (
            f"from_runs: 95% t half-width of the paper's mean of {len(runs)} runs "
            f"(sample std {_fmt(sd)})")
    if m == "from_std":
        n = int(c["n_runs"])
        sd = stats.to_float(c["std"])
        if relative:
            sv = stats.to_float(c["versus_std"])
            half, df = stats.welch_halfwidth(sd, n, sv, n)
            return half, (f"from_std: 95% Welch half-width of the paper's difference of means "
                          f"(stds {_fmt(sd)} and {_fmt(sv)}, {n} runs each, df {df:.2f})")
        return stats.mean_halfwidth(sd, n), (
            f"from_std: 95% t half-width of the paper's mean (std {_fmt(sd)}, {n} runs)")
    return stats.to_float(m), f"explicit: {c['margin_reason']}"


# --------------------------------------------------------------------------------------------
# checking a claims file against the study it belongs to


def harness_metrics() -> set[str]:
    """Metric names every study's cells can carry (cells.csv columns of the harness)."""
    from bench import aggregate
    from bench.metrics import EVAL_METRICS

    return {
        *aggregate.FINAL_FIRST, *aggregate.MEMORY_COLUMNS, *aggregate.COMPUTE_COLUMNS,
        *aggregate.TIMING_COLUMNS, *aggregate.SUMMARY_EXTRA, *EVAL_METRICS,
        "speedup_vs_reference", "epochs",
    }  # fmt: skip


def check_against_study(doc: Mapping, study: str, study_cfg: Mapping, name: str) -> list[str]:
    """Problems of a validated claims file against its study: every method, metric, group and
    mechanism check a claim names must exist. Returns messages naming the claim and the fix."""
    from bench.config import parse_budget
    from bench.data import DATASETS
    from bench.methods import METHODS
    from bench.models import MODELS

    problems = []
    if doc.get("study") is not None and str(doc["study"]) != study:
        problems.append(f"{name}: the file is for study {doc['study']!r}, not {study!r}; set "
                        f"'study: {study}' or move the file")
    run_methods = list(study_cfg.get("methods") or [])
    declared = list(doc.get("methods") or [])
    methods = set(run_methods) | set(declared) | set(METHODS.names())
    metrics = (set(study_cfg.get("metrics") or []) | set(doc.get("metrics") or [])
               | set((study_cfg.get("evaluation") or {}).get("metrics") or []) | harness_metrics())
    from bench import studies

    studies.load_checks()
    checks = declared_checks(study)
    for c in doc.get("claims") or []:
        where = f"{name}: claim {c['id']!r}"
        for key in ("method", "versus"):
            v = c.get(key)
            if v is not None and str(v) not in methods:
                problems.append(
                    f"{where}: {key} {v!r} is not a method of study {study} (its methods: "
                    f"{', '.join(run_methods)}; registered: {', '.join(METHODS.names())}); fix "
                    f"the name, or list the paper's method under the file's top-level 'methods:'")
        for key in ("metric", "scale_by"):
            v = c.get(key)
            if v is not None and str(v) not in metrics:
                problems.append(
                    f"{where}: {key} {v!r} is not a metric of study {study} (its metrics: "
                    f"{', '.join(study_cfg.get('metrics') or [])}; or a harness column such as "
                    f"val_acc, modelled_peak_mib, speedup_vs_reference); fix the name, or list a "
                    f"metric the study's methods report under the file's top-level 'metrics:'")
        w = c.get("where") or {}
        for axis, registry, members in (("model", MODELS, study_cfg.get("models") or []),
                                        ("dataset", DATASETS, study_cfg.get("datasets") or [])):
            for v in _names(w[axis]) if axis in w else []:
                if v not in registry and v not in members:
                    problems.append(f"{where}: where.{axis}: {registry.unknown_message(v)}")
        for v in _names(w["budget"]) if "budget" in w else []:
            try:
                parse_budget(v)
            except ConfigError as e:
                problems.append(f"{where}: where.budget: {e}")
        for check in c.get("requires") or []:
            if check not in checks:
                problems.append(
                    f"{where}: requires mechanism check {check!r}, which study {study} does not "
                    f"declare (declared: {', '.join(checks) or 'none'}); fix the name, or name "
                    f"the check in @register_checks({study!r}, ...) in its checks.py")
    return problems


def check_claims_file(path: str | Path, study: str, study_cfg: Mapping) -> list[str]:
    """All problems of a study's claims file (format and names); [] when it has none or
    there is no file. Called by bench.config.check_config, before any job runs."""
    try:
        doc = load_claims(path)
    except ConfigError as e:
        return [str(e)]
    if doc is None:
        return []
    return check_against_study(doc, study, study_cfg, str(path))


# --------------------------------------------------------------------------------------------
# the decision (vectorised: one column per simulated reproduction in the calibration)


@dataclass
class Decision:
    """The numbers behind a verdict, one entry per column of the sample: ``code`` 0 reproduced,
    1 contradicted, 2 inconclusive; ``estimate`` and the 90% interval of the claim's quantity;
    ``p`` the decisive test's p (TOST, or one-sided for superiority); ``p_contra`` the p of the
    test that decides `contradicted` (one-sided, beyond the band's nearer edge: < 0.025 exactly
    when the 95% interval lies wholly outside); ``exact``: no spread (decided exactly when the
    claim declares its quantity deterministic); ``no_spread``: no spread in a measured
    quantity, which no interval can decide (inconclusive)."""

    code: np.ndarray
    estimate: np.ndarray
    sd: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    ci95_low: np.ndarray
    ci95_high: np.ndarray
    p: np.ndarray
    exact: np.ndarray
    p_contra: np.ndarray
    no_spread: np.ndarray


def _spreadless(sample: np.ndarray, *arrays: Any) -> np.ndarray:
    """Columns whose spread is zero or float noise (1e-12 of the largest value)."""
    scale = np.max(np.abs(sample), axis=0)
    for a in arrays:
        if a is not None:
            scale = np.maximum(scale, np.max(np.abs(np.asarray(a, dtype=float)), axis=0))
    sd = sample.std(axis=0, ddof=1)
    return sd <= 1e-12 * np.maximum(scale, 1e-300)


def _intervals(sample: np.ndarray) -> tuple[np.ndarray, ...]:
    mean, sd, lo90, hi90 = stats.t_interval(sample, 1 - 2 * ALPHA)
    _, _, lo95, hi95 = stats.t_interval(sample, CONTRADICT_LEVEL)
    return mean, sd, lo90, hi90, lo95, hi95


def _t_cdf(mean: np.ndarray, sd: np.ndarray, n: int, edge: float) -> np.ndarray:
    """P(T <= t) of the one-sample t statistic of mean - edge (a one-sided p below ``edge``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean - edge) / (sd / math.sqrt(n))
    return np.asarray(sps_t.cdf(t, n - 1)) if n >= 2 else np.full(np.shape(mean), np.nan)


def _finish(code_rep: np.ndarray, code_con: np.ndarray, mean, sd, lo90, hi90, lo95, hi95,
            p, p_contra, exact, decide_exact: bool, exact_pass: np.ndarray) -> Decision:
    """Combine the tested decision with the spreadless columns: decided exactly where the
    quantity is declared deterministic, inconclusive (no interval) where it is measured."""
    no_spread = exact & (not decide_exact)
    exact = exact & decide_exact
    reproduced = np.where(exact, exact_pass, code_rep & ~no_spread)
    contradicted = np.where(exact, ~exact_pass, code_con & ~no_spread)
    p = np.where(exact, np.where(exact_pass, 0.0, 1.0), np.where(no_spread, np.nan, p))
    p_contra = np.where(exact, np.where(exact_pass, 1.0, 0.0),
                        np.where(no_spread, np.nan, p_contra))
    code = np.where(reproduced, 0, np.where(contradicted, 1, 2))
    flat = exact | no_spread
    return Decision(code, mean, sd, np.where(flat, mean, lo90), np.where(flat, mean, hi90),
                    np.where(flat, mean, lo95), np.where(flat, mean, hi95), p, exact, p_contra,
                    no_spread)


def decide_band(x: Any, low: float, high: float, versus: Any = None, *,
                deterministic: bool = False, p_contra_decide: Any = None) -> Decision:
    """value / range / difference / equivalence: is mean(x - versus) inside [low, high]?

    reproduced: TOST p < 0.05 (the 90% interval inside); contradicted: the one-sided p beyond
    the nearer edge < 0.025, i.e. the 95% interval wholly outside (``p_contra_decide``: the
    Holm-adjusted p the caller decides on instead). Spreadless columns: decided exactly
    (inside or outside) when ``deterministic``, else inconclusive. x (and versus): (n,) or
    (n, R).
    """
    x = np.asarray(x, dtype=float)
    v = None if versus is None else np.asarray(versus, dtype=float)
    sample = x if v is None else x - v
    n = sample.shape[0]
    mean, sd, lo90, hi90, lo95, hi95 = _intervals(sample)
    p = stats.tost_p(x, low, high, v)
    below = _t_cdf(mean, sd, n, low)  # p of "mean < low"
    above = 1.0 - _t_cdf(mean, sd, n, high)  # p of "mean > high"
    p_contra = np.minimum(below, above)
    pc = p_contra if p_contra_decide is None else np.asarray(p_contra_decide, dtype=float)
    exact = _spreadless(sample, x, v)
    inside = (mean >= low) & (mean <= high)
    return _finish(p < ALPHA, pc < (1 - CONTRADICT_LEVEL) / 2, mean, sd, lo90, hi90, lo95, hi95,
                   p, p_contra, exact, deterministic, inside)


def decide_greater(x: Any, margin: float, versus: Any = None, over: float = 0.0,
                   p_decide: Any = None, *, deterministic: bool = False,
                   p_contra_decide: Any = None) -> Decision:
    """superiority: is mean(x - versus) (or mean(x) - over) above ``margin``?

    p: one-sided t-test (scipy ttest_rel / ttest_1samp, alternative 'greater'); reproduced when
    ``p_decide`` (default p; the caller passes the Holm-adjusted p) < 0.05; contradicted when
    the one-sided p of "below the margin" (``p_contra_decide``, default unadjusted) < 0.025,
    i.e. the 95% interval lies wholly below the margin (the gain reversed, or smaller than
    claimed). Spreadless columns: exact when ``deterministic``, else inconclusive.
    """
    x = np.asarray(x, dtype=float)
    v = None if versus is None else np.asarray(versus, dtype=float)
    sample = (x if v is None else x - v) - over
    n = sample.shape[0]
    mean, sd, lo90, hi90, lo95, hi95 = _intervals(sample)
    p = stats.greater_p(x, margin + over, v)
    p_contra = _t_cdf(mean, sd, n, margin)
    exact = _spreadless(sample, x, v)
    pd_ = p if p_decide is None else np.asarray(p_decide, dtype=float)
    pc = p_contra if p_contra_decide is None else np.asarray(p_contra_decide, dtype=float)
    return _finish(pd_ < ALPHA, pc < (1 - CONTRADICT_LEVEL) / 2, mean, sd, lo90, hi90, lo95,
                   hi95, p, p_contra, exact, deterministic, mean > margin)


def claim_band(kind: str, value: float, margin: float, rng: Sequence[float] | None = None
               ) -> tuple[float, float]:
    """The band a reproduced quantity must lie in: value +- margin; a range widened by the
    margin; equivalence [-margin, margin]. A difference's band stops at zero on the paper's
    side: a reversed gain is never 'the same gain'."""
    if kind == "range":
        assert rng is not None
        return rng[0] - margin, rng[1] + margin
    if kind == "equivalence":
        return -margin, margin
    low, high = value - margin, value + margin
    if kind == "difference":
        if value > 0:
            low = max(low, 0.0)
        elif value < 0:
            high = min(high, 0.0)
    return low, high


# --------------------------------------------------------------------------------------------
# evaluating a claims file on a study's cells


def _ok_values(cells: Any, metric: str) -> np.ndarray:
    import pandas as pd

    if metric not in cells.columns:
        return np.full(len(cells), np.nan)
    vals = pd.to_numeric(cells[metric], errors="coerce").astype(float)
    return vals.where(cells["status"] == "ok").to_numpy()


def _budget_key(b: str) -> tuple:
    from bench.aggregate import budget_key

    return budget_key(b)


def _match(where: Mapping, group: Mapping[str, str]) -> bool:
    return all(str(group[k]) in _names(v) for k, v in where.items())


def _group_text(g: Mapping[str, str]) -> str:
    return "/".join(str(g[k]) for k in GROUP)


def _seed_map(cells: Any, idx: np.ndarray, values: np.ndarray) -> dict[int, float]:
    seeds = cells["seed"].to_numpy()
    return {int(seeds[i]): float(values[i]) for i in idx}


class _Cells:
    """Index of a study's cells by (method, model, dataset, budget)."""

    def __init__(self, cells: Any) -> None:
        self.cells = cells
        self.groups: dict[tuple[str, str, str, str], np.ndarray] = {}
        if not cells.empty:
            keys = ["method", *GROUP]
            for key, idx in cells.groupby(keys, sort=False, dropna=False).indices.items():
                self.groups[tuple(str(k) for k in key)] = np.sort(idx)
        self.methods = {k[0] for k in self.groups}
        self._values: dict[str, np.ndarray] = {}

    def values(self, metric: str) -> np.ndarray:
        if metric not in self._values:
            self._values[metric] = _ok_values(self.cells, metric)
        return self._values[metric]

    def group_keys(self, method: str) -> list[dict[str, str]]:
        return [dict(zip(GROUP, k[1:])) for k in self.groups if k[0] == method]

    def resolve(self, method: str, g: Mapping[str, str]) -> tuple[np.ndarray | None, bool]:
        """The method's cells in group g, else at budget none (a method that ignores the
        budget axis is run once); (idx, used_none)."""
        idx = self.groups.get((method, g["model"], g["dataset"], g["budget"]))
        if idx is not None:
            return idx, False
        idx = self.groups.get((method, g["model"], g["dataset"], "none"))
        return idx, idx is not None


def _sorted_groups(groups: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    uniq = {tuple(g[k] for k in GROUP): dict(g) for g in groups}
    return [uniq[k] for k in sorted(uniq, key=lambda k: (k[0], k[1], _budget_key(k[2])))]


def primary_endpoints(doc: Mapping | None, study_cfg: Mapping | None = None) -> list[str]:
    """The study's primary endpoints: ``primary_endpoints`` of its config, else the metrics of
    its thesis claims (the statements its argument rests on)."""
    declared = (study_cfg or {}).get("primary_endpoints")
    if declared:
        return list(declared)
    out: dict[str, None] = {}
    for c in (doc or {}).get("claims") or []:
        if c.get("scope") == "thesis" and c.get("not_testable") is None and c.get("metric"):
            out[str(c["metric"])] = None
    return list(out)


def claim_comparisons(doc: Mapping | None) -> list[tuple[str, str, str]]:
    """(method, versus, metric) of every claim that compares two methods."""
    out: dict[tuple[str, str, str], None] = {}
    for c in (doc or {}).get("claims") or []:
        if c.get("kind") in RELATIVE and c.get("versus") is not None and c.get("metric"):
            out[(str(c["method"]), str(c["versus"]), str(c["metric"]))] = None
    return list(out)


def _base_row(c: Mapping, study: str) -> dict[str, Any]:
    value = c.get("value")
    rng = c.get("range")
    versus = c.get("versus")
    if versus is None and c.get("over") is not None:
        versus = f"constant {_fmt(stats.to_float(c['over']))}"
    return {
        "claim_id": c["id"], "study": study, "kind": c["kind"], "scope": c["scope"],
        "method": c.get("method"), "versus": versus, "metric": c.get("metric"),
        "model": None, "dataset": None, "budget": None,
        "paper_value": stats.to_float(value) if value is not None else np.nan,
        "paper_low": stats.to_float(rng[0]) if rng else np.nan,
        "paper_high": stats.to_float(rng[1]) if rng else np.nan,
        "margin": np.nan, "margin_origin": None, "estimate": np.nan, "ci_low": np.nan,
        "ci_high": np.nan, "test": None, "p": np.nan, "p_holm": np.nan,
        "p_contradict": np.nan, "p_contradict_holm": np.nan, "n": 0, "seeds_used": None,
        "seeds_needed": None, "verdict": None, "reason": None, "device": None,
        "description": c.get("description"), "source": c.get("source"),
    }  # fmt: skip


def _not_testable(row: dict, reason: str) -> dict:
    row["verdict"] = f"{NOT_TESTABLE} ({reason})"
    return row


def _claim_groups(c: Mapping, idx: _Cells, run_methods: Sequence[str]
                  ) -> tuple[list[dict[str, str]], str | None]:
    """The groups a claim is evaluated at, or [] and the reason it is not testable."""
    sides = [str(c["method"])] + ([str(c["versus"])] if c.get("versus") is not None else [])
    for m in sides:
        if m not in idx.methods:
            if run_methods and m not in run_methods:
                return [], f"method {m} not in this run"
            return [], f"no cells of method {m}"
    where = c.get("where") or {}
    candidates = _sorted_groups(g for m in sides for g in idx.group_keys(m))
    groups = []
    for g in candidates:
        if not _match(where, g):
            continue
        if all(idx.resolve(m, g)[0] is not None for m in sides):
            # a budget-none group that only exists as the other side's fallback is not a group
            if g["budget"] == "none" and any(
                (m, g["model"], g["dataset"], "none") not in idx.groups for m in sides
            ):
                continue
            groups.append(g)
    if groups:
        return groups, None
    run = ", ".join(_group_text(g) for g in candidates) or "none"
    if c["scope"] == "paper":
        setting = "/".join("|".join(_names(where[k])) for k in GROUP)
        return [], f"the paper's setting {setting} is not in this run; its groups: {run}"
    if where:
        wanted = ", ".join(f"{k}={'|'.join(_names(v))}" for k, v in where.items())
        return [], f"no group with {wanted} in this run; its groups: {run}"
    return [], f"no group where {' and '.join(sides)} both have cells"


def device_class(device: Any) -> str | None:
    """The class of a result's provenance device ('cpu' -> cpu, 'cuda:0' / 'mps' -> accelerator);
    None when the result does not record it."""
    if device is None or (isinstance(device, float) and math.isnan(device)):
        return None
    text = str(device).strip().lower()
    if not text:
        return None
    return "cpu" if text.split(":")[0] == "cpu" else "accelerator"


def _devices(cells: Any, idx: Iterable[int]) -> list[Any]:
    if "device" not in getattr(cells, "columns", ()):
        return [None for _ in idx]
    col = cells["device"].to_numpy()
    return [col[i] for i in idx]


def _device_refusal(c: Mapping, devices: Sequence[Any]) -> str | None:
    """Why a claim that holds on one device class cannot be judged on these cells, or None."""
    need = c.get("device") or "any"
    if need == "any":
        return None
    classes = {device_class(d) for d in devices}
    if classes == {need}:
        return None
    seen = ", ".join(sorted({str(d) for d in devices if device_class(d) is not None})) \
        or "a device the results do not record"
    what = "an accelerator" if need == "accelerator" else "a CPU"
    return f"needs {what}; these cells ran on {seen}"


def _dropped_note(cells: Any, side: str, idx: np.ndarray, x_map: Mapping[int, float],
                  metric: str) -> list[str]:
    """The seeds of one side with no value, each with why (its status, or no value)."""
    seeds = cells["seed"].to_numpy()
    status = cells["status"].to_numpy() if "status" in cells.columns else None
    out = []
    for i in idx:
        s = int(seeds[i])
        if not math.isfinite(x_map[s]):
            st = str(status[i]) if status is not None else "ok"
            out.append(f"seed {s} ({side}: {st if st != 'ok' else 'no value of ' + metric})")
    return out


def _evaluate_group(c: Mapping, g: Mapping[str, str], idx: _Cells, row: dict,
                    margin: float) -> Decision | None:
    """Fill the row's numbers for one group; returns the decision, or None (not testable)."""
    metric = str(c["metric"])
    if metric not in idx.cells.columns:
        _not_testable(row, f"metric {metric} not in the results")
        return None
    vals = idx.values(metric)
    m_idx, m_none = idx.resolve(str(c["method"]), g)
    assert m_idx is not None
    notes = []
    if m_none and g["budget"] != "none":
        notes.append(f"{c['method']} at budget none")
    x_map = _seed_map(idx.cells, m_idx, vals)
    v_map, v_idx = None, None
    if c.get("versus") is not None:
        v_idx, v_none = idx.resolve(str(c["versus"]), g)
        assert v_idx is not None
        if v_none and g["budget"] != "none":
            notes.append(f"{c['versus']} at budget none")
        v_map = _seed_map(idx.cells, v_idx, vals)
        if set(x_map) != set(v_map):
            raise stats.SeedMismatchError(
                f"claim {c['id']!r}, group {_group_text(g)}: {c['method']} has seeds "
                f"{sorted(x_map)} but {c['versus']} has {sorted(v_map)}; run the missing cells "
                "or remove them")
    used = [*m_idx, *([] if v_idx is None else v_idx)]
    devices = _devices(idx.cells, used)
    row["device"] = ", ".join(sorted({str(d) for d in devices if device_class(d) is not None})) \
        or None
    refusal = _device_refusal(c, devices)
    if refusal:
        _not_testable(row, refusal)
        return None
    seeds = sorted(k for k in x_map if math.isfinite(x_map[k])
                   and (v_map is None or math.isfinite(v_map[k])))
    row["n"] = len(seeds)
    row["seeds_used"] = ",".join(str(s) for s in seeds) or None
    dropped = _dropped_note(idx.cells, str(c["method"]), m_idx, x_map, metric)
    if v_map is not None:
        dropped += _dropped_note(idx.cells, str(c["versus"]), v_idx, v_map, metric)
    if dropped:
        notes.append(f"decided on {len(seeds)} of {len(x_map)} seeds: dropped "
                     + ", ".join(dropped))
    if len(seeds) < MIN_SEEDS:
        have = "no value" if not seeds else f"{len(seeds)} value"
        why = f"; dropped {', '.join(dropped)}" if dropped else ""
        _not_testable(row, f"{have} of {metric} in ok cells here; need >= {MIN_SEEDS} seeds{why}")
        return None
    x = np.array([x_map[s] for s in seeds])
    v = None if v_map is None else np.array([v_map[s] for s in seeds])
    kind = c["kind"]
    scale = 1.0
    if c.get("scale_by") is not None:
        sv = idx.values(str(c["scale_by"]))[m_idx]
        sv = sv[np.isfinite(sv)]
        if not sv.size:
            _not_testable(row, f"no value of {c['scale_by']} (scale_by) in ok cells here")
            return None
        scale = float(sv.mean())
        notes.append(f"value and margin in units of {c['scale_by']} = {_fmt(scale)}")
    margin *= scale
    row["margin"] = margin
    if c.get("value") is not None:
        row["paper_value"] = stats.to_float(c["value"]) * scale
    det = bool(c.get("deterministic"))
    if kind == "superiority":
        over = stats.to_float(c["over"]) if c.get("over") is not None else 0.0
        d = decide_greater(x, margin, v, over, deterministic=det)
        row["test"] = ("one-sided one-sample t-test (scipy ttest_1samp)" if v is None
                       else "one-sided paired t-test (scipy ttest_rel)")
        row["_band"] = (margin, math.inf)
    else:
        low, high = claim_band(kind, stats.to_float(c.get("value", 0.0) or 0.0) * scale, margin,
                               [stats.to_float(r) for r in c["range"]] if kind == "range" else None)
        d = decide_band(x, low, high, v, deterministic=det)
        row["test"] = ("TOST, paired by seed (statsmodels ttost_paired)" if v is not None
                       else "TOST, one sample (statsmodels DescrStatsW.ttost_mean)")
        row["_band"] = (low, high)
    if bool(d.exact[()]):
        row["test"] = "exact (deterministic quantity, no seed-to-seed spread)"
    elif bool(d.no_spread[()]):
        row["test"] = "none (no seed-to-seed spread in a measured quantity)"
    row["estimate"] = float(d.estimate[()])
    row["ci_low"], row["ci_high"] = float(d.ci_low[()]), float(d.ci_high[()])
    row["p"] = float(d.p[()])
    row["p_contradict"] = float(d.p_contra[()])
    row["_notes"] = notes
    row["_x"], row["_v"] = x, v
    return d


HALF = (1 - CONTRADICT_LEVEL) / 2  # 0.025: the one-sided level of `contradicted`


def _seeds_needed(c: Mapping, row: dict, d: Decision, alpha_reproduce: float,
                  alpha_contradict: float = HALF) -> tuple[int | None, str]:
    """(seeds, direction): how many seeds the test the estimate points to would need to decide
    with power 0.8 at the observed spread, and which verdict it would reach ('reproduce' or
    'contradict')."""
    mean, sd = float(d.estimate[()]), float(d.sd[()])
    low, high = row["_band"]
    if c["kind"] == "superiority":
        if mean > low:
            return stats.seeds_one_sided(mean - low, sd, alpha_reproduce, POWER), "reproduce"
        return stats.seeds_one_sided(low - mean, sd, alpha_contradict, POWER), "contradict"
    if low < mean < high:
        return stats.seeds_tost(mean, sd, low, high, alpha_reproduce, POWER), "reproduce"
    edge = low if mean <= low else high
    return (stats.seeds_one_sided(abs(mean - edge), sd, alpha_contradict, POWER),
            "contradict")


def _reason(c: Mapping, row: dict, d: Decision, code: int) -> str:
    low, high = row["_band"]
    superiority = c["kind"] == "superiority"
    band = f"the margin {_fmt(low)}" if superiority else f"the band [{_fmt(low)}, {_fmt(high)}]"
    p_holm = row.get("p_holm", math.nan)
    pc_holm = row.get("p_contradict_holm", math.nan)
    if bool(d.exact[()]):
        where = (("above " if code == 0 else "not above ") if superiority
                 else ("inside " if code == 0 else "outside "))
        text = (f"every seed gives {_fmt(row['estimate'])} (no spread; the claim declares the "
                f"quantity deterministic), {where}{band}")
    elif bool(d.no_spread[()]):
        text = (f"every seed gives {_fmt(row['estimate'])}: no seed-to-seed spread in a measured "
                f"metric (e.g. an accuracy that moves in steps of one image), so no interval "
                f"can decide it; run more seeds or a larger evaluation set (only a quantity "
                f"computed without randomness is declared `deterministic: true`); vs {band}")
    elif code == 0 and c["kind"] == "superiority":
        text = f"mean gain {_fmt(row['estimate'])} > {_fmt(low)}: one-sided p = {_fmt(row['p'])}"
        if math.isfinite(p_holm):
            text += f", Holm-adjusted {_fmt(p_holm)}"
    elif code == 0:
        text = (f"90% CI [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] inside {band} "
                f"(TOST p = {_fmt(row['p'])})")
    elif code == 1:
        lo95, hi95 = float(d.ci95_low[()]), float(d.ci95_high[()])
        side = "below" if hi95 < low else "above"
        text = f"95% CI [{_fmt(lo95)}, {_fmt(hi95)}] wholly {side} {band}"
        if math.isfinite(pc_holm):
            text += (f" (one-sided p = {_fmt(row['p_contradict'])}, Holm-adjusted "
                     f"{_fmt(pc_holm)} < 0.025)")
        if c["kind"] in ("difference", "superiority") and hi95 < 0 < (
            stats.to_float(c.get("value")) if c.get("value") is not None else 1.0
        ):
            text += " (the difference is reversed)"
    else:
        text = (f"90% CI [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] vs {band}: neither "
                f"inside nor (95% CI) wholly outside; seed-to-seed sd {_fmt(float(d.sd[()]))}")
        if c["kind"] == "superiority":
            p = p_holm if math.isfinite(p_holm) else row["p"]
            text += f", one-sided p = {_fmt(p)}"
        lo95, hi95 = float(d.ci95_low[()]), float(d.ci95_high[()])
        if math.isfinite(pc_holm) and (hi95 < low or lo95 > high):
            text += (f"; the 95% CI is wholly outside, but the contradiction's Holm-adjusted p "
                     f"{_fmt(pc_holm)} is not below 0.025")
    notes = row.get("_notes") or []
    return text + ("; " + "; ".join(notes) if notes else "")


def _verdict_text(code: int, seeds: int | None, direction: str = "reproduce",
                  no_spread: bool = False) -> str:
    if code == 0:
        return REPRODUCED
    if code == 1:
        return CONTRADICTED
    if no_spread:
        return f"{INCONCLUSIVE} (no seed-to-seed spread)"
    if seeds is None:
        return f"{INCONCLUSIVE} (more than {stats.SEEDS_MAX:,} seeds needed to {direction})"
    return f"{INCONCLUSIVE} (about {seeds} seeds needed to {direction})"


def _check_text(code: int, seeds: int | None, direction: str, no_spread: bool) -> str:
    if code == 0:
        return f"{CHECK} (consistent)"
    if code == 1:
        return f"{CHECK} (inconsistent)"
    return f"{CHECK} ({_verdict_text(code, seeds, direction, no_spread)})"


def hypothesis_key(row: Mapping[str, Any]) -> tuple:
    """One hypothesis of a Holm family: a claim at a group, or (paired tests) a comparison at a
    group and metric, whichever way round it is written (A vs B is B vs A)."""
    pair = tuple(sorted({str(row.get("method")), str(row.get("versus"))}))
    return (str(row.get("study")), row.get("claim_id"), str(row.get("metric")),
            *(str(row.get(k)) for k in GROUP), pair)


def holm_family(rows: Sequence[Mapping[str, Any]], primary: Iterable[str] | None,
                p: str = "p") -> dict[int, tuple[float, int]]:
    """The Holm family, one definition for claims.csv and paired_tests.csv: per study, the rows
    whose metric is a primary endpoint (``primary`` None: every metric) and whose test gave a
    finite p (column ``p``), each distinct hypothesis (:func:`hypothesis_key`) counted once.
    Returns {row index: (Holm-adjusted p, family size)}; rows outside the family are absent."""
    prim = None if primary is None else {str(m) for m in primary}
    families: dict[str, dict[tuple, list[int]]] = {}
    for i, r in enumerate(rows):
        pv = r.get(p)
        if pv is None or not math.isfinite(float(pv)):
            continue
        if prim is not None and str(r.get("metric")) not in prim:
            continue
        families.setdefault(str(r.get("study")), {}).setdefault(hypothesis_key(r), []).append(i)
    out: dict[int, tuple[float, int]] = {}
    for fam in families.values():
        keys = list(fam)
        for key, ph in zip(keys, stats.holm([float(rows[fam[key][0]][p]) for key in keys])):
            for i in fam[key]:
                out[i] = (ph, len(keys))
    return out


def evaluate_claims(
    doc: Mapping | None,
    cells: Any,
    *,
    study: str = "",
    study_cfg: Mapping | None = None,
    mechanism_checks: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """One row per (claim, group) with the columns of CLAIMS_COLUMNS (see the module docstring
    for the verdicts). ``cells`` is the study's cells table (bench.aggregate.cells_table, with
    a ``device`` column from each result's provenance); ``study_cfg`` its config block
    (methods, primary_endpoints); ``mechanism_checks`` the study's mechanism-check rows
    (bench.checks.checks_table)."""
    study_cfg = study_cfg or {}
    claims = list((doc or {}).get("claims") or [])
    idx = _Cells(cells)
    run_methods = list(study_cfg.get("methods") or [])
    primary = set(primary_endpoints(doc, study_cfg))
    rows: list[dict[str, Any]] = []
    decided: list[tuple[Mapping, dict, Decision]] = []
    for c in claims:
        base = _base_row(c, study)
        if c.get("not_testable") is not None:
            rows.append(_not_testable(base, str(c["not_testable"])))
            continue
        margin, origin = claim_margin(c)
        base["margin"], base["margin_origin"] = margin, origin
        if "precision" in getattr(cells, "columns", ()):  # a speed option was used somewhere
            from bench.train import numerics_refusal

            refusal = numerics_refusal(cells, str(c["metric"]))
            if refusal:
                rows.append(_not_testable(base, refusal))
                continue
        groups, why = _claim_groups(c, idx, run_methods)
        if not groups:
            w = c.get("where") or {}
            for k in GROUP:
                if k in w and len(_names(w[k])) == 1:
                    base[k] = _names(w[k])[0]
            rows.append(_not_testable(base, str(why)))
            continue
        for g in groups:
            row = {**base, **g}
            rows.append(row)
            d = _evaluate_group(c, g, idx, row, margin)
            if d is not None:
                decided.append((c, row, d))

    # Holm (holm_family): `reproduced` of a superiority claim over the primary superiority
    # claims; `contradicted` over every primary claim. Checks and untested rows stay out.
    tested = [(c, row) for c, row, d in decided
              if c.get("check") is None and not bool(d.exact[()]) and not bool(d.no_spread[()])]
    sup = [(c, row) for c, row in tested if c["kind"] == "superiority"]
    rep = holm_family([row for _, row in sup], primary, "p")
    con = holm_family([row for _, row in tested], primary, "p_contradict")
    k_rep = {id(row): rep[i] for i, (_, row) in enumerate(sup) if i in rep}
    k_con = {id(row): con[i] for i, (_, row) in enumerate(tested) if i in con}
    for c, row, d in decided:
        alpha_rep, alpha_con = ALPHA, HALF
        p_rep = p_con = None
        if id(row) in k_rep:
            row["p_holm"], k = k_rep[id(row)]
            row["test"] += f"; Holm over {k} primary superiority claims"
            alpha_rep, p_rep = ALPHA / k, row["p_holm"]
        elif c["kind"] == "superiority" and c.get("check") is None:
            row["test"] += "; secondary endpoint: unadjusted"
        if id(row) in k_con:
            row["p_contradict_holm"], k = k_con[id(row)]
            row["test"] += f"; contradicted: Holm over {k} primary claims"
            alpha_con, p_con = HALF / k, row["p_contradict_holm"]
        if p_rep is not None or p_con is not None:
            det = bool(c.get("deterministic"))
            if c["kind"] == "superiority":
                d = decide_greater(row["_x"], row["_band"][0], row["_v"],
                                   stats.to_float(c["over"]) if c.get("over") is not None else 0.0,
                                   p_decide=p_rep, deterministic=det, p_contra_decide=p_con)
            else:
                d = decide_band(row["_x"], *row["_band"], row["_v"], deterministic=det,
                                p_contra_decide=p_con)
        code = int(d.code[()])
        seeds, direction = (_seeds_needed(c, row, d, alpha_rep, alpha_con)
                            if code == 2 and not bool(d.no_spread[()]) else (None, ""))
        row["seeds_needed"] = seeds
        no_spread = bool(d.no_spread[()])
        if c.get("check") is not None:
            row["verdict"] = _check_text(code, seeds, direction, no_spread)
            row["reason"] = (f"a consistency check of our own model, not a reproduction "
                             f"({c['check']}): {_reason(c, row, d, code)}")
        else:
            row["verdict"] = _verdict_text(code, seeds, direction, no_spread)
            row["reason"] = _reason(c, row, d, code)

    # failures first: a guard withheld by a failed mechanism check leaves what it guards
    # not testable (it read its own verdict when guards ran first)
    _apply_failures(claims, rows, mechanism_checks)
    _apply_guards(claims, rows)
    for row in rows:
        for k in [k for k in row if k.startswith("_")]:
            del row[k]
    return rows


def _apply_guards(claims: Sequence[Mapping], rows: list[dict]) -> None:
    """``given: [ids]``: the claim holds only where its guard claims are reproduced in the same
    group (NeuroFlux: a speed-up counts only where accuracy is maintained)."""
    by_claim = {c["id"]: c for c in claims}
    index = {(r["claim_id"], r["model"], r["dataset"], r["budget"]): r for r in rows}
    for row in rows:
        given = by_claim[row["claim_id"]].get("given") or []
        if not given or row["verdict"].startswith((NOT_TESTABLE, WITHHELD)):
            continue
        for gid in given:
            guard = index.get((gid, row["model"], row["dataset"], row["budget"]))
            gv = guard["verdict"] if guard else f"{NOT_TESTABLE} (no row in this group)"
            if gv.startswith((NOT_TESTABLE, WITHHELD)):
                row["verdict"] = f"{NOT_TESTABLE} (guard claim {gid}: {gv})"
                row["seeds_needed"] = None
                break
            if gv == CONTRADICTED:
                if row["verdict"] != CONTRADICTED:
                    row["verdict"], row["seeds_needed"] = CONTRADICTED, None
                row["reason"] += f"; guard claim {gid} is contradicted here"
            elif gv != REPRODUCED:
                if row["verdict"] == REPRODUCED:
                    row["verdict"] = f"{INCONCLUSIVE} (guard claim {gid}: {gv})"
                row["reason"] += f"; guard claim {gid} is {gv}"
            else:
                row["reason"] += f"; guard claim {gid} reproduced here"


def method_checks(claims: Sequence[Mapping]) -> dict[str, set[str]]:
    """The mechanism checks each method's claims require (as method or versus): a value or
    range claim of a method needs them too, whether or not it lists them."""
    out: dict[str, set[str]] = {}
    for c in claims:
        for m in (c.get("method"), c.get("versus")):
            if m is not None:
                out.setdefault(str(m), set()).update(c.get("requires") or [])
    return out


def _apply_failures(claims: Sequence[Mapping], rows: list[dict],
                    mechanism_checks: pd.DataFrame | None) -> None:
    if mechanism_checks is None or mechanism_checks.empty:
        return
    by_claim = {c["id"]: c for c in claims}
    inherited = method_checks(claims)
    for row in rows:
        c = by_claim[row["claim_id"]]
        requires = set(c.get("requires") or [])
        if c["kind"] in ("value", "range") and c.get("method") is not None:
            requires |= inherited.get(str(c["method"]), set())
        if not requires or row["verdict"].startswith(NOT_TESTABLE) or row["model"] is None:
            continue
        sides = [m for m in (row["method"], c.get("versus")) if m]
        group = {k: row[k] for k in GROUP}
        failed = check_failures(mechanism_checks, sorted(requires), sides, group)
        if failed:
            row["reason"] = f"verdict would be {row['verdict']}: " + (row["reason"] or "")
            row["verdict"] = f"{WITHHELD} (mechanism check failed: {'; '.join(failed)})"
            row["seeds_needed"] = None


# --------------------------------------------------------------------------------------------
# paper-internal checks: the paper's statements against its own runs


def paper_check_rows(c: Mapping) -> list[dict[str, Any]]:
    """stats.paper_checks (means, stds, p recomputed), plus, for a claim that compares two
    methods and prints both sides' runs, the claim's own verdict rule applied to the paper's
    runs paired by run index (e.g. Rest-Wake's "comparable adversarial robustness" against its
    own FGSM runs)."""
    rows = stats.paper_checks(c)
    runs, vr = c.get("runs"), c.get("versus_runs")
    if c["kind"] not in RELATIVE or not runs or not vr or len(runs) != len(vr) or len(runs) < 2:
        return rows
    x = np.array([stats.to_float(v) for v in runs])
    v = np.array([stats.to_float(u) for u in vr])
    margin, _ = claim_margin(c)
    if c.get("scale_by") is not None:
        return rows  # the margin is in units the paper's runs do not carry
    value = stats.to_float(c["value"]) if c.get("value") is not None else math.nan
    if c["kind"] == "superiority":
        d = decide_greater(x, margin, v)
        row = {"_band": (margin, math.inf), "p_holm": math.nan}
    else:
        band = claim_band(c["kind"], 0.0 if math.isnan(value) else value, margin)
        d = decide_band(x, band[0], band[1], v)
        row = {"_band": band, "p_holm": math.nan}
    code = int(d.code[()])
    row.update(estimate=float(d.estimate[()]), ci_low=float(d.ci_low[()]),
               ci_high=float(d.ci_high[()]), p=float(d.p[()]))
    seeds, direction = (_seeds_needed(c, row, d, ALPHA) if code == 2
                        and not bool(d.no_spread[()]) else (None, ""))
    row["p_contradict"] = float(d.p_contra[()])
    verdict = _verdict_text(code, seeds, direction, bool(d.no_spread[()]))
    p2 = float(stats.paired_test(dict(enumerate(x)), dict(enumerate(v)), min_pairs=2)["p"])
    rows.append({
        "claim_id": c["id"], "check": f"{c['kind']} on the paper's own runs",
        "stated": value, "recomputed": row["estimate"],
        "consistent": {0: True, 1: False}.get(code),
        "note": (f"{verdict}: {_reason(c, row, d, code)} ({len(x)} runs paired by run index; "
                 f"two-sided paired t-test p = {_fmt(p2)}; margin {_fmt(margin)})"),
    })  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# calibration: the rule's error rates where the truth is known


# sigma = 1 (the seed-to-seed sd of the per-seed quantity), margin = 1 sigma. Each kind: the
# claim, the truth "outside the margin" at its worst case (on the band's edge), and the truth
# "equal to the paper's value".
CALIBRATION = {
    "value": {"value": 0.0, "margin": 1.0, "outside": 1.0, "paper": 0.0},
    "range": {"range": (0.0, 2.0), "margin": 0.0, "outside": 0.0, "paper": 1.0},
    "difference": {"value": 2.0, "margin": 1.0, "outside": 1.0, "paper": 2.0},
    "equivalence": {"margin": 1.0, "outside": 1.0, "paper": 0.0},
    "superiority": {"value": 1.5, "margin": 0.0, "outside": 0.0, "paper": 1.5},
}


def simulate(kind: str, n: int, truth: float, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Verdict codes of ``reps`` simulated reproductions with n seeds whose true mean (of the
    value, or of the paired difference) is ``truth``, sd 1, decided by this module's rule."""
    spec = CALIBRATION[kind]
    if kind in RELATIVE:
        # paired seeds: a shared seed effect (cancels in the difference) plus noise, sd(diff) = 1
        shared = rng.normal(0.0, 2.0, size=(n, reps))
        versus = shared + rng.normal(0.0, math.sqrt(0.5), size=(n, reps))
        x = shared + truth + rng.normal(0.0, math.sqrt(0.5), size=(n, reps))
    else:
        versus, x = None, truth + rng.normal(0.0, 1.0, size=(n, reps))
    if kind == "superiority":
        return decide_greater(x, spec["margin"], versus).code
    low, high = claim_band(kind, spec.get("value", 0.0), spec["margin"], spec.get("range"))
    return decide_band(x, low, high, versus).code


def calibrate(ns: Sequence[int] = (3, 5, 10), reps: int = 20_000, seed: int = 12
              ) -> list[dict[str, Any]]:
    """Rates of each verdict per kind and n, fixed RNG, for two truths: on the margin's edge
    (the worst case both of "outside the margin", for a false `reproduced`, and of "inside",
    for a false `contradicted`) and equal to the paper's value."""
    rng = np.random.default_rng(seed)
    out = []
    for kind, spec in CALIBRATION.items():
        for n in ns:
            edge = simulate(kind, n, spec["outside"], reps, rng)
            paper = simulate(kind, n, spec["paper"], reps, rng)
            out.append({
                "kind": kind, "n": n, "reps": reps,
                "edge_reproduced": float(np.mean(edge == 0)),
                "edge_contradicted": float(np.mean(edge == 1)),
                "paper_reproduced": float(np.mean(paper == 0)),
                "paper_contradicted": float(np.mean(paper == 1)),
                "paper_inconclusive": float(np.mean(paper == 2)),
            })  # fmt: skip
    return out


def calibration_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The calibration table as Markdown (docs/statistics.md)."""
    lines = [
        ("| kind | seeds | edge: `reproduced` | edge: `contradicted` | paper: `reproduced` | "
         "paper: `contradicted` | paper: `inconclusive` |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cols = ("edge_reproduced", "edge_contradicted", "paper_reproduced",
                "paper_contradicted", "paper_inconclusive")
        lines.append(f"| {r['kind']} | {r['n']} | "
                     + " | ".join(f"{100 * r[c]:.1f}%" for c in cols) + " |")
    return "\n".join(lines)


def holm_columns(p: Any) -> np.ndarray:
    """Holm-adjusted p of each column of p (k hypotheses, R reproductions), vectorised: the same
    numbers as :func:`bench.stats.holm` on each column (statsmodels' step-down)."""
    p = np.asarray(p, dtype=float)
    k = p.shape[0]
    order = np.argsort(p, axis=0)
    ps = np.take_along_axis(p, order, axis=0) * (k - np.arange(k))[:, None]
    ps = np.minimum(np.maximum.accumulate(ps, axis=0), 1.0)
    out = np.empty_like(ps)
    np.put_along_axis(out, order, ps, axis=0)
    return out


def calibrate_rules(ns: Sequence[int] = (3, 5, 10), reps: int = 20_000, seed: int = 13,
                    family: int = 4) -> list[dict[str, Any]]:
    """The rates behind three rules, each against the rule it replaced (fixed RNG):

    - ``family``: ``family`` primary superiority claims, each true on its margin's edge: the
      rate at which any of them reads contradicted, with Holm over the family (this rule) and
      without (before).
    - ``whole_images``: accuracy on 360 images, paired differences in whole images (spread 0.5
      image), true gain 0, a superiority claim (margin 0): false `contradicted`, with a
      spreadless sample inconclusive (this rule) and decided exactly (before).
    - ``range_edge``: a range claim with the truth on its low end: false `reproduced`, TOST
      inside the range (this rule) and ``range_rule: overlap`` (before: the 95% interval
      overlaps the range and the mean is not below its low end).
    """
    rng = np.random.default_rng(seed)
    out = []
    for n in ns:
        x = rng.normal(0.0, 1.0, size=(family, n, reps))
        plain = [decide_greater(x[i], 0.0) for i in range(family)]
        holm = holm_columns(np.stack([d.p_contra for d in plain]))
        ruled = [decide_greater(x[i], 0.0, p_contra_decide=holm[i]) for i in range(family)]
        out.append({"case": "family", "n": n, "reps": reps,
                    "rule": float(np.mean(np.any([d.code == 1 for d in ruled], axis=0))),
                    "before": float(np.mean(np.any([d.code == 1 for d in plain], axis=0)))})
    for n in ns:
        base = 0.9 + rng.normal(0.0, 0.02, size=(n, reps))
        diff = np.round(rng.normal(0.0, 0.5, size=(n, reps))) / 360
        rule = decide_greater(base + diff, 0.0, base)
        before = decide_greater(base + diff, 0.0, base, deterministic=True)
        out.append({"case": "whole_images", "n": n, "reps": reps,
                    "rule": float(np.mean(rule.code == 1)),
                    "before": float(np.mean(before.code == 1))})
    for n in ns:
        x = rng.normal(0.0, 1.0, size=(n, reps))  # range [0, 2], truth 0 (its low end)
        rule = decide_band(x, 0.0, 2.0)
        mean, _, _, _, lo95, hi95 = _intervals(x)
        overlap = (hi95 >= 0.0) & (lo95 <= 2.0) & (mean >= 0.0)
        out.append({"case": "range_edge", "n": n, "reps": reps,
                    "rule": float(np.mean(rule.code == 0)), "before": float(np.mean(overlap))})
    return out


RULE_CASES = {
    "family": "4 primary claims, each true on its margin's edge: any `contradicted`",
    "whole_images": "accuracy in whole images, gain 0, superiority: `contradicted`",
    "range_edge": "range, truth on its low end: `reproduced`",
}  # fmt: skip


def rules_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rules table as Markdown (docs/statistics.md)."""
    lines = ["| case | seeds | this rule | before |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']}: {RULE_CASES[r['case']]} | {r['n']} | "
                     f"{100 * r['rule']:.1f}% | {100 * r['before']:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.claims: print the calibration tables
    print(calibration_markdown(calibrate()))
    print()
    print(rules_markdown(calibrate_rules()))
