"""Mechanism checks: invariants a study's mechanism must show for its verdicts to mean anything
(docs/design.md, "Claims and verdicts").

A study registers one function that reads its results (the parsed `result.json` documents of
every cell of the study) and returns one `Check` per (check, method, group[, seed]):

    from bench.checks import Check, register_checks

    @register_checks("mystudy", "budget_used", "two_blocks")   # the check names it produces
    def checks(results):
        return [Check("budget_used", r["axes"]["method"], r["axes"]["model"], ...), ...]

Aggregation writes them to `mechanism_checks.csv` (`CHECK_COLUMNS`). A claim lists the checks it
depends on (`requires: [check names]` in claims.yaml); when any row of such a check failed for
the claim's method (or its `versus`) in the claim's group, the claim reads
`withheld (mechanism check failed: ...)` instead of a verdict (`failures`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

CHECK_COLUMNS = ["check", "method", "model", "dataset", "budget", "seed", "passed", "value",
                 "expected", "detail"]


@dataclass(frozen=True)
class Check:
    """One check of one method in one group; `seed` None when it is about the whole group."""

    check: str
    method: str
    model: str
    dataset: str
    budget: str
    seed: int | None
    passed: bool
    value: str = ""  # what was observed, in words or numbers ("0.994", "3 blocks")
    expected: str = ""  # the rule it is held to (">= 0.99", ">= 2 blocks, batch non-decreasing")
    detail: str = ""


CheckFn = Callable[[Sequence[Mapping[str, Any]]], Iterable[Check]]
STUDY_CHECKS: dict[str, CheckFn] = {}
STUDY_CHECK_NAMES: dict[str, tuple[str, ...]] = {}


def register_checks(study: str, *names: str) -> Callable[[CheckFn], CheckFn]:
    """Decorator: the mechanism checks of study `study`, producing the checks `names` (a
    claim's `requires:` is validated against them before any job runs)."""

    def add(fn: CheckFn) -> CheckFn:
        STUDY_CHECKS[study] = fn
        STUDY_CHECK_NAMES[study] = tuple(names)
        return fn

    return add


def declared_checks(study: str) -> list[str]:
    """The check names study `study` declared (empty when it registered none)."""
    return sorted(STUDY_CHECK_NAMES.get(study, ()))


def axes_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """The (method, model, dataset, budget, seed) of a result, as `Check` takes them."""
    a = result["axes"]
    return {"method": str(a["method"]), "model": str(a["model"]), "dataset": str(a["dataset"]),
            "budget": str(a["budget"]), "seed": int(a["seed"])}


def checks_table(study: str, results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Every check of the study's registered function over its results (empty without one)."""
    fn = STUDY_CHECKS.get(study)
    rows = [asdict(c) for c in fn(results)] if fn is not None else []
    declared = set(STUDY_CHECK_NAMES.get(study, ()))
    undeclared = sorted({r["check"] for r in rows} - declared)
    if declared and undeclared:
        raise ValueError(f"study {study}'s checks produced {undeclared}, which its "
                         f"@register_checks does not declare: add them there")
    df = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    return df.sort_values(["check", "method", "model", "dataset", "budget", "seed"],
                          na_position="first", kind="stable").reset_index(drop=True)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def failures(checks: pd.DataFrame, required: Iterable[str], methods: Iterable[str],
             group: Mapping[str, Any] | None = None) -> list[str]:
    """The failed rows of the `required` checks for any of `methods` in `group` (model, dataset,
    budget; keys absent or None match every group), each as one line of words."""
    required, methods = set(required), {str(m) for m in methods}
    if checks is None or checks.empty or not required:
        return []
    out = []
    for r in checks.itertuples(index=False):
        if r.check not in required or str(r.method) not in methods or bool(r.passed):
            continue
        if any(group and group.get(k) is not None and str(getattr(r, k)) != str(group[k])
               for k in ("model", "dataset", "budget")):
            continue
        seed = "" if _missing(r.seed) else f" seed {int(r.seed)}"
        what = f"{r.check} ({r.method}{seed}: {r.value}"
        what += f", expected {r.expected})" if r.expected else ")"
        out.append(what)
    return out
