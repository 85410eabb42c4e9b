"""Configuration: schema, names, defaults, the plan, seeds and hashes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

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


def test_the_cluster_overlay_keeps_every_study_method_and_budget_of_smoke_once():
    """scripts/cluster/test.sh runs smoke.yaml + cluster.yaml: one seed of every smoke cell."""
    smoke = check_config(load_config([ROOT / "config" / "smoke.yaml"]))
    both = check_config(load_config([ROOT / "config" / "smoke.yaml",
                                     ROOT / "config" / "cluster.yaml"]))

    def kinds(cells):
        return {(c.study, c.method, c.model, c.dataset, c.budget) for c in cells}

    assert kinds(plan(both)) == kinds(plan(smoke))
    assert {c.seed for c in plan(both)} == {0} and len(plan(both)) == len(kinds(plan(smoke)))


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml"])
def test_a_job_steps_shallow_check_gives_the_same_config_without_torch(name):
    """deep=False (a cluster job step re-reading its checked config) changes nothing in the
    config, hence in any cell's hash, and imports neither torch nor SciPy."""
    path = ROOT / "config" / name
    deep = check_config(load_config([path]))
    code = ("import json, sys; from bench.config import check_config, load_config; "
            f"cfg = check_config(load_config([{str(path)!r}]), deep=False); "
            "print(json.dumps({'cfg': cfg, 'heavy': sorted({'torch', 'scipy'} & set(sys.modules))}))")

    def shallow() -> dict:
        return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                         text=True, check=True, cwd=ROOT).stdout)

    shallow()  # may build this checkout's registry index first (that imports torch)
    out = shallow()
    assert out["heavy"] == []
    assert out["cfg"] == json.loads(json.dumps(deep))


def test_an_unknown_metric_is_caught_by_the_deep_check_only():
    cfg = cfg_with(metrics=["val_acc", "val_acuracy"])
    check_config(copy.deepcopy(cfg), deep=False)  # what only the main process checks
    with pytest.raises(ConfigError, match="val_acuracy"):
        check_config(cfg)


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
    n_cells = len(plan(load_config([ROOT / "config" / "smoke.yaml"])))
    assert f"configuration is valid: {n_cells} cells" in ok.stdout


# ----------------------------------------------------------------------------- before any job


@pytest.mark.parametrize("overrides,needle", [
    ({"metrics": ["val_acc", "val_ac"]}, "unknown metric 'val_ac'. Did you mean 'val_acc'?"),
    ({"budgets": [512, "512"]}, "more than once"),
    ({"budgets": [512, 512.0]}, "non-unique"),
    ({"train": {"lr": float("nan")}}, "studies.t.train.lr: must be a finite number"),
    ({"model": {"width": float("inf")}}, "studies.t.model.width: must be a finite number"),
    ({"model_options": {"resnet18_cifar": {"widht": 0.5}}}, "does not accept option(s) 'widht'"),
    ({"model_options": {"resnet18_cifar": {"width": -1}}}, "'width' must be a positive number"),
    ({"data_options": {"synthetic": {"n_trian": 8}}}, "unknown data option(s) 'n_trian'"),
    ({"data_options": {"synthetic": {"n_train": 0}}}, "n_train must be a positive integer"),
    ({"data": {"image_size": 16, "classes": [0, 9]}}, "classes must be distinct class indices"),
    ({"data": {"image_size": 16, "train_subset": 1}}, "train_subset must be an integer >= 2"),
    ({"models": ["vgg16"]}, ("model 'vgg16' on dataset 'synthetic' (3x16x16 images): the model "
                             "cannot run on 16x16 images")),
    # data larger than asked for, and a single class (val_acc 1.0), before any job
    ({"datasets": ["digits"], "data_options": {}, "data": {"image_size": 16,
                                                           "train_subset": 5000}},
     "train_subset is 5000 but the train split holds only 1437 images; use at most 1437"),
    ({"datasets": ["digits"], "data_options": {}, "data": {"image_size": 16, "classes": [0, 1],
                                                           "val_subset": 100}},
     "val_subset is 100 but the validation split of classes [0, 1] holds only 72 images"),
    ({"data": {"image_size": 16, "val_subset": 65}},
     "val_subset is 65 but the validation split holds only 64 images"),
    ({"datasets": ["digits"], "data_options": {}, "data": {"image_size": 16, "classes": [3]}},
     "classes keeps 1 class: a classifier needs at least two"),
    ({"data_options": {"synthetic": {"n_train": 64, "n_val": 32, "num_classes": 1}}},
     "it has 1 class: a classifier needs at least two"),
    ({"data_options": {"synthetic": {"n_train": 64, "n_val": 2, "num_classes": 4}},
      "data": {"image_size": 16, "classes": [2, 3]}},
     "the validation split of classes [2, 3] holds 0 image(s), fewer than 1"),
])
def test_bad_input_is_one_line_before_any_job(overrides, needle):
    with pytest.raises(ConfigError) as err:
        check_config(cfg_with(**overrides))
    text = str(err.value)
    assert needle in text, text
    assert len(text.splitlines()) == 1, text


def test_the_smallest_image_of_a_model_is_accepted():
    check_config(cfg_with(models=["vgg16"], data={"image_size": 32}))


@pytest.mark.parametrize("name", ["x$(touch f)", "a/b", "..", ".hidden", "a b", "ü"])
def test_study_names_are_folder_names(name):
    with pytest.raises(ConfigError, match="is not a valid name: it (holds|starts with)"):
        check_config({"studies": {name: copy.deepcopy(TINY_STUDY)}})


def test_method_metrics_are_known_and_patterns_match():
    check_config(cfg_with(methods=["dense", "topk_s1"], reference="dense",
                          metrics=["val_acc", "acc_at_r0.1", "mean_keep_ratio"]))
    with pytest.raises(ConfigError, match="acc_at_r0.1"):
        check_config(cfg_with(metrics=["acc_at_r0.1"]))  # sgd has no such metric


def test_validate_refuses_a_device_that_is_not_here(tmp_path):
    import torch
    import yaml

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = tmp_path / "cuda.yaml"
    cfg.write_text(yaml.safe_dump({**cfg_with(), "device": "cuda"}))
    proc = run_cli("validate", "--configfile", str(cfg))
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    ok = run_cli("validate", "--no-device-check", "--configfile", str(cfg))
    assert ok.returncode == 0, ok.stderr


def test_cell_config_file_reruns_changed_cells_only(tmp_path):
    """write_cell_config: a new digest is a new file newer than the result; a file for a
    result that holds the same config is dated before it; the training job keeps only its own."""
    import json
    import os
    import time

    from bench.config import cell_dir, drop_other_cell_configs, write_cell_config

    cfg = check_config({**cfg_with(), "results": str(tmp_path)})
    cell = plan(cfg)[0]
    resolved = resolve_cell(cfg, cell)
    result = cell_dir(tmp_path, cell) / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"config": resolved}))
    past = time.time() - 100
    os.utime(result, (past, past))
    same = write_cell_config(tmp_path, cell, resolved)
    assert json.loads(same.read_text()) == resolved
    assert same.stat().st_mtime < result.stat().st_mtime
    changed = copy.deepcopy(resolved)
    changed["train"]["lr"] = 0.5
    new = write_cell_config(tmp_path, cell, changed)
    assert new != same and same.exists(), "planning (a dry run too) never deletes"
    assert new.stat().st_mtime > result.stat().st_mtime
    drop_other_cell_configs(new)  # what the job that trains the cell does
    assert new.exists() and not same.exists()


# ----------------------------------------------------------------------------- fail early


def test_a_key_given_twice_in_a_config_file_is_refused_with_its_lines(tmp_path):
    """YAML keeps the last of two equal keys without a word: `lr: 0.1` then `lr: 0.01`
    trained at 0.01."""
    path = tmp_path / "c.yaml"
    path.write_text("studies:\n  t:\n    epochs: 2\n    train:\n      lr: 0.1\n"
                    "      lr: 0.01\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value) == (
        f"config file {path}, line 6: key 'lr' is given twice in the same mapping (first on "
        f"line 5); YAML would silently keep the last one: remove or rename one of them")
    path.write_text("base: &b {lr: 0.1, epochs: 2}\nstudies:\n  t:\n    <<: *b\n"
                    "    lr: 0.5\n")  # a merge key's entries may be overridden: YAML's meaning
    assert load_config([path])["studies"]["t"] == {"lr": 0.5, "epochs": 2}


def test_a_key_given_twice_in_a_claims_file_is_refused(tmp_path):
    from bench.claims import load_claims

    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n  - id: a\n    metric: val_acc\n    metric: val_loss\n")
    with pytest.raises(ConfigError, match="line 4: key 'metric' is given twice"):
        load_claims(path)


def test_the_workflow_refuses_a_key_given_twice(tmp_path):
    """Snakemake parses --configfile itself (keeping the last key): the Snakefile reads the
    files again with the strict loader (bench.config.check_config_files)."""
    from bench.config import check_config_files

    path = tmp_path / "c.yaml"
    path.write_text("threads: 1\nthreads: 2\n")
    with pytest.raises(ConfigError, match="key 'threads' is given twice"):
        check_config_files([path])
    assert "check_config_files(workflow.configfiles)" in (ROOT / "rules" / "common.smk").read_text()


def _checkpoint_cfg(path):
    return cfg_with(pretrain={"checkpoint": str(path)})


def test_validate_refuses_a_pretrain_checkpoint_that_is_no_checkpoint_of_the_model(tmp_path):
    """It passed validate; each cell then failed, advising a pretrain rule that a study with
    its own checkpoint does not have."""
    import torch

    from bench.models import build_model

    notes = tmp_path / "notes.pt"
    notes.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read as a checkpoint of weights"):
        check_config(_checkpoint_cfg(notes))
    wide = tmp_path / "wide.pt"
    torch.save(build_model("resnet18_cifar", 4, 3, {"width": 0.25}).state_dict(), wide)
    with pytest.raises(ConfigError) as err:
        check_config(_checkpoint_cfg(wide))
    text = str(err.value)
    assert "does not fit model 'resnet18_cifar'" in text and "of another shape" in text, text
    assert len(text.splitlines()) == 1
    plain = tmp_path / "plain.pt"
    torch.save({"epochs": 3}, plain)
    with pytest.raises(ConfigError, match="holds no model weights"):
        check_config(_checkpoint_cfg(plain))
    good = tmp_path / "good.pt"  # another classifier (10 classes, not 4) is fine: it is new
    torch.save(build_model("resnet18_cifar", 10, 3, {"width": 0.125}).state_dict(), good)
    check_config(_checkpoint_cfg(good))


@pytest.fixture
def fresh_warnings(monkeypatch):
    from bench import config

    monkeypatch.setattr(config, "_WARNED", set())  # each warning is printed once per process


def test_budgets_given_to_a_method_that_ignores_them_are_warned_with_its_name(capsys,
                                                                              fresh_warnings):
    check_config(cfg_with(budgets=["16MiB", "32MiB"], methods=["sgd", "plain"],
                          variants={"plain": {"method": "sgd"}}))
    err = capsys.readouterr().err
    assert ("warning: studies.t: method 'plain' (a variant of 'sgd') ignores memory budgets, "
            "yet it is given 16MiB, 32MiB") in err, err
    assert "Give it `method_budgets: {sgd: [none]}`" in err, err
    check_config(cfg_with(budgets=["16MiB"], methods=["sgd", "backprop"], reference="backprop",
                          method_budgets={"sgd": ["none"]}))
    assert "ignores memory budgets" not in capsys.readouterr().err  # sized to it: no warning


def test_a_plan_of_ten_thousand_seeds_is_warned_about(capsys, fresh_warnings):
    check_config(cfg_with(seeds=10_000))
    err = capsys.readouterr().err
    assert "warning: the plan has 10,000 cells (t: 10,000, with 10,000 seeds)" in err, err
    assert "lower `seeds`" in err
    check_config(cfg_with(seeds=3))
    assert "warning" not in capsys.readouterr().err


def test_cell_config_files_are_written_compactly(tmp_path):
    from bench.config import write_cell_config

    cfg = check_config(cfg_with())
    cell = plan(cfg)[0]
    resolved = resolve_cell(cfg, cell)
    path = write_cell_config(tmp_path, cell, resolved)
    text = path.read_text()
    assert text.count("\n") == 1 and ": " not in text  # one line, no indentation
    assert json.loads(text) == resolved
