"""The TraDy-study methods (study `tradyn`): budgets, which weights move, dynamic vs static
selections, the RGN selection, the ranking file, errors, resume determinism and the real
activation saving. Tiny MobileNetV2 (width 0.25) on synthetic 16x16 images, run in-process."""

from __future__ import annotations

import copy
import json
from itertools import islice

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.config import config_hash
from bench.data import DeviceLoader
from bench.errors import BudgetError, ConfigError
from bench.methods import METHODS
from bench.studies.tradyn import channels as C
from bench.studies.tradyn import checks
from bench.studies.tradyn.base import budget_units, example_input
from bench.train import Checkpoint, build_run, fit, run_cell
from tests.conftest import tiny_cell

BUDGET = 5000  # units; channels of the tiny MobileNetV2 cost 13..1284 units
STUDY = {
    "models": ["mobilenetv2_cifar"],
    "model": {"width": 0.25},
    "epochs": 2,
    # the paper's optimiser: SGD without momentum or weight decay
    "train": {"batch_size": 32, "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0,
              "warmup_steps": 1},
    "data_options": {"synthetic": {"n_train": 96, "n_val": 32, "num_classes": 4}},
}
CHANNEL_METHODS = ["tradyn", "d_full_random", "d_det_rgn", "s_full_random", "s_det_rgn",
                   "s_topk_random"]
DYNAMIC = {"tradyn", "d_full_random", "d_det_rgn"}
RANKED_POOL = {"tradyn", "s_topk_random"}  # read the layer ranking
# two layers of the tiny MobileNetV2 with many cheap channels (240 x 13 and 240 x 44 units)
RANKED = ["features.15.conv.1.0", "features.16.conv.2"]


def make_cfg(tmp_path, method, budget=BUDGET, options=None, inputs=None, **overrides):
    study = {**STUDY, "methods": sorted({method, "sgd"}), "reference": "sgd",
             "budgets": [budget], **overrides}
    if options:
        study["method_options"] = {method: options}
    cfg = tiny_cell(tmp_path, method=method, **study)
    if inputs is not None:
        cfg["inputs"] = inputs
    return cfg


def make_run(tmp_path, method, **kw):
    run = build_run(make_cfg(tmp_path, method, **kw), tmp_path, torch.device("cpu"))
    run.method.setup(run)
    return run


def trace(run):
    """Record per epoch: the selection, parameters at the start (after selection) and end."""
    m = run.method
    records: list[dict] = []
    start, end = m.on_epoch_start, m.on_epoch_end

    def on_start(r, epoch):
        phase = start(r, epoch)
        records.append({"selection": sorted(m.selection),
                        "before": {n: p.detach().clone() for n, p in r.model.named_parameters()}})
        return phase

    def on_end(r, epoch):
        records[-1]["after"] = {n: p.detach().clone() for n, p in r.model.named_parameters()}
        out = end(r, epoch)
        records[-1]["metrics"] = out
        return out

    m.on_epoch_start, m.on_epoch_end = on_start, on_end  # type: ignore[method-assign]
    return records


def changed_channels(infos, rec) -> set[tuple[int, int]]:
    """(layer, input channel) whose weight slice moved during the epoch."""
    out = set()
    for i, info in enumerate(infos):
        key = f"{info.name}.weight"
        d = (rec["after"][key] - rec["before"][key]).abs()
        d = d.reshape(info.groups, info.out_per_group, info.in_per_group, -1).sum(dim=(1, 3))
        out |= {(i, int(c)) for c in torch.nonzero(d.reshape(info.c_in) > 0).flatten()}
    return out


def moved(rec, name) -> bool:
    return not torch.equal(rec["before"][name], rec["after"][name])


def frozen_names(model):
    """Norm affine parameters and conv biases (frozen by the channel methods)."""
    names = []
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            names += [f"{mname}.weight", f"{mname}.bias"]
        elif isinstance(mod, nn.Conv2d) and mod.bias is not None:
            names.append(f"{mname}.bias")
    return names


# ----------------------------------------------------------------------------- units, support


def test_budget_units_convert_bytes_at_4_bytes_per_unit():
    assert budget_units("none") is None
    assert budget_units("27946") == 27946
    assert budget_units("27946units") == 27946
    assert budget_units("110kB") == 27500  # 110,000 bytes / 4
    assert budget_units("1MiB") == 2**20 / 4
    assert budget_units("1GiB") == 2**30 / 4


@pytest.mark.parametrize("name", CHANNEL_METHODS)
def test_channel_methods_need_a_budget(name, tmp_path):
    method = METHODS.get(name)(METHODS.get(name).resolve_options({}))
    ok, why = method.supports({"budget": "none"})
    assert not ok and "needs a memory budget" in why
    assert method.supports({"budget": "27946"}) == (True, "")


@pytest.mark.parametrize("name", ["full_ft", "last_layer"])
def test_unconstrained_methods_run_only_without_a_budget(name):
    method = METHODS.get(name)({})
    assert method.supports({"budget": "none"}) == (True, "")
    ok, why = method.supports({"budget": "27946"})
    assert not ok and "'none'" in why


# ----------------------------------------------------------------------------- what moves


def as_result(run):
    """The parts of a result.json that checks.py reads."""
    cfg = run.cfg
    return {"axes": {"study": cfg["study"], "method": cfg["method"], "model": cfg["model"],
                     "dataset": cfg["dataset"], "budget": str(cfg["budget"]),
                     "seed": cfg["seed_index"]},
            "status": run.status, "history": run.history,
            "final": run.method.final_metrics(run)}


@pytest.mark.parametrize("name", CHANNEL_METHODS)
def test_selection_fits_the_budget_and_only_selected_slices_move(name, tmp_path):
    options = {"ranking": "all"} if name in RANKED_POOL else None
    run = make_run(tmp_path, name, budget="20kB", options=options)  # 20,000 B = 5000 units
    records = trace(run)
    fit(run)
    infos = run.method.infos
    assert len(records) == 2 and len(run.history) == 2
    for rec, h in zip(records, run.history):
        sel = set(rec["selection"])
        assert sel, "the budget fits some channels"
        assert h["budget_units"] == 5000.0
        assert 0 < h["selected_memory_units"] <= h["budget_units"]
        # fill: skip fills the budget (channels cost 13..1284 units: within 13 of 5000)
        assert h["budget_utilisation"] == h["selected_memory_units"] / 5000.0
        assert h["budget_utilisation"] >= 0.99 and h["pool_taken"] == 0.0
        costs = C.layer_unit_costs(infos)
        assert h["selected_memory_units"] == sum(costs[i] for i, _ in sel)
        expected = C.sparsity_metrics(infos, sel)
        for key in ("weight_sparsity", "activation_sparsity", "wgrad_flops_saved",
                    "selected_channels"):
            assert h[key] == pytest.approx(expected[key])
        assert h["selected_layers"] == len({i for i, _ in sel})
        # exactly the selected slices moved (plain SGD: a zero gradient means no update)
        assert changed_channels(infos, rec) == sel
        assert moved(rec, "fc.weight") and moved(rec, "fc.bias")
        assert not any(moved(rec, n) for n in frozen_names(run.model)), "BN/bias must be frozen"
    first, second = (r["selection"] for r in records)
    if name in DYNAMIC:
        assert first != second, "a dynamic method reselects every epoch"
        assert run.history[0]["selection_id"] != run.history[1]["selection_id"]
    else:
        assert first == second, "a static method keeps its selection"
    final = run.method.final_metrics(run)
    assert final["mean_weight_sparsity"] == pytest.approx(
        sum(h["weight_sparsity"] for h in run.history) / 2)
    assert final["weight_sparsity"] == run.history[-1]["weight_sparsity"]
    assert 0.9 < final["mean_weight_sparsity"] < 1.0
    assert final["selection_mode"] == ("dynamic" if name in DYNAMIC else "static")
    assert final["min_budget_utilisation"] >= 0.99
    # the mechanism checks of a tiny run: budget used every epoch, reselection as declared
    rows = checks.checks([as_result(run)])
    alive = [r for r in rows if r.check != "topk_restricts"]
    assert {r.check for r in alive} == {"budget_used", "selection_dynamics"}
    assert all(r.passed for r in alive), rows
    # a top-K method run with `ranking: all` has the whole network as its pool: the
    # degenerate TraDy (= D-Full-Random) that topk_restricts exists to catch
    topk = [r for r in rows if r.check == "topk_restricts"]
    assert len(topk) == (1 if name in RANKED_POOL else 0)
    assert not any(r.passed for r in topk), topk
    assert final["selection_pool"] == ("topk" if name in RANKED_POOL else "all")
    assert run.method.supports(run.cfg) == (True, "")


def test_full_ft_trains_every_parameter(tmp_path):
    run = make_run(tmp_path, "full_ft", budget="none", epochs=1)
    records = trace(run)
    fit(run)
    rec = records[0]
    assert all(moved(rec, n) for n, _ in run.model.named_parameters())
    infos = run.method.infos
    assert changed_channels(infos, rec) == set(C.all_channels(infos))
    h = run.history[0]
    assert h["weight_sparsity"] == h["activation_sparsity"] == h["wgrad_flops_saved"] == 0.0
    assert h["budget_units"] is None


def test_last_layer_trains_only_the_classifier(tmp_path):
    run = make_run(tmp_path, "last_layer", budget="none", epochs=1)
    bn_before = [b.clone() for b in run.model.buffers()]
    records = trace(run)
    fit(run)
    rec = records[0]
    assert {n for n, _ in run.model.named_parameters() if moved(rec, n)} == {"fc.weight",
                                                                            "fc.bias"}
    assert all(p.grad is None for n, p in run.model.named_parameters() if not n.startswith("fc."))
    assert any(not torch.equal(a, b) for a, b in zip(bn_before, run.model.buffers())), \
        "BatchNorm running statistics keep updating"
    h = run.history[0]
    assert h["weight_sparsity"] == h["activation_sparsity"] == 1.0
    assert h["selected_channels"] == 0.0


# ----------------------------------------------------------------------------- RGN


@pytest.mark.parametrize("batches", [None, 2])
def test_d_det_rgn_selects_the_highest_rgn_channels_without_disturbing_training(batches,
                                                                               tmp_path):
    """Default: the full gradient over the whole training split (96 images, 3 batches);
    option rgn_batches: the first batches only."""
    options = {} if batches is None else {"rgn_batches": batches}
    run = make_run(tmp_path, "d_det_rgn", options=options)
    method = run.method
    # the expected scores, computed independently on a copy of the model
    twin = copy.deepcopy(run.model)
    twin.train()
    infos = C.conv_layers(twin, example_input(run))
    loader = DeviceLoader(run.data.train_x, run.data.train_y, 32, mean=run.data.mean,
                          std=run.data.std, shuffle=False, augment=False, generator=None)
    n = len(run.data.train_y) if batches is None else 32 * batches
    assert n == (96 if batches is None else 64)
    for inputs, targets in islice(loader, batches):
        (F.cross_entropy(twin(inputs), targets, reduction="sum") / n).backward()
    expected = C.channel_rgn(infos)

    params = [p.detach().clone() for p in run.model.parameters()]
    buffers = [b.clone() for b in run.model.buffers()]
    rng = torch.get_rng_state()
    gen = run.generator.get_state()
    method.on_epoch_start(run, 0)
    # nothing of the training state moved
    assert all(torch.equal(a, b) for a, b in zip(params, run.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, run.model.buffers()))
    assert torch.equal(rng, torch.get_rng_state()) and torch.equal(gen, run.generator.get_state())
    assert all(p.grad is None for p in run.model.parameters())

    assert method.last_scores.keys() == expected.keys()
    for ch, v in expected.items():
        assert method.last_scores[ch] == pytest.approx(v, rel=1e-4, abs=1e-12)
    sel = set(method.selection)
    assert sel and sorted(sel) == sorted(
        C.deterministic_selection(expected, C.layer_unit_costs(infos), BUDGET))
    # by descending RGN: an unselected channel that outscores a selected one did not fit
    costs = C.layer_unit_costs(infos)
    used = sum(costs[i] for i, _ in sel)
    lowest = min(expected[ch] for ch in sel)
    passed_over = [ch for ch, v in expected.items() if ch not in sel and v > lowest]
    assert all(used + costs[ch[0]] > BUDGET for ch in passed_over)
    assert used >= 0.99 * BUDGET


# ----------------------------------------------------------------------------- ranking file


def write_ranking(path, names, model="mobilenetv2_cifar"):
    path.write_text(json.dumps({"model": model, "layer_names": names, "fraction": 0.97,
                                "k": len(names), "scores": {n: 1.0 for n in names}}))
    return str(path)


def test_tradyn_selects_only_from_the_ranked_layers(tmp_path):
    ranking = write_ranking(tmp_path / "ranking.json", RANKED)
    run = make_run(tmp_path, "tradyn", inputs={"ranking": ranking})
    infos = run.method.infos
    ranked = {i for i, info in enumerate(infos) if info.name in RANKED}
    assert len(ranked) == 2 and run.method.pool_layers == sorted(ranked)
    records = trace(run)
    fit(run)
    for rec, h in zip(records, run.history):
        layers = {i for i, _ in rec["selection"]}
        assert layers and layers <= ranked
        assert changed_channels(infos, rec) == set(rec["selection"])
        assert h["selected_memory_units"] <= BUDGET
    assert records[0]["selection"] != records[1]["selection"]
    final = run.method.final_metrics(run)
    assert final["pool_channels"] == sum(infos[i].c_in for i in ranked)
    assert final["ranking_k"] == 2.0 and final["conv_layers"] == len(infos)
    # two ranked layers of the network: the top-K restriction is alive
    row = checks.topk_restricts(as_result(run))
    assert row.passed and row.value.endswith(f"K = 2 of {len(infos)} conv layers"), row


def test_tradyn_rejects_a_ranking_for_another_model(tmp_path):
    ranking = write_ranking(tmp_path / "ranking.json", ["layer4.1.conv2", RANKED[0]],
                            model="resnet18_cifar")
    with pytest.raises(ConfigError, match="another model.*layer4.1.conv2.*regenerate"):
        make_run(tmp_path, "tradyn", inputs={"ranking": ranking})


def test_tradyn_without_a_ranking_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="inputs.ranking"):
        make_run(tmp_path, "tradyn", inputs={})
    # the cell's resolved config names the ranking the workflow writes; not made yet here
    assert "ranking" in make_cfg(tmp_path, "tradyn")["inputs"]
    with pytest.raises(ConfigError, match="does not exist"):
        make_run(tmp_path, "tradyn", inputs={"ranking": str(tmp_path / "missing.json")})
    with pytest.raises(ConfigError, match="option ranking"):
        METHODS.get("tradyn")({"ranking": "top3"})


# ----------------------------------------------------------------------------- budget errors


@pytest.mark.parametrize("name", ["d_full_random", "s_det_rgn"])
def test_a_budget_below_every_channel_fails_the_cell(name, tmp_path):
    cfg = make_cfg(tmp_path, name, budget=12)  # the cheapest channel costs 13 units
    with pytest.raises(BudgetError, match="smaller than the cheapest channel"):
        run_cell(cfg, tmp_path / "result.json", tracker=None)


# ----------------------------------------------------------------------------- resume


def _comparable(history):
    keys = ("selection_id", "selected_channels", "selected_memory_units", "weight_sparsity",
            "activation_sparsity", "wgrad_flops_saved", "train_loss", "train_acc", "val_loss",
            "val_acc")
    return [{k: h[k] for k in keys} for h in history]


@pytest.mark.parametrize("name", ["tradyn", "s_topk_random"])
def test_stop_after_epoch_one_and_resume_matches_an_uninterrupted_run(name, tmp_path):
    kw = {"epochs": 3, "options": {"ranking": "all"} if name in RANKED_POOL else None}
    straight = make_run(tmp_path / "a", name, **kw)
    fit(straight)

    out = tmp_path / "b"
    first = make_run(out, name, **kw)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(out)

    def stop_after_first(r, record):
        checkpoint.save(r, {})
        r.status = "stopped"

    first.on_epoch = stop_after_first
    fit(first)
    assert len(first.history) == 1
    resumed = make_run(out, name, **kw)
    state = checkpoint.load(config_hash(resumed.cfg))
    assert state is not None and state["method"]["selection"]
    checkpoint.restore(resumed, state)
    fit(resumed)
    assert _comparable(resumed.history) == _comparable(straight.history)
    ids = [h["selection_id"] for h in straight.history]
    if name == "tradyn":
        assert len(set(ids)) == 3  # so a resume that redrew from the seed would be caught
    else:
        assert len(set(ids)) == 1
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- real saving


def test_save_selected_only_lowers_the_measured_activation_memory(tmp_path):
    histories = {}
    for flag in (False, True):
        run = make_run(tmp_path / str(flag), "tradyn", epochs=2,
                       options={"ranking": "all", "save_selected_only": flag})
        fit(run)
        histories[flag] = run.history
    for plain, selective in zip(histories[False], histories[True]):
        assert plain["selection_id"] == selective["selection_id"]  # the same selection
        assert selective["activation_mib"] < 0.9 * plain["activation_mib"]
        assert selective["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
