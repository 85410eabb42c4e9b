"""The repository is self-contained: whoever clones it has every document it refers to.

No tracked file may point outside the repository (a sibling folder of design notes, an absolute
path on the development machine, a paper named by a number from a private reading list instead
of its title), a markdown link or a named document must resolve inside the repository, and each
study folder carries its paper's citation and its method specification (METHODS.md), shipped with
the package beside the study's README.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from bench import studies
from bench.config import ROOT

# Built from pieces, so that this file does not trip its own checks.
OUTSIDE = [
    (re.compile(re.escape(".." + "/shared")),
     "a path into a sibling folder outside the repository"),
    (re.compile(re.escape("/work" + "/shared")), "an absolute path on the development machine"),
    (re.compile(r"\bshared/(?:seeds|papers|METHODS|DESIGN|STYLE)\b"),
     "a path into a folder of notes that is not in the repository"),
    (re.compile(r"\bseeds?[ /_-]?0{2}[0-3]\b", re.IGNORECASE),
     "a paper named by its number in a private reading list: name it by its title"),
    (re.compile(r"(?<![\w.-])(?:seeds|papers)/[\w*.-]+\.txt\b"),
     "a paper's text file that is not in the repository: cite the paper (its METHODS.md)"),
]
# Top-level folders of the repository: a path that starts with one of them is meant to be here.
REPO_DIRS = ("bench", "docs", "tests", "config", "reports", "rules", "benchmarks", "scripts",
             "profiles")
DOC_NAME = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*)([A-Z][A-Z_]*\.md)\b")  # README.md, a/METHODS.md
REPO_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w-]\.md)\b" % "|".join(REPO_DIRS))
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CITATION_FIELDS = ("Title", "Authors", "Venue", "Year")


def _repo_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): the file list comes from `git ls-files`",
                    allow_module_level=True)
    return sorted(p for p in set(out.splitlines()) if (ROOT / p).is_file())


FILES = _repo_files()
SELF = Path(__file__).resolve().relative_to(ROOT.resolve()).as_posix()


def _text(rel: str) -> str | None:
    try:
        return (ROOT / rel).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # a binary file (an image)


def _study_of(rel: str) -> str | None:
    """The study whose folder (bench/studies/<s>/ or tests/studies/<s>/) holds this file."""
    parts = Path(rel).parts
    if len(parts) > 3 and parts[1] == "studies" and parts[0] in ("bench", "tests"):
        return parts[2]
    return None


BASENAMES = {Path(p).name for p in FILES}


def _resolves(rel: str, target: str, *, bare_anywhere: bool = False) -> bool:
    """Whether `target`, named in file `rel`, is a file of the repository: relative to that file,
    to the repository root, or (a bare name in a study's code or tests) in the study's folder;
    with `bare_anywhere`, a bare name also resolves when some file of the repository has it (the
    study's `METHODS.md` in prose about every study)."""
    if bare_anywhere and "/" not in target and target in BASENAMES:
        return True
    candidates = [ROOT / Path(rel).parent / target, ROOT / target]
    study = _study_of(rel)
    if study and "/" not in target:
        candidates.append(ROOT / "bench" / "studies" / study / target)
    return any(c.resolve().is_file() and c.resolve().is_relative_to(ROOT.resolve())
               for c in candidates)


def outside_references(rel: str, text: str) -> list[str]:
    """Every reference in `text` (the file `rel`) to something the repository does not hold."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        outside = [f"{rel}:{n}: {m.group(0)!r} is {why}"
                   for pattern, why in OUTSIDE for m in pattern.finditer(line)]
        if outside:  # one message for the line: the paths after it are the same reference
            problems.append(outside[0])
            continue
        for m in DOC_NAME.finditer(line):
            target = m.group(1) + m.group(2)
            if not _resolves(rel, target, bare_anywhere=True):
                problems.append(f"{rel}:{n}: {target!r} names a document the repository does not "
                                f"hold: give its path in the repository (e.g. docs/design.md, "
                                f"bench/studies/<study>/METHODS.md)")
        for m in REPO_PATH.finditer(line):
            if "<" not in m.group(1) and not _resolves(rel, m.group(1)):
                problems.append(f"{rel}:{n}: {m.group(1)!r} does not exist in the repository")
        if rel.endswith(".md"):
            for m in MD_LINK.finditer(line):
                target = m.group(1).split("#", 1)[0]
                if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # an anchor on the same page, or a URL
                if not _resolves(rel, target) and not (ROOT / Path(rel).parent / target).is_dir():
                    problems.append(f"{rel}:{n}: the link to {target!r} leads nowhere in the "
                                    f"repository")
    return problems


def test_no_tracked_file_refers_outside_the_repository():
    assert FILES, "git ls-files listed nothing"
    problems = []
    for rel in FILES:
        if rel == SELF:
            continue  # the checker's own examples, tested by the test below
        text = _text(rel)
        if text is not None:
            problems += outside_references(rel, text)
    assert not problems, ("references to things a clone does not have (name papers by title, "
                          "point to docs/design.md or the study's METHODS.md):\n"
                          + "\n".join(problems))


def test_the_checker_catches_each_kind_of_outside_reference():
    """The check above is only as good as its patterns: each kind of reference it must refuse."""
    up = ".." + "/shared"
    bad = {
        f"see `{up}/METHODS.md`, study x": "sibling folder",
        "as in " + "/work" + "/shared/DESIGN.md": "development machine",
        "Rest-Wake training (seed " + "000)": "reading list",
        "numbers from seeds/" + "002": "reading list",
        "full text in papers/" + "TraDy.txt": "text file",
        "the layout (DESIGN" + ".md)": "does not hold",
        "see STYLE" + ".md": "does not hold",
        "see restwake/METHODS" + ".md": "does not hold",
        "[the design](nowhere" + ".md)": "leads nowhere",
        "see docs/nowhere" + ".md": "does not exist",
    }
    for text, why in bad.items():
        found = outside_references("docs/example.md", text)
        assert found and why in found[0], (text, found)
    ok = ("[the design](design.md), docs/contracts.md, bench/studies/<study>/METHODS.md, "
          "[a site](https://example.org/x.md), seed 0 and seed 12, README.md")
    assert outside_references("docs/example.md", ok) == []
    # a bare name resolves in the study's folder, from the study's code and tests
    assert _resolves("tests/studies/restwake/test_x.py", "claims.yaml")
    assert not _resolves("tests/test_x.py", "claims.yaml")


def _citation(text: str) -> dict[str, str]:
    """The `## Citation` section's `- **Field:** value` lines."""
    m = re.search(r"^## Citation\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if not m:
        return {}
    return dict(re.findall(r"^- \*\*([^:*]+):\*\*\s*(.+)$", m.group(1), re.MULTILINE))


@pytest.mark.parametrize("name", studies.names())
def test_each_study_carries_its_citation_and_method_specification(name):
    folder = studies.folder(name)
    methods = folder / "METHODS.md"
    assert methods.is_file(), f"{folder} lacks METHODS.md (the paper's citation and the method " \
                              f"specification we implement): write one, see bench/newstudy.py"
    text = methods.read_text(encoding="utf-8")
    fields = _citation(text)
    missing = [f for f in CITATION_FIELDS if not fields.get(f, "").strip()]
    assert not missing, f"{methods}: the `## Citation` section lacks {missing} (write what the " \
                        f"paper's text gives, or say that it does not give it)"
    assert len(text) > 2000, f"{methods} is too short to specify the method"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "(METHODS.md)" in readme, f"{folder / 'README.md'} does not link to METHODS.md"


def test_the_method_specifications_ship_with_the_package():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["bench.studies"]
    assert "*/README.md" in patterns and "*/METHODS.md" in patterns, patterns
