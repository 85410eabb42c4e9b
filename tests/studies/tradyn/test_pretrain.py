"""Upstream stages: the pretrained backbone (rule `pretrain`), loading it with clear errors, and
the offline layer ranking (rule `rank_layers`)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.config import (
    Cell,
    check_config,
    pretrain_checkpoint,
    pretrain_spec,
    ranking_path,
    ranking_spec,
    resolve_cell,
)
from bench.errors import BenchError, ConfigError
from bench.models import build_model
from bench.pretrain import load_backbone, pretrain
from bench.studies.tradyn.ranking import rank_layers
from tests.conftest import TINY_STUDY, run_cli, tiny_config

UPSTREAM = {"dataset": "synthetic", "epochs": 1,
            "data": {"image_size": 16}, "train": {"batch_size": 32}}


def test_load_backbone_takes_all_but_the_classifier(tmp_path):
    src = build_model("resnet18_cifar", 7, 3, {"width": 0.125})
    path = tmp_path / "up.pt"
    torch.save(src.state_dict(), path)
    dst = build_model("resnet18_cifar", 4, 3, {"width": 0.125})  # another head
    fc_before = dst.fc.weight.clone()
    load_backbone(dst, path)
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        if not name.startswith("fc."):
            assert torch.equal(a, b), name
    assert torch.equal(dst.fc.weight, fc_before)


def test_load_backbone_errors_say_what_is_wrong(tmp_path):
    model = build_model("resnet18_cifar", 4, 3, {"width": 0.125})
    with pytest.raises(BenchError, match="does not exist: run the workflow's pretrain rule"):
        load_backbone(model, tmp_path / "nope.pt")
    other = build_model("resnet18_cifar", 4, 3, {"width": 0.25})
    torch.save(other.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(BenchError, match="does not match the model.*of another shape"):
        load_backbone(model, tmp_path / "wide.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="cannot be read"):
        load_backbone(model, tmp_path / "junk.pt")


def test_pretrain_then_rank_layers_then_a_cell_starts_from_the_backbone(tmp_path):
    cfg = tiny_config(tmp_path, pretrain=UPSTREAM, ranking={"epochs": 1, "fraction": 0.9})
    spec = pretrain_spec(cfg, "t", "resnet18_cifar")
    ckpt = tmp_path / "up" / "model.pt"
    ckpt.parent.mkdir()
    pretrain(spec, ckpt)
    assert ckpt.is_file() and (ckpt.parent / "result.json").is_file()
    assert pretrain_checkpoint(cfg, "t", "resnet18_cifar").endswith("/model.pt")

    rspec = {**ranking_spec(cfg, "t", "resnet18_cifar", "synthetic"),
             "init_checkpoint": str(ckpt)}
    out = tmp_path / "ranking.json"
    ranking = rank_layers(rspec, out)
    on_disk = json.loads(out.read_text())
    # the workflow runs it as `python -m bench rank-layers`: a fresh process finds the stage
    proc = run_cli("rank-layers", "--spec", json.dumps(rspec), "--out", str(tmp_path / "cli.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "cli.json").read_text())["layer_names"] == ranking["layer_names"]
    assert on_disk == json.loads(json.dumps(ranking))
    assert 0 < ranking["k"] <= ranking["n_layers"] == len(ranking["scores"])
    assert set(ranking["layer_names"]) <= set(ranking["scores"])
    top = sorted(ranking["scores"].values(), reverse=True)
    held = sum(ranking["scores"][n] for n in ranking["layer_names"]) / sum(top)
    assert held >= 0.9

    # a cell of the study names the checkpoint, and its model starts from it
    cell = resolve_cell(cfg, Cell("t", "sgd", "resnet18_cifar", "synthetic", "none", 0))
    assert cell["inputs"]["init_checkpoint"] == pretrain_checkpoint(cfg, "t", "resnet18_cifar")
    assert "ranking" not in cell["inputs"]  # sgd needs no ranking
    cell["inputs"]["init_checkpoint"] = str(ckpt)
    from bench.train import build_run

    run = build_run(cell, tmp_path, torch.device("cpu"))
    state = torch.load(ckpt, weights_only=True)
    own = run.model.state_dict()
    for name, value in state.items():
        if not name.startswith("fc."):
            assert torch.equal(own[name], value), name


def test_stage_paths_follow_their_settings():
    cfg = check_config({"studies": {"t": {**TINY_STUDY, "pretrain": UPSTREAM}}})
    a = pretrain_checkpoint(cfg, "t", "resnet18_cifar")
    changed = check_config({"studies": {"t": {**TINY_STUDY,
                                              "pretrain": {**UPSTREAM, "epochs": 2}}}})
    assert pretrain_checkpoint(changed, "t", "resnet18_cifar") != a
    assert ranking_path(changed, "t", "resnet18_cifar", "synthetic") != ranking_path(
        cfg, "t", "resnet18_cifar", "synthetic")


def test_user_checkpoint_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_config({"studies": {"t": {**TINY_STUDY,
                                        "pretrain": {"checkpoint": str(tmp_path / "x.pt")}}}})
    (tmp_path / "x.pt").write_bytes(b"")  # exists, but is no checkpoint: refused up front
    with pytest.raises(ConfigError, match="cannot be read as a checkpoint of weights"):
        check_config({"studies": {"t": {**TINY_STUDY,
                                        "pretrain": {"checkpoint": str(tmp_path / "x.pt")}}}})
    import torch

    from bench.models import build_model

    torch.save(build_model("resnet18_cifar", 4, 3, {"width": 0.125}).state_dict(), tmp_path / "x.pt")
    cfg = check_config({"studies": {"t": {**TINY_STUDY,
                                          "pretrain": {"checkpoint": str(tmp_path / "x.pt")}}}})
    assert pretrain_checkpoint(cfg, "t", "resnet18_cifar") == str(tmp_path / "x.pt")
    assert pretrain_spec(cfg, "t", "resnet18_cifar") is None


def test_pretrain_needs_a_dataset_and_epochs():
    with pytest.raises(ConfigError, match="needs dataset"):
        check_config({"studies": {"t": {**TINY_STUDY, "pretrain": {"epochs": 2}}}})
