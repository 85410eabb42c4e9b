"""The studies: one package per paper, `bench/studies/<study>/` (docs/design.md, "Layout").

A study package holds its README (the paper, its claims, every [ours] choice), `claims.yaml`,
its methods (registered by name in `bench.methods.METHODS` when the package is imported), its
mechanism modules, its mechanism checks (`checks.py`, registered with `bench.checks`, imported
when a study is aggregated) and its report section (`report.py`, imported only when a report is
built). The harness never names a study: this module is the one place that finds
and imports them.

Study packages are the sub-packages of this folder, plus those in the folders listed in the
environment variable `MEMREPRO_STUDIES_PATH` (os.pathsep-separated; a study kept outside the
repository, or a test's throwaway study). A study's config key is its package name.
Finding a study (`names`, `folder`, `claims_file`) imports nothing, so planning and validating a
configuration stays cheap.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

PATH_ENV = "MEMREPRO_STUDIES_PATH"

for _extra in filter(None, os.environ.get(PATH_ENV, "").split(os.pathsep)):
    if _extra not in __path__:
        __path__.append(_extra)


def names() -> list[str]:
    """Every study package found, sorted."""
    return sorted({m.name for m in pkgutil.iter_modules(__path__) if m.ispkg})


def folder(study: str) -> Path | None:
    """The folder of study package `study`, or None when there is none of that name."""
    for root in __path__:
        d = Path(root) / study
        if (d / "__init__.py").is_file():
            return d
    return None


def claims_file(study: str) -> Path | None:
    """`<study folder>/claims.yaml`, or None when the study has no package or no claims."""
    d = folder(study)
    return d / "claims.yaml" if d is not None and (d / "claims.yaml").is_file() else None


def load() -> None:
    """Import every study package: their methods and upstream stages register."""
    for name in names():
        importlib.import_module(f"{__name__}.{name}")


def load_checks() -> None:
    """Import every study's `checks.py`: its mechanism checks register with bench.checks (they
    read result files only, so this imports no model code)."""
    for name in names():
        if (folder(name) / "checks.py").is_file():
            importlib.import_module(f"{__name__}.{name}.checks")


def load_reports() -> None:
    """Import every study's `report.py`: its figures and tables register with bench.report."""
    load()
    for name in names():
        if (folder(name) / "report.py").is_file():
            importlib.import_module(f"{__name__}.{name}.report")
