"""The method contract, run for every registered method (registry-driven: a new method is
tested here without a new test)."""

from __future__ import annotations

import json
import math

import pytest

from bench.errors import ConfigError
from bench.methods import METHODS
from bench.methods.base import Method
from bench.train import run_cell
from tests.conftest import tiny_cell

REQUIRED_KEYS = {"schema_version", "cell_id", "axes", "status", "reason", "config",
                 "config_hash", "history", "final", "memory", "compute", "timing",
                 "provenance", "mlflow"}


@pytest.mark.parametrize("name", METHODS.names())
def test_method_runs_a_cell_and_writes_a_complete_result(name, tmp_path):
    cls = METHODS.get(name)
    study = {"methods": sorted({name, cls.test_study.get("reference", "sgd")}),
             "reference": "sgd", **cls.test_study}
    cfg = tiny_cell(tmp_path, method=name, **study)
    out = tmp_path / "result.json"
    result = run_cell(cfg, out, tracker=None)
    on_disk = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(on_disk)
    assert on_disk["status"] in ("ok", "skipped"), on_disk["reason"]
    if on_disk["status"] == "skipped":
        assert on_disk["reason"], "a skip must carry its reason"
        return
    assert [h["epoch"] for h in result["history"]] == list(range(cfg["epochs"]))
    for h in result["history"]:
        assert h["phase"]
        assert math.isfinite(h["val_loss"]) and 0.0 <= h["val_acc"] <= 1.0
        assert h["modelled_peak_mib"] > 0
    assert result["compute"]["forward_flops_per_image"] > 0
    assert result["memory"]["param_mib"] > 0
    assert not (tmp_path / "checkpoint.pt").exists(), "checkpoint left behind after success"


@pytest.mark.parametrize("name", METHODS.names())
def test_method_options_are_checked(name):
    cls = METHODS.get(name)
    assert cls.name == name, "Method.name must equal its registry name"
    assert cls.resolve_options({}) == cls.defaults
    with pytest.raises(ConfigError, match="accepted options"):
        cls.resolve_options({"surely_not_an_option": 1})


@pytest.mark.parametrize("name", METHODS.names())
def test_method_state_round_trips(name):
    # A fresh method's state loads into another instance and comes back unchanged (the trained
    # round trip is covered by each study's resume tests).
    cls = METHODS.get(name)
    method = cls(cls.resolve_options({}))
    state = method.state_dict()
    clone = cls(cls.resolve_options({}))
    clone.load_state_dict(state)
    assert _same(clone.state_dict(), state)
    assert isinstance(method.buffer_bytes(), int) and method.buffer_bytes() >= 0


def _same(a, b) -> bool:
    """Structural equality that compares tensors by value."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


def test_base_method_cannot_fit_without_a_loop():
    with pytest.raises(NotImplementedError):
        Method({}).fit(None)  # type: ignore[arg-type]
