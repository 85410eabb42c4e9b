"""The HTML report in a real browser: headless Chromium (Debian's `chromium`) at 1280x800.

A realistic report (two studies built from synthetic contract tables: claims of every verdict,
a failed mechanism check, two budgets, long descriptions and method names; a third study without
claims) is opened as a user would open it. Asserted in the browser's own layout:

- no horizontal scrolling at 1280 px, with every collapsed table opened as well;
- the first screen (800 px) lists every claim tested in the run, per paper, with the paper's
  number, ours, the verdict (a badge not cut) and its reason in words (visible, not a tooltip);
  the not-testable claims are counted there and listed in the appendix;
- every <img> loaded (complete, naturalWidth > 0).

The page itself has no script: the checks run in a copy with a small script added that writes
its findings into the DOM, which `chromium --dump-dom` prints. The screenshot of the first
screen is written next to it and its path printed in the test output.

Without Chromium the tests skip with the reason, except under CI=true, where its absence is a
failure (.ci/run installs it).
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench import report
from bench.report import StudyInput, build_report
from tests.test_report import DATASET, MODEL, PROVENANCE, REFERENCE, study_input, write_study_tables

WIDTH, HEIGHT = 1280, 800

# Run in the page after `load`: measure the first screen as it opens (tables collapsed), then
# open every <details> and measure the width again; write the findings as JSON into the DOM.
PROBE = r"""
window.addEventListener('load', () => {
  const de = document.documentElement;
  // page coordinates (from the top of the page): the first screen is its top 800 px
  const box = (el) => {
    if (!el) return null;
    const r = el.getBoundingClientRect();
    return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY};
  };
  const out = {innerWidth: window.innerWidth, innerHeight: window.innerHeight,
               clientWidth: de.clientWidth};
  const overview = box(document.getElementById('overview'));
  const card = document.querySelector('div.scorecard');
  const forest = card ? card.querySelector('figure.forest img') : null;
  out.overview_bottom = overview ? overview.bottom : null;
  // the first screen's findings: every tested claim's row, with its verdict and reason
  const findings = document.getElementById('findings');
  out.findings_bottom = findings ? box(findings).bottom : null;
  out.findings = findings ? [...findings.querySelectorAll('tbody tr')]
    .filter(tr => !tr.classList.contains('group')).map(tr => {
      const cells = [...tr.children];
      const badge = tr.querySelector('.badge');
      const text = (i) => cells[i] ? cells[i].innerText.trim() : '';
      return {bottom: box(tr).bottom, verdict: badge ? badge.innerText.trim() : '',
              badge_cut: badge ? (badge.scrollWidth > badge.clientWidth + 1 ||
                                  badge.getBoundingClientRect().right >
                                  cells[0].getBoundingClientRect().right + 0.5) : true,
              claim: cells[1] && cells[1].querySelector('div') ?
                       cells[1].querySelector('div').innerText.trim() : text(1),
              paper: text(2), ours: text(3), why: text(4),
              why_visible: cells[4] ? cells[4].getBoundingClientRect().height > 0 : false};
    }) : [];
  out.scorecard_top = card ? box(card).top : null;
  out.scorecard_heading_bottom = card ? box(card.querySelector('h3')).bottom : null;
  out.forest_top = forest ? box(forest).top : null;
  out.scroll_width_closed = de.scrollWidth;
  for (const d of document.querySelectorAll('details')) d.open = true;
  void de.offsetHeight;  // lay out again, everything open
  out.scroll_width_open = de.scrollWidth;
  const right = document.body.getBoundingClientRect().right;
  out.too_wide = [];
  for (const el of document.querySelectorAll('main *, header *, #overview-section *')) {
    if (el.closest('div.scroll')) continue;  // a study's own table in its scroll container
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > de.clientWidth + 0.5) {
      const t = el.closest('table');
      out.too_wide.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                        (t && t.id ? ' in table#' + t.id : '') + ' right=' + Math.round(r.right));
    }
  }
  out.too_wide = out.too_wide.slice(0, 20);
  // a table past its container's content edge (the border of its collapsed section)
  out.tables_past_their_box = [...document.querySelectorAll('table')]
    .filter(t => !t.closest('div.scroll')).filter(t => {
      const p = t.parentElement, cs = getComputedStyle(p);
      const limit = p.getBoundingClientRect().right - parseFloat(cs.paddingRight)
                    - parseFloat(cs.borderRightWidth);
      return t.getBoundingClientRect().right > Math.min(limit, right) + 0.5;
    }).map(t => t.id);
  out.images = [...document.images].map(img => ({
    alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
    width: Math.round(img.getBoundingClientRect().width)}));
  const pre = document.createElement('pre');
  pre.id = 'report-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
"""


def chromium() -> str:
    """The Chromium binary; skip (fail under CI=true) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is not installed, and CI must check the report in a browser "
                    "(.ci/run installs Debian's `chromium`)")
    pytest.skip("Chromium is not installed (apt-get install chromium): the report was not "
                "checked in a browser")


def _run_chromium(*args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        proc = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
             "--virtual-time-budget=15000", *args],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def probe_page(page: Path) -> dict:
    """The PROBE findings for the report at `page` (a copy with the script is opened; the
    report itself stays script-free)."""
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text, "the report must stay script-free"
    copy = page.with_name(page.stem + ".probe.html")
    copy.write_text(text.replace("</body>", f"<script>{PROBE}</script>\n</body>"),
                    encoding="utf-8")
    try:
        dom = _run_chromium("--dump-dom", copy.as_uri())
    finally:
        copy.unlink()
    m = re.search(r'<pre id="report-probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe script did not run (no #report-probe in the DOM)"
    return json.loads(html_lib.unescape(m.group(1)))


def screenshot(page: Path, png: Path) -> Path:
    """The first screen of the page at 1280x800."""
    _run_chromium(f"--screenshot={png}", page.as_uri())
    assert png.is_file() and png.stat().st_size > 10_000, "no screenshot written"
    return png


def assert_readable_in_browser(page: Path, png: Path) -> dict:
    """Every browser check of the report at `page`; the screenshot goes to `png`."""
    found = probe_page(page)
    screenshot(page, png)
    assert found["innerWidth"] == WIDTH, found  # (--dump-dom's viewport is less tall: the
    # first-screen checks use page coordinates, the top HEIGHT pixels)
    # no horizontal scrolling, as it opens and with every table opened
    assert found["scroll_width_closed"] <= found["clientWidth"], found["too_wide"]
    assert found["scroll_width_open"] <= found["clientWidth"], found["too_wide"]
    assert not found["too_wide"], found["too_wide"]
    assert not found["tables_past_their_box"], found["tables_past_their_box"]
    # the first screen: the findings, every tested claim with its verdict and reason in words
    assert found["findings"], "no findings table on the page"
    assert found["findings_bottom"] is not None and found["findings_bottom"] <= HEIGHT, (
        f"the findings end at {found['findings_bottom']} px, below the first screen")
    for row in found["findings"]:
        assert row["bottom"] <= HEIGHT, row
        assert row["verdict"] and not row["badge_cut"], row
        assert row["why"] and row["why_visible"], row  # the reason on the page, not a tooltip
    assert found["overview_bottom"] is not None and found["scorecard_top"] is not None
    # every figure loaded
    assert found["images"], "no <img> in the report"
    broken = [i["alt"] for i in found["images"] if not i["complete"] or i["naturalWidth"] <= 0]
    assert not broken, f"figures that did not load: {broken}"
    return found


@pytest.fixture(scope="module")
def realistic_report(tmp_path_factory) -> Path:
    """A report of three studies: two with claims (one of two budgets and long names), one
    without (it comes last)."""
    root = tmp_path_factory.mktemp("browser")
    long_method = "restwake_improved_with_a_very_long_variant_name"
    a = write_study_tables(root / "a", study="restwake", oom=True,
                           methods=[REFERENCE, "restwake_original", long_method])
    b = write_study_tables(root / "b", study="sparsity_regimes", budgets=("256MiB", "512MiB"),
                           methods=[REFERENCE, "topk_s1", "topk_s2", "topk_sawtooth"])
    c = write_study_tables(root / "c", study="baseline", claims=False)
    description = (
        "Rest-Wake training: WAKE epochs of plain SGD alternate with REST epochs that "
        "consolidate the weights to the mean of a buffer of fp16 snapshots (BatchNorm "
        "statistics re-estimated) without a gradient step. `restwake_original` rests on a fixed "
        "schedule with the buffer on the host; `restwake_improved` rests when the gradient "
        "variance trace falls below a threshold frozen after its first WAKE epochs, with the "
        "buffer on the device. " * 2
    )
    studies = [
        StudyInput(**{**study_input(c, "baseline").__dict__, "description": "Smoke baseline."}),
        StudyInput(**{**study_input(a, "restwake").__dict__, "description": description}),
        study_input(b, "sparsity_regimes"),
    ]
    paths = build_report(studies, root / "report", PROVENANCE, title="memrepro browser check")
    return paths["html"]


def test_report_in_chromium_fits_1280_opens_on_verdicts_and_loads_figures(
    realistic_report, capsys
):
    png = realistic_report.with_name("first-screen-1280x800.png")
    found = assert_readable_in_browser(realistic_report, png)
    assert len(found["images"]) >= 8  # two forest plots and the studies' figures
    with capsys.disabled():
        print(f"\nreport first screen (1280x800): {png}")


def test_first_screen_lists_each_tested_claim_with_verdict_and_reason(realistic_report):
    """Each claim row tested in the run is on the first 800 px, with the paper's number, ours,
    the verdict and the reason the report gives it; the not-testable ones are not."""
    found = probe_page(realistic_report)
    root = realistic_report.parent.parent
    expected = []
    for study, folder in (("restwake", "a"), ("sparsity_regimes", "b")):
        claims = report.read_table(root / folder / "claims.csv")
        for _, r in claims.iterrows():
            if report._verdict_kind(r["verdict"]) != "not testable":
                expected.append((r["description"], report._verdict_kind(r["verdict"]),
                                 report.claim_reason(r), report.paper_text(r),
                                 report.ours_text(r)))
    shown = [(row["claim"], row["verdict"], row["why"], row["paper"], row["ours"])
             for row in found["findings"] if row["bottom"] <= HEIGHT]
    norm = [tuple(" ".join(x.replace("\u00a0", " ").split()) for x in t) for t in expected]
    got = [tuple(" ".join(x.replace("\u00a0", " ").split()) for x in t) for t in shown]
    assert got == norm
    assert "cifar" not in " ".join(row["claim"].lower() for row in found["findings"])


def test_probe_sees_overflow_and_a_broken_figure(tmp_path):
    """The checks can fail: a page wider than the window and an image that does not load."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><table class='data' id='overview'><tr><td>x</td></tr>"
        "</table><div class='scorecard'><h3>s</h3></div>"
        "<div style='width:2000px'>wide</div><img alt='broken' src='data:image/png;base64,AAAA'>"
        "</body></html>", encoding="utf-8")
    found = probe_page(page)
    assert found["scroll_width_open"] > found["clientWidth"]
    assert [i["naturalWidth"] for i in found["images"]] == [0]
    assert found["forest_top"] is None


def test_scorecard_of_the_first_study_is_the_first_with_claims(realistic_report):
    text = realistic_report.read_text(encoding="utf-8")
    order = [m for m in re.findall(r'<section class="study" id="study-([a-z-]+)"', text)]
    assert order == ["restwake", "sparsity-regimes", "baseline"]
    assert f"model {MODEL} · dataset {DATASET} · budget 256MiB" in text


def test_first_screen_holds_fourteen_claims_of_four_papers_with_long_statements(tmp_path):
    """The default run's shape: four papers, 14 tested claims, statements of two lines and
    more (as the papers' claims files write them), most claims not testable: all 14 rows,
    each with its verdict and reason, still fit the first 800 px."""
    import pandas as pd

    long = ("the early-exit model's accuracy is not more than 1 point below backprop's under "
            "the same budget ('while maintaining accuracy'; non-inferiority), where its "
            "partition keeps every block within half its first unit's b*")
    studies = []
    for name, keep in (("neuroflux", 3), ("restwake", 5), ("sparsity_regimes", 2),
                       ("tradyn", 4)):
        tables = write_study_tables(tmp_path / name, study=name)
        claims = pd.read_csv(tables / "claims.csv")
        tested = [i for i, v in enumerate(claims["verdict"]) if not v.startswith("not testable")]
        for n, i in enumerate(tested):
            if n < keep:
                claims.loc[i, "description"] = f"{name} claim {n}: {long}"
            else:
                claims.loc[i, "verdict"] = ("not testable (the paper's setting wrn28_4/cifar10/"
                                            "none is not in this run)")
        claims.to_csv(tables / "claims.csv", index=False)
        studies.append(study_input(tables, name))
    page = build_report(studies, tmp_path / "report", PROVENANCE, title="four papers")["html"]
    found = probe_page(page)
    assert len(found["findings"]) == 14
    for row in found["findings"]:
        assert row["bottom"] <= HEIGHT, row
        assert row["verdict"] and not row["badge_cut"] and row["why"], row
