"""The study's blocks of the shipped configs: config/paper.yaml follows the paper's recipe (D.1)
line by line; the smoke and paper configs run every strategy, the quick default run those of
TraDy's own claims; all with dropout 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.claims import load_claims
from bench.config import check_config, claims_path, load_config, plan, resolve_cell

ROOT = Path(__file__).resolve().parents[3]
STRATEGIES = {"full_ft", "tradyn", "d_full_random", "d_det_rgn", "s_full_random", "s_det_rgn",
              "s_topk_random", "last_layer"}


def resolved_cells(name: str) -> list[dict]:
    cfg = check_config(load_config([ROOT / "config" / name]))
    return [resolve_cell(cfg, c) for c in plan(cfg, "tradyn")]


def test_paper_config_is_the_papers_recipe():
    """Paper D.1: 'cosine learning rate decay with 5 warm-up epochs ... 100 epochs for CIFAR-10
    ... Learning rates range from 0.125 to 0, and we do not use weight decay or dropout ... SGD
    with no momentum ... three random seeds'; Table 1: MbV2-w0.35 at 27,946 / 66,592 / 93,696."""
    cells = resolved_cells("paper.yaml")
    assert {c["method"] for c in cells} == STRATEGIES
    assert {c["seed_index"] for c in cells} == {0, 1, 2}
    budgets = {c["budget"] for c in cells if c["method"] not in ("full_ft", "last_layer")}
    assert budgets == {"27946", "66592", "93696"}
    for c in cells:
        train = c["train"]
        assert c["epochs"] == 100
        assert train["lr"] == 0.125 and train["schedule"] == "cosine"
        assert train["warmup_epochs"] == 5
        assert train["momentum"] == 0.0 and train["weight_decay"] == 0.0
        assert train["label_smoothing"] == 0.0
        assert c["model"] == "mobilenetv2" and c["model_options"]["width"] == 0.35
        assert c["model_options"]["dropout"] == 0.0
        assert c["dataset"] == "cifar10" and c["data"]["image_size"] == 128
        if c["method"] in STRATEGIES - {"full_ft", "last_layer"}:
            assert c["method_options"]["fill"] == "skip"
            assert c["method_options"]["save_selected_only"] is True
        if c["method"] in ("d_det_rgn", "s_det_rgn"):
            assert c["method_options"]["rgn_batches"] is None  # the whole training split


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml"])
def test_every_config_runs_its_strategies_without_dropout(name):
    cells = resolved_cells(name)
    methods = {c["method"] for c in cells}
    if name == "config.yaml":  # the quick run: every strategy a thesis claim on TraDy names
        doc = load_claims(claims_path("tradyn"))
        named = {c[k] for c in doc["claims"] if c["scope"] == "thesis"
                 and "tradyn" in (c["method"], c.get("versus")) for k in ("method", "versus")}
        assert named == {"full_ft", "tradyn", "d_full_random", "d_det_rgn", "s_topk_random"}
        assert methods == named
    else:
        assert methods == STRATEGIES
    for c in cells:
        assert c["model_options"]["dropout"] == 0.0, "paper D.1: no dropout"
        assert c["train"]["momentum"] == 0.0 and c["train"]["weight_decay"] == 0.0
        assert c["train"]["schedule"] == "cosine"
