"""Configuration: schema, names, defaults, the plan, seeds and hashes."""

from __future__ import annotations

import copy

import pytest

from bench.config import (
    ROOT,
    Cell,
    check_config,
    config_hash,
    derive_seed,
    load_config,
    parse_budget,
    plan,
    resolve_cell,
)
from bench.errors import ConfigError
from tests.conftest import TINY_STUDY, run_cli


def cfg_with(**study_overrides):
    study = copy.deepcopy(TINY_STUDY)
    study.update(study_overrides)
    return {"studies": {"t": study}}


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = check_config(load_config([ROOT / "config" / name]))
    assert plan(cfg), "a shipped config plans no cells"


def test_unknown_top_level_key_is_rejected():
    cfg = cfg_with()
    cfg["epochz"] = 3
    with pytest.raises(ConfigError, match="epochz"):
        check_config(cfg)


def test_unknown_study_key_is_rejected():
    with pytest.raises(ConfigError, match="lerning_rate"):
        check_config(cfg_with(lerning_rate=0.1))


@pytest.mark.parametrize("axis,bad,valid", [
    ("methods", "sgdd", "sgd"),
    ("models", "resnet181", "resnet18_cifar"),
    ("datasets", "cifar11", "cifar10"),
])
def test_unknown_names_list_the_valid_choices(axis, bad, valid):
    overrides = {axis: [bad]}
    if axis == "methods":
        overrides["reference"] = bad
    if axis == "datasets":
        overrides["data_options"] = {}
    with pytest.raises(ConfigError) as err:
        check_config(cfg_with(**overrides))
    assert bad in str(err.value) and valid in str(err.value)
    assert "Valid" in str(err.value)


def test_reference_must_be_a_method_of_the_study():
    with pytest.raises(ConfigError, match="reference"):
        check_config(cfg_with(reference="nope"))


def test_unknown_method_option_names_accepted_ones():
    with pytest.raises(ConfigError, match="accepted options: .*momentum"):
        check_config(cfg_with(method_options={"sgd": {"momentom": 0.1}}))


def test_variant_resolves_to_its_method_with_options(tmp_path):
    cfg = check_config(cfg_with(methods=["sgd", "plain"],
                                variants={"plain": {"method": "sgd", "options": {"momentum": 0.0}}}))
    r = resolve_cell(cfg, Cell("t", "plain", "resnet18_cifar", "synthetic", "none", 0))
    assert r["method_impl"] == "sgd" and r["method_options"]["momentum"] == 0.0


def test_seed_is_paired_across_methods_and_differs_across_indices():
    cfg = check_config(cfg_with(methods=["sgd", "plain"], seeds=3,
                                variants={"plain": {"method": "sgd"}}))
    cells = plan(cfg)
    assert len(cells) == 2 * 3
    by_index: dict[int, set[int]] = {}
    for c in cells:
        by_index.setdefault(c.seed, set()).add(resolve_cell(cfg, c)["seed"])
    assert all(len(s) == 1 for s in by_index.values()), "seed depends on the method"
    assert len({next(iter(s)) for s in by_index.values()}) == 3
    assert derive_seed("a", "m", "d", 0) != derive_seed("b", "m", "d", 0)


def test_config_hash_tracks_settings_but_not_placement():
    cfg = check_config(cfg_with())
    cell = plan(cfg)[0]
    base = resolve_cell(cfg, cell)
    assert config_hash(base) == config_hash(copy.deepcopy(base))
    assert config_hash({**base, "threads": 8, "device": "cuda"}) == config_hash(base)
    changed = copy.deepcopy(base)
    changed["train"]["lr"] = 0.5
    assert config_hash(changed) != config_hash(base)


def test_budgets_parse_with_units():
    assert parse_budget("none") is None
    assert parse_budget("512MiB") == (512.0, "MiB")
    assert parse_budget("27946") == (27946.0, "units")
    cfg = check_config(cfg_with(budgets=[27946, "1GiB"]))
    assert {c.budget for c in plan(cfg)} == {"27946", "1GiB"}


def test_cell_id_round_trips():
    cell = Cell("s", "m", "mo", "d", "none", 3)
    assert Cell.from_id(cell.cell_id) == cell
    with pytest.raises(ConfigError):
        Cell.from_id("too/short")


def test_planning_ten_thousand_cells_is_quick():
    cfg = check_config(cfg_with(seeds=10000))
    cells = plan(cfg)
    assert len(cells) == 10000
    hashes = {config_hash(resolve_cell(cfg, c)) for c in cells[:200]}
    assert len(hashes) == 200


def test_cli_validate_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("studies:\n  t:\n    reference: sgd\n    methods: [sgd, adam]\n"
                   "    models: [resnet18_cifar]\n    datasets: [digits]\n    seeds: 1\n"
                   "    epochs: 1\n")
    proc = run_cli("validate", "--configfile", str(bad))
    assert proc.returncode == 2
    assert "unknown method 'adam'" in proc.stderr and "Traceback" not in proc.stderr
    ok = run_cli("validate", "--configfile", str(ROOT / "config" / "smoke.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "configuration is valid: 54 cells" in ok.stdout
