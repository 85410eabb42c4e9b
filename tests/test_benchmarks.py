"""Planning at scale (benchmarks/plan_scale.py measures it; these tests keep it correct): the
cached cell resolver and the registry index give exactly the answers of the plain code; the GPU
check runs at smoke sizes on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import registry
from bench.config import (
    ROOT,
    CellResolver,
    check_config,
    config_hash,
    load_config,
    plan,
    resolve_cell,
)
from bench.errors import ConfigError
from bench.methods import METHODS


@pytest.fixture
def index_mode(tmp_path, monkeypatch):
    """Catalogs read and write an index under tmp_path, as in a process without torch."""
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(registry.INDEX_ENV, raising=False)
    monkeypatch.setattr(registry, "_live_loaded", lambda: False)
    monkeypatch.setattr(registry, "_CATALOG", None)
    path = registry.index_path()
    assert path.parent == tmp_path / "cache"
    return path


def test_the_resolver_gives_every_cell_what_resolve_cell_gives():
    cfg = check_config(load_config([ROOT / "config" / "config.yaml"]))
    resolver = CellResolver(cfg)
    for cell in plan(cfg):
        cached = resolver.resolve(cell)
        plain = resolve_cell(cfg, cell)
        assert cached == plain
        assert config_hash(cached) == config_hash(plain)
        assert resolver.json(cell) == json.dumps(plain, sort_keys=True)
        assert resolver.resolve(cell) is cached  # remembered


def test_resolve_cell_returns_an_independent_config():
    cfg = check_config(load_config([ROOT / "config" / "config.yaml"]))
    cell = plan(cfg)[0]
    a = resolve_cell(cfg, cell)
    a["train"]["lr"] = -1.0
    a["data"]["flip"] = "changed"
    assert resolve_cell(cfg, cell) != a
    study = cfg["studies"][cell.study]
    assert study.get("train", {}).get("lr") != -1.0


def test_the_index_answers_as_the_registries_do(index_mode):
    live_methods = METHODS
    cat = registry.Catalog()
    assert cat.uses_index
    cat.save()
    assert index_mode.is_file()
    assert cat.methods().names() == live_methods.names()
    for name in live_methods.names():
        cls = live_methods.get(name)
        for flag in registry.METHOD_FLAGS:
            assert cat.method_flag(name, flag) == bool(getattr(cls, flag))
        indexed = cat.methods().get(name)
        assert indexed.defaults == json.loads(json.dumps(cls.defaults))
        assert indexed.owns_loop == cls.owns_loop and indexed.name == cls.name
        with pytest.raises(AttributeError, match="data attributes"):
            indexed.resolve_options  # noqa: B018 - a method is not data: no silent default
        opts = (cls.test_study.get("method_options") or {}).get(name, {})
        assert json.dumps(cat.resolve_method_options(name, opts), sort_keys=True) == json.dumps(
            cls.resolve_options(opts), sort_keys=True)
        with pytest.raises(ConfigError) as from_index:
            cat.resolve_method_options(name, {"no_such_option": 1})
        with pytest.raises(ConfigError) as from_class:
            cls.resolve_options({"no_such_option": 1})
        assert str(from_index.value) == str(from_class.value)
    cat.save()
    # a second process reads the file: every answer above without importing a registry
    reread = registry.Catalog()
    assert reread._index["fingerprint"] == cat._index["fingerprint"]

    def no_import():
        raise AssertionError("the index should have answered")

    original = registry._live
    registry._live = no_import
    try:
        for name in live_methods.names():
            with pytest.raises(ConfigError):
                reread.resolve_method_options(name, {"no_such_option": 1})
        assert "sgd" in reread.methods() and "nope" not in reread.models()
        assert "Did you mean 'sgd'" in reread.methods().unknown_message("sgdd")
    finally:
        registry._live = original


def test_a_changed_source_rebuilds_the_index(index_mode, monkeypatch):
    registry.Catalog().save()
    first = json.loads(index_mode.read_text())["fingerprint"]
    monkeypatch.setattr(registry, "source_fingerprint", lambda: "another source")
    cat = registry.Catalog()
    assert cat._index["fingerprint"] == "another source" != first
    cat.save()
    assert json.loads(index_mode.read_text())["fingerprint"] == "another source"


def test_a_config_checked_from_the_index_equals_one_checked_from_the_registries(index_mode):
    cfg = load_config([ROOT / "config" / "config.yaml"])
    from_index = check_config(cfg)
    registry._CATALOG = None
    assert registry.catalog().uses_index
    bad = {**cfg, "studies": {**cfg["studies"]}}
    bad["studies"]["restwake"] = {**cfg["studies"]["restwake"],
                                  "method_options": {"sgd": {"bogus": 1}}}
    with pytest.raises(ConfigError, match="bogus"):
        check_config(bad)
    registry._CATALOG = None
    with pytest.MonkeyPatch.context() as m:
        m.setattr(registry, "_live_loaded", lambda: True)
        assert check_config(cfg) == from_index


def test_checks_answered_before_are_read_from_the_index_without_torch(
        index_mode, tmp_path, monkeypatch):
    """check_config's claims and model/dataset checks (torch, SciPy) are remembered per source
    and study config: a second process gives the same config and the same problems, importing
    neither; a changed claims file is checked anew."""
    good = load_config([ROOT / "config" / "smoke.yaml"])
    bad = json.loads(json.dumps(good))
    bad["studies"]["baseline"]["metrics"] = ["val_acc", "val_acuracy"]
    expected = {"good": json.loads(json.dumps(check_config(good)))}
    with pytest.raises(ConfigError) as e:
        check_config(bad)
    expected["bad"] = str(e.value)
    assert "val_acuracy" in expected["bad"]
    code = (
        "import json, sys\n"
        "from bench.config import check_config\n"
        "from bench.errors import ConfigError\n"
        "out = {'good': check_config(json.loads(sys.argv[1]))}\n"
        "try:\n    check_config(json.loads(sys.argv[2]))\n"
        "except ConfigError as e:\n    out['bad'] = str(e)\n"
        "out['heavy'] = sorted({'torch', 'scipy'} & set(sys.modules))\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, registry.CACHE_ENV: str(index_mode.parent)}
    env.pop(registry.INDEX_ENV, None)
    run = subprocess.run([sys.executable, "-c", code, json.dumps(good), json.dumps(bad)],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    out = json.loads(run.stdout)
    assert out.pop("heavy") == []
    assert out == expected
    memo = json.loads(index_mode.read_text())["checks"]
    assert any(k.startswith("claims:") for k in memo) and any(
        k.startswith("components:") for k in memo)

    import bench.config as config_module

    real = config_module.claims_path
    edited = tmp_path / "claims.yaml"
    edited.write_text(real("neuroflux").read_text().replace("versus: backprop",
                                                            "versus: nosuchmethod"))
    monkeypatch.setattr(config_module, "claims_path",
                        lambda study: edited if study == "neuroflux" else real(study))
    with pytest.raises(ConfigError, match="nosuchmethod"):
        check_config(good)


def test_speed_options_are_off_by_default_and_leave_the_config_hash_alone(tmp_path):
    from tests.conftest import tiny_cell

    cfg = tiny_cell(tmp_path)
    assert "precision" not in cfg["train"] and "channels_last" not in cfg["train"]


def test_a_bf16_channels_last_cell_runs_and_says_so(tmp_path):
    import pandas as pd

    from bench.aggregate import cells_table
    from bench.report import _numerics_mark
    from bench.train import numerics_refusal, run_cell
    from tests.conftest import tiny_cell

    plain = run_cell(tiny_cell(tmp_path / "a"), tmp_path / "a" / "result.json")
    fast_cfg = tiny_cell(tmp_path / "b", train={"batch_size": 32, "lr": 0.05, "momentum": 0.9,
                                               "warmup_steps": 1, "precision": "bf16",
                                               "channels_last": True})
    assert config_hash(fast_cfg) != plain["config_hash"]
    fast = run_cell(fast_cfg, tmp_path / "b" / "result.json")
    assert fast["status"] == "ok", fast["reason"]
    assert fast["numerics"] == {"precision": "bf16", "channels_last": True}
    assert plain["numerics"] == {"precision": "fp32", "channels_last": False}
    assert fast["final"]["precision"] == "bf16" and fast["final"]["channels_last"] is True
    assert "precision" not in plain["final"]  # the papers' numerics add no column
    table = cells_table([plain, {**fast, "axes": {**fast["axes"], "seed": 1}}])
    marks = [_numerics_mark(r) for _, r in table.iterrows()]
    assert marks == ["", " [bf16, channels_last]"]
    assert "bf16" in numerics_refusal(table, "peak_alloc_mib")
    assert numerics_refusal(table, "val_acc") is None  # accuracy claims take them (marked)
    assert numerics_refusal(table[table["seed"] == 0], "peak_alloc_mib") is None
    assert numerics_refusal(pd.DataFrame({"seed": [0]}), "activation_mib") is None


def test_an_unknown_precision_is_refused_before_any_job(tmp_path):
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError, match="precision"):
        tiny_config(tmp_path, train={"batch_size": 32, "precision": "fp16"})


# ----------------------------------------------------------------------------- the GPU check


def test_the_gpu_check_runs_on_cpu_with_smoke_sizes(tmp_path):
    """Every section at tiny sizes: two numerics of a model, NeuroFlux's profile and blocks,
    2 and 4 cells sharing a (simulated) device through bench.slots, the paper projection."""
    out = tmp_path / "gc"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                           "--out-dir", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["smoke"] and doc["errors"] == {}
    # check_config validates claims files (bench.claims needs pandas); nothing else of the harness
    assert not any(doc["imported"][m] for m in ("snakemake", "mlflow", "sklearn"))
    fp32, fast = doc["models"]
    assert (fp32["precision"], fast["precision"], fast["channels_last"]) == ("fp32", "bf16", True)
    for row in (fp32, fast):
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
        assert row["modelled_peak_mib"] > 0 and row["epoch_s"] > 0
        assert row["peak_alloc_mib"] is None  # CPU: no accelerator peak
    nf = doc["neuroflux"]
    assert nf["status"] == "ok" and nf["profile"]["units"] and nf["blocks"]
    assert all(u["a_mib_per_sample"] > 0 for u in nf["profile"]["units"])
    assert [s["cells"] for s in doc["sharing"]] == [2, 4]
    for s in doc["sharing"]:
        assert len(s["per_cell"]) == s["cells"] and s["total_images_per_s"] > 0, s
        assert sorted(s["slots"]) == [f"0:{i}" for i in range(s["cells"])]
    paper = doc["paper"]["studies"]
    first = fp32["study"]
    assert paper[first]["gpu_hours"] > 0 and paper[first]["cells"] > 0
    md = (out / "gpu_check.md").read_text()
    for heading in ("| study | model |", "| unit | a MiB/sample", "| block | units |",
                    "| cells sharing one GPU |", "| config/paper.yaml study |"):
        assert heading in md


def test_every_lazy_dataset_entry_imports_its_module_and_registers_under_its_name():
    from bench.data import DATASETS
    from bench.registry import Registry

    for name in DATASETS.names():
        assert callable(DATASETS.get(name))
        assert name in DATASETS._entries and name not in DATASETS._lazy
    reg = Registry("thing")
    reg.lazy("a", "json:dumps")
    assert "a" in reg and reg.names() == ["a"]
    assert reg.get("a") is json.dumps
    with pytest.raises(ValueError, match="twice"):
        reg.lazy("a", "json:loads")
    reg.lazy("b", "json:loads")
    with pytest.raises(ValueError, match="declared as json:loads"):
        reg.register("b")(json.dumps)
