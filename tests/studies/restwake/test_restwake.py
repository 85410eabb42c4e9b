"""Rest-Wake (study `restwake`): REST epochs, the snapshot buffer and the device running mean,
BatchNorm re-estimation, the switching rule on scripted variance traces, the last epoch WAKE,
the improved variant's one extra fp16 copy, the mechanism checks, and a paper-config cell."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import ROOT, Cell, check_config, load_config, resolve_cell
from bench.data import DeviceLoader
from bench.errors import ConfigError
from bench.studies.restwake.checks import checks as restwake_checks
from bench.studies.restwake.phases import (
    REST,
    WAKE,
    RunningMean,
    SnapshotBuffer,
    recompute_batchnorm,
)
from bench.studies.restwake.restwake_improved import RestWakeImproved
from bench.studies.restwake.rule import SwitchingRule, simulate, spike_trace
from bench.train import build_run, fit, run_cell
from tests.conftest import tiny_cell

STUDY = {"methods": ["sgd", "restwake_original", "restwake_improved"], "epochs": 4,
         "method_options": {"restwake_original": {"rest_every": 3},
                            "restwake_improved": {"warmup_wake_epochs": 2, "window": 1}}}


def test_buffer_keeps_the_newest_snapshots_in_fp16_and_compresses_to_one():
    buf = SnapshotBuffer(capacity=3, device=torch.device("cpu"))
    params = [torch.zeros(2, 3), torch.zeros(4)]
    for step in range(5):
        buf.push([p + step for p in params])
    assert len(buf) == 3
    assert all(t.dtype == torch.float16 for snap in buf.snapshots for t in snap)
    assert [snap[0][0, 0].item() for snap in buf.snapshots] == [2.0, 3.0, 4.0]
    mean = buf.mean()
    assert torch.equal(mean[0], torch.full((2, 3), 3.0)) and mean[1].dtype == torch.float32
    assert buf.nbytes() == 3 * (6 + 4) * 2  # fp16: 2 bytes a value
    buf.compress(mean)
    assert len(buf) == 1 and torch.equal(buf.snapshots[0][1].float(), torch.full((4,), 3.0))
    clone = SnapshotBuffer(3, torch.device("cpu"))
    clone.load_state_dict(buf.state_dict())
    assert torch.equal(clone.snapshots[0][0], buf.snapshots[0][0])


def test_recompute_batchnorm_equals_the_average_of_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3))
    net[1].running_mean.fill_(5.0)  # stale statistics that must be replaced
    x = torch.randint(0, 256, (32, 1, 6, 6), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.zeros(32, dtype=torch.long), 8, mean=(0.5,), std=(0.25,),
                          shuffle=False, augment=False, generator=None)
    momentum = net[1].momentum
    net.eval()
    assert recompute_batchnorm(net, loader) == 1
    assert not net.training and net[1].momentum == momentum  # restored
    with torch.no_grad():
        feats = [net[0](xb) for xb, _ in loader]  # (8, 3, 6, 6) each
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(net[1].running_var, var, atol=1e-5)


def test_running_mean_of_a_filling_buffer_is_its_snapshots_mean_in_fp16():
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(7)]
    m, buf = RunningMean(torch.device("cpu")), SnapshotBuffer(3, torch.device("cpu"))
    snaps = [[p + i for p in params] for i in range(3)]
    for snap in snaps:
        m.update(snap)
        buf.push(snap)
    assert m.k == 3 and all(t.dtype == torch.float16 for t in m.mean)
    for got, want in zip(m.mean, buf.mean(), strict=True):
        assert torch.allclose(got.float(), want, atol=2e-3)  # fp16 rounding only
    assert m.nbytes() == (15 + 7) * 2  # one fp16 copy
    m.reset(params)
    assert m.k == 1 and torch.allclose(m.mean[0].float(), params[0], atol=1e-3)
    clone = RunningMean(torch.device("cpu"))
    clone.load_state_dict(m.state_dict())
    assert clone.k == 1 and torch.equal(clone.mean[1], m.mean[1])


def test_running_mean_follows_the_buffer_when_it_drops_its_oldest_snapshot():
    # METHODS.md: consolidation sets the mean of the snapshots in M (capacity K = 3, the 3 most
    # recent); the running mean used to average every snapshot since the last REST instead
    torch.manual_seed(1)
    params = [torch.randn(5, 3), torch.randn(7)]
    m, buf = RunningMean(torch.device("cpu")), SnapshotBuffer(3, torch.device("cpu"))
    for i in range(8):
        snap = [p * (1 + 0.3 * i) + i for p in params]
        dropped = buf.push(snap)
        assert (dropped is None) == (i < 3)
        m.update(snap, dropped)
        assert m.k == len(buf)
        for got, want in zip(m.mean, buf.mean(), strict=True):
            assert torch.allclose(got.float(), want, atol=2e-2, rtol=2e-3), i  # fp16 only
    # the mean of the last 3 pushes (i = 5, 6, 7): 6 + 1.3 x 2.8 p, not 3.5 + 2.05 p
    want = params[1] * (1 + 0.3 * 6) + 6
    assert torch.allclose(m.mean[1].float(), want, atol=2e-2, rtol=2e-3)
    with pytest.raises(ValueError, match="empty mean"):
        RunningMean(torch.device("cpu")).update(params, params)


def test_improved_consolidates_to_the_mean_of_its_three_newest_snapshots(tmp_path):
    # four WAKE epochs before the first REST: M holds epochs 2-4, the running mean must too
    opts = {"warmup_wake_epochs": 4, "window": 1, "factor": 1e-9, "cap": 10}  # always asks
    cfg = tiny_cell(tmp_path, method="restwake_improved",
                    **{**STUDY, "epochs": 6, "method_options": {"restwake_improved": opts}})
    run = build_run(cfg, tmp_path, torch.device("cpu"))
    run.method.setup(run)
    wake_params: list[list[torch.Tensor]] = []
    seen: dict[str, object] = {}
    original_rest = run.method.rest

    def on_epoch(r, record):
        if record["phase"] == WAKE:
            wake_params.append([p.detach().clone() for p in r.model.parameters()])

    def spy_rest(r):
        seen["k"] = run.method.running.k
        seen["consolidated"] = [t.float().clone() for t in run.method.consolidated()]
        original_rest(r)

    run.on_epoch = on_epoch
    run.method.rest = spy_rest  # type: ignore[method-assign]
    fit(run)
    assert [h["phase"] for h in run.history] == [WAKE] * 4 + [REST, WAKE]
    assert seen["k"] == 3
    newest = [torch.stack([snap[i].half().float() for snap in wake_params[1:4]]).mean(0)
              for i in range(len(wake_params[0]))]
    every = [torch.stack([snap[i].half().float() for snap in wake_params[:4]]).mean(0)
             for i in range(len(wake_params[0]))]
    assert any(not torch.allclose(a, b, atol=1e-3) for a, b in zip(newest, every, strict=True))
    for got, want in zip(seen["consolidated"], newest, strict=True):
        assert torch.allclose(got, want, atol=5e-3, rtol=5e-3)


def test_rest_epoch_makes_no_step_and_sets_weights_to_the_snapshot_mean(tmp_path):
    cfg = tiny_cell(tmp_path, method="restwake_original", **STUDY)
    run = build_run(cfg, tmp_path, torch.device("cpu"))
    run.method.setup(run)
    steps = {"n": 0}
    original_step = run.optimizer.step

    def counting_step(*args, **kwargs):
        steps["n"] += 1
        return original_step(*args, **kwargs)

    run.optimizer.step = counting_step  # type: ignore[method-assign]
    seen: dict[str, object] = {}
    original_rest = run.method.rest

    def spy_rest(r):
        seen["expected"] = [t.clone() for t in run.method.buffer.mean()]
        seen["bn_before"] = [b.clone() for b in run.model.buffers()]
        original_rest(r)
        seen["after"] = [p.detach().clone() for p in run.model.parameters()]
        seen["bn_after"] = [b.clone() for b in run.model.buffers()]

    def on_epoch(r, record):
        if record["phase"] == REST:  # the weights at the end of the REST epoch
            seen["end_of_rest"] = [p.detach().clone() for p in r.model.parameters()]

    run.method.rest = spy_rest  # type: ignore[method-assign]
    run.on_epoch = on_epoch
    fit(run)
    phases = [h["phase"] for h in run.history]
    assert phases == [WAKE, WAKE, REST, WAKE]
    assert steps["n"] == 3 * len(run.train_loader), "a REST epoch made an optimizer step"
    for p, m in zip(seen["after"], seen["expected"], strict=True):
        assert torch.equal(p, m)
    for p, m in zip(seen["end_of_rest"], seen["expected"], strict=True):
        assert torch.equal(p, m)  # no step in the REST epoch
    bn_changed = [not torch.equal(a, b) for a, b in zip(seen["bn_before"], seen["bn_after"])
                  if a.is_floating_point()]
    assert any(bn_changed), "BatchNorm statistics were not recomputed"
    assert len(run.method.buffer) == 2  # compressed to one snapshot, then one WAKE pushed
    rest = run.history[2]
    assert rest["train_loss"] is None and rest["rest"] == 1.0 and math.isfinite(rest["val_acc"])


# --- the switching rule on scripted variance traces ---------------------------------------

RULE = SwitchingRule()  # METHODS.md: factor 1.25, window 5, 5 warm-up WAKE epochs, 2 in 10
EPOCHS = 50
NOISE = 0.3  # log-sd of v around its trend (the digits quick run: see the study README)


def test_rule_compares_with_the_median_of_the_previous_wake_epochs():
    phases = [WAKE] * 7
    d = RULE.decide([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 3.75], phases)
    assert d.reference == 3.0 and d.threshold == pytest.approx(3.75) and d.rest  # 100 is out
    d = RULE.decide([9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2], phases)
    assert d.reference == 1.0 and not d.rest and d.why == "not crossed"  # 1.2 < 1.25
    assert RULE.decide([1.0, 1.0, 1.0, 9.0], [WAKE] * 4).why == "warm-up"
    assert RULE.decide([1.0, 1.0, 1.0, 1.0, 9.0], [WAKE] * 5).rest  # after the fifth WAKE epoch
    capped = [WAKE, REST, WAKE, WAKE, REST] + [WAKE] * 5
    assert RULE.decide([1.0] * 7 + [9.0], capped).why == "cap"
    assert RULE.decide([1.0] * 8 + [9.0], capped + [WAKE, WAKE]).rest  # the first REST is out
    low = SwitchingRule(direction="low")
    assert low.decide([1.0] * 5 + [0.8], [WAKE] * 6).rest  # 0.8 <= 1 / 1.25
    assert not low.decide([1.0] * 5 + [0.81], [WAKE] * 6).rest
    nan = RULE.decide([1.0, float("nan"), 1.0, 1.0, 1.0, 2.0], [WAKE] * 6)
    assert nan.reference == 1.0 and nan.rest  # undefined v are left out of the reference
    assert not RULE.decide([1.0] * 5 + [float("nan")], [WAKE] * 6).rest


def _noisy(trend: np.ndarray, seed: int) -> np.ndarray:
    return trend * np.exp(np.random.default_rng(seed).normal(0.0, NOISE, trend.shape))


TRENDS = {
    "rising": np.exp(np.linspace(0.0, math.log(3.0), EPOCHS)),  # v x3 over the run
    "flat": np.ones(EPOCHS),
    "falling": np.exp(np.linspace(0.0, -math.log(3.0), EPOCHS)),
}


@pytest.mark.parametrize("shape", sorted(TRENDS))
def test_rest_fraction_is_in_range_on_noisy_rising_flat_and_falling_traces(shape):
    for seed in range(20):
        phases = simulate(RULE, _noisy(TRENDS[shape], seed))
        frac = phases.count(REST) / EPOCHS
        assert 0.05 <= frac <= 0.3, (shape, seed, frac)
        assert REST not in phases[:5] and phases[-1] == WAKE
        assert all(not (a == b == REST) for a, b in zip(phases, phases[1:]))
        for start in range(EPOCHS - 9):
            assert phases[start:start + 10].count(REST) <= 2


def test_a_frozen_threshold_would_follow_the_trend_the_trailing_one_does_not():
    # smooth traces (no noise): the trailing rule rests rarely whatever the drift
    for trend in TRENDS.values():
        assert simulate(RULE, trend).count(REST) <= 0.2 * EPOCHS
    assert simulate(RULE, TRENDS["falling"]).count(REST) == 0


@pytest.mark.parametrize("rule", [RULE, SwitchingRule(factor=1.5, window=3, cap_window=6),
                                  SwitchingRule(direction="low")])
def test_a_rest_follows_each_isolated_spike(rule):
    trace, spikes = spike_trace(rule)
    assert len(spikes) >= 3
    phases = simulate(rule, trace)
    assert [t for t, p in enumerate(phases) if p == REST] == [t + 1 for t in spikes]


def test_options_are_checked():
    with pytest.raises(ConfigError, match="direction"):
        RestWakeImproved(RestWakeImproved.resolve_options({"direction": "up"}))
    with pytest.raises(ConfigError, match="window"):
        RestWakeImproved(RestWakeImproved.resolve_options({"window": 0}))


# --- the rule inside the training loop ---------------------------------------------------


def test_never_two_rests_in_a_row_rest_needs_snapshots_and_the_last_epoch_wakes(tmp_path):
    opts = {"warmup_wake_epochs": 1, "window": 1, "factor": 1e-9, "cap": 10}  # always asks
    cfg = tiny_cell(tmp_path, method="restwake_improved",
                    **{**STUDY, "epochs": 6, "method_options": {"restwake_improved": opts}})
    run = build_run(cfg, tmp_path, torch.device("cpu"))
    run.method.setup(run)
    fit(run)
    phases = [h["phase"] for h in run.history]
    assert phases == [WAKE, WAKE, REST, WAKE, REST, WAKE]  # 2 snapshots needed; last WAKE
    for h in run.history:
        assert "grad_cv2" in h and "rest_threshold" in h and "next_rest" in h
    assert run.history[1]["next_rest"] == 1.0 and run.history[1]["rule"] == "crossed"
    assert run.history[2]["rule"] == "after rest"


def test_last_epoch_is_wake_for_the_fixed_schedule_too(tmp_path):
    cfg = tiny_cell(tmp_path, method="restwake_original",
                    **{**STUDY, "epochs": 3})  # rest_every 3 would rest in the last epoch
    result = run_cell(cfg, tmp_path / "result.json")
    assert [h["phase"] for h in result["history"]] == [WAKE, WAKE, WAKE]
    assert result["final"]["rest_epochs"] == 0 and result["final"]["last_phase"] == WAKE


def test_improved_keeps_one_fp16_copy_of_the_weights_on_the_device(tmp_path):
    results = {}
    for method in ("restwake_original", "restwake_improved"):
        cfg = tiny_cell(tmp_path, method=method, **STUDY)
        results[method] = run_cell(cfg, tmp_path / method / "result.json")
    orig, impr = results["restwake_original"], results["restwake_improved"]
    fp16_copy_mib = orig["compute"]["params"] * 2 / 2**20
    # M is on the host for both; the improved variant adds its running mean, from the first
    # WAKE epoch on (measured at the start of the next epoch: epoch 1 onwards)
    for e in range(1, 4):
        diff = impr["history"][e]["modelled_peak_mib"] - orig["history"][e]["modelled_peak_mib"]
        assert diff == pytest.approx(fp16_copy_mib, rel=1e-6), e
    assert orig["memory"]["method_buffer_mib"] == 0.0
    assert impr["memory"]["method_buffer_mib"] == pytest.approx(fp16_copy_mib, rel=1e-6)
    # both rested once, and the improved one consolidated to its running mean
    assert [h["phase"] for h in orig["history"]] == [WAKE, WAKE, REST, WAKE]
    assert REST in [h["phase"] for h in impr["history"]]


def test_resume_keeps_the_rule_state_and_the_running_mean(tmp_path):
    cfg = tiny_cell(tmp_path, method="restwake_improved", **STUDY)
    a = build_run(cfg, tmp_path / "a", torch.device("cpu"))
    a.method.setup(a)
    fit(a)
    b = build_run(cfg, tmp_path / "b", torch.device("cpu"))
    b.method.setup(b)
    b.method.load_state_dict(copy.deepcopy(a.method.state_dict()))
    assert b.method.wake_v == a.method.wake_v and b.method.phases == a.method.phases
    assert b.method.running.k == a.method.running.k
    assert all(torch.equal(x, y) for x, y in zip(b.method.running.mean, a.method.running.mean))


# --- paper-comparable memory --------------------------------------------------------------


def test_peak_train_mib_subtracts_the_device_resident_dataset():
    from bench import measure

    # a fake CIFAR-10 on the training device: 50k + 10k uint8 3x32x32 images, int64 labels
    split = [torch.zeros(50_000, 3, 32, 32, dtype=torch.uint8),
             torch.zeros(50_000, dtype=torch.int64),
             torch.zeros(10_000, 3, 32, 32, dtype=torch.uint8),
             torch.zeros(10_000, dtype=torch.int64)]
    resident = measure.resident_bytes(split, "cpu")
    assert resident == 60_000 * (3072 + 8)
    assert resident / 2**20 == pytest.approx(176.24, abs=0.01)  # images 175.78 + labels 0.46
    assert measure.resident_bytes(split + [split[0][:10]], "cpu") == resident  # a view: once
    assert measure.resident_bytes(split, "meta") == 0  # nothing of it on that device
    assert measure.without_resident(641.0, resident) == pytest.approx(641.0 - 176.24, abs=0.01)
    assert measure.without_resident(None, resident) is None  # CPU: no allocator figure


def test_cells_record_peak_train_and_eval_beside_the_raw_peak(tmp_path):
    cfg = tiny_cell(tmp_path, method="restwake_improved", **{**STUDY, "epochs": 1})
    result = run_cell(cfg, tmp_path / "result.json")
    h, mem = result["history"][0], result["memory"]
    for key in ("peak_alloc_mib", "peak_train_mib", "peak_eval_mib"):
        assert key in h and key in mem and h[key] is None  # CPU: not measured
    assert mem["resident_data_mib"] > 0


# --- mechanism checks ---------------------------------------------------------------------


def _result(method, seed, phases, options=None):
    return {"status": "ok",
            "axes": {"study": "restwake", "method": method, "model": "resnet18",
                     "dataset": "digits", "budget": "none", "seed": seed},
            "config": {"method_impl": method, "method_options": options or {}},
            "history": [{"epoch": i, "phase": p} for i, p in enumerate(phases)]}


def test_mechanism_checks():
    ok = [WAKE] * 6 + [REST] + [WAKE] * 3  # 0.1
    never = [WAKE] * 10
    ends_rest = [WAKE] * 9 + [REST]
    rows = restwake_checks([_result("restwake_improved", 0, ok),
                            _result("restwake_improved", 1, never),
                            _result("restwake_original", 0, ends_rest),
                            _result("sgd", 0, ["train"] * 10)])
    got = {(c.check, c.method, c.seed): c.passed for c in rows}
    assert got[("rest_fraction_in_range", "restwake_improved", 0)]
    assert not got[("rest_fraction_in_range", "restwake_improved", 1)]
    assert ("rest_fraction_in_range", "restwake_original", 0) not in got  # fixed schedule
    assert not got[("last_epoch_wake", "restwake_original", 0)]
    assert got[("last_epoch_wake", "sgd", 0)] and got[("last_epoch_wake", "restwake_improved", 0)]
    assert got[("rule_rests_after_spikes", "restwake_improved", None)]
    dead = restwake_checks([_result("restwake_improved", 0, ok, {"factor": 100.0})])
    assert not {c.check: c.passed for c in dead}["rule_rests_after_spikes"]


# --- the catalogue of degenerate mechanisms: each must end `withheld` ---------------------

GROUP = ("resnet18", "digits", "none")
IMPROVED_CLAIMS = ("restwake_improved_equivalent_to_sgd_val_acc",
                   "restwake_improved_comparable_fgsm_to_sgd")


def _traced(method, seed, trace, phases, options=None):
    """A result whose history holds the variance trace v (grad_cv2) of its WAKE epochs."""
    r = _result(method, seed, phases, options)
    for h, v in zip(r["history"], trace, strict=True):
        h["grad_cv2"] = float(v) if h["phase"] == WAKE else None
    return r


def _live_trace(seed):
    return list(_noisy(TRENDS["flat"], seed))


def _arbitrary(seed):
    """REST at random epochs that obey every constraint (never two in a row, not in the first
    two epochs, not the last, at most 2 in 10), unrelated to the trace."""
    rng = np.random.default_rng(100 + seed)
    phases = [WAKE] * EPOCHS
    for t in sorted(rng.choice(np.arange(2, EPOCHS - 1), 8, replace=False)):
        if phases[t - 1] != REST and phases[max(0, t - 9):t].count(REST) < 2:
            phases[t] = REST
    return phases


DEGENERATE = {
    # the original's fixed 1-in-5 schedule run as the adaptive variant (rest fraction 0.18)
    "every_5th": lambda seed: [REST if (t + 1) % 5 == 0 and t < EPOCHS - 1 else WAKE
                               for t in range(EPOCHS)],
    "arbitrary": _arbitrary,
    "never_rests": lambda seed: [WAKE] * EPOCHS,
}


def _improved_cells(phases_of, seeds=3):
    results = []
    for seed in range(seeds):
        trace = _live_trace(seed)
        phases = phases_of(seed) if phases_of else simulate(RULE, trace)
        results.append(_traced("restwake_improved", seed, trace, phases))
        results.append(_result("sgd", seed, ["train"] * EPOCHS))
    return results


def _claims(results):
    import pandas as pd

    from bench import claims as cl
    from bench.checks import checks_table
    from bench.config import claims_path

    checks = checks_table("restwake", results)
    rng = np.random.default_rng(0)
    rows = [{"study": "restwake", "method": m, "model": GROUP[0], "dataset": GROUP[1],
             "budget": GROUP[2], "seed": seed, "status": "ok",
             "val_acc": 0.95 + 1e-4 * rng.normal(), "fgsm_acc": 0.65 + 1e-4 * rng.normal()}
            for m in ("sgd", "restwake_improved") for seed in range(3)]
    out = cl.evaluate_claims(cl.load_claims(claims_path("restwake")), pd.DataFrame(rows),
                             study="restwake", mechanism_checks=checks)
    return checks, {r["claim_id"]: r for r in out}


def test_a_live_rule_passes_its_replay_and_its_claims_are_decided():
    checks, verdicts = _claims(_improved_cells(None))
    assert checks["passed"].all(), checks[~checks["passed"]].to_dict("records")
    replay = checks[checks["check"] == "rule_replays_own_trace"]
    assert len(replay) == 3 and set(replay["value"]) == {"identical"}
    for cid in IMPROVED_CLAIMS:
        assert verdicts[cid]["verdict"] == "reproduced", verdicts[cid]  # equal by construction


@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_a_degenerate_improved_variant_ends_withheld(kind):
    checks, verdicts = _claims(_improved_cells(DEGENERATE[kind]))
    replay = checks[checks["check"] == "rule_replays_own_trace"]
    assert len(replay) == 3 and not replay["passed"].any(), replay.to_dict("records")
    assert replay["value"].str.startswith("differs from epoch").all()
    if kind == "every_5th":  # the rest fraction alone would not have caught it
        assert checks[checks["check"] == "rest_fraction_in_range"]["passed"].all()
    if kind == "never_rests":
        assert not checks[checks["check"] == "rest_fraction_in_range"]["passed"].any()
    for cid in IMPROVED_CLAIMS:
        v = verdicts[cid]["verdict"]
        assert v.startswith("withheld (mechanism check failed:") and "rule_replays_own_trace" in v
    # the original's own claims do not depend on the adaptive rule
    assert "rule_replays_own_trace" not in str(
        verdicts["restwake_original_equivalent_to_sgd_val_acc"]["verdict"])


def test_the_replay_uses_the_cells_own_trace_not_a_scripted_one():
    # phases the rule would take on another trace: wrong on this cell's own trace
    mine, other = _live_trace(0), _live_trace(1)
    assert simulate(RULE, mine) != simulate(RULE, other)
    rows = restwake_checks([_traced("restwake_improved", 0, mine, simulate(RULE, other))])
    got = {c.check: c for c in rows}
    assert not got["rule_replays_own_trace"].passed
    rows = restwake_checks([_traced("restwake_improved", 0, mine, simulate(RULE, mine))])
    assert {c.check: c for c in rows}["rule_replays_own_trace"].passed
    # no trace recorded: nothing to replay, the check fails and says why
    rows = restwake_checks([_result("restwake_improved", 0, simulate(RULE, mine))])
    got = {c.check: c for c in rows}
    assert not got["rule_replays_own_trace"].passed and "no variance trace" in got[
        "rule_replays_own_trace"].value


def test_false_spike_rate_is_reported_on_the_cells_own_trace():
    from bench.studies.restwake.rule import noise_crossing_rate

    # the figure: at log-noise 0.3 the default rule crosses on about a quarter of epochs
    assert noise_crossing_rate(RULE, 0.3) == pytest.approx(0.25, abs=0.03)
    assert noise_crossing_rate(RULE, 0.05) < 0.01
    trace = _live_trace(0)
    rows = restwake_checks([_traced("restwake_improved", 0, trace, simulate(RULE, trace))])
    row = {c.check: c for c in rows}["rule_false_spike_rate"]
    assert row.passed and row.value.split()[0] != "1.00"
    assert "log-noise" in row.detail and "on pure noise" in row.detail
    noise = float(row.detail.split("log-noise ")[1].split(";")[0])
    assert 0.2 <= noise <= 0.45  # the trace was made at 0.3
    # a rule that crosses on every decided epoch (factor below 1): the cap sets the rests
    always = {"factor": 1e-9}
    eager = SwitchingRule.from_options(always)
    rows = restwake_checks([_traced("restwake_improved", 0, trace, simulate(eager, trace),
                                    always)])
    got = {c.check: c for c in rows}
    assert got["rule_replays_own_trace"].passed  # it did follow its (degenerate) rule
    assert not got["rule_false_spike_rate"].passed
    assert got["rule_false_spike_rate"].value.startswith("1.00")


def test_a_real_improved_cell_passes_its_replay(tmp_path):
    # a cell trained by the method: the replay of its recorded grad_cv2 gives its phases
    opts = {"warmup_wake_epochs": 2, "window": 1, "factor": 1e-9, "cap": 10}  # always asks
    cfg = tiny_cell(tmp_path, method="restwake_improved",
                    **{**STUDY, "epochs": 6, "method_options": {"restwake_improved": opts}})
    result = run_cell(cfg, tmp_path / "result.json")
    assert [h["phase"] for h in result["history"]] == [WAKE, WAKE, REST, WAKE, REST, WAKE]
    got = {c.check: c for c in restwake_checks([result])}
    assert got["rule_replays_own_trace"].passed, got["rule_replays_own_trace"]
    assert not got["rule_false_spike_rate"].passed  # factor 1e-9: every decided epoch crosses
    # the same cell with its REST epochs moved: the replay disagrees
    moved = copy.deepcopy(result)
    moved["history"][2]["phase"], moved["history"][3]["phase"] = WAKE, REST
    moved["history"][2]["grad_cv2"] = moved["history"][3]["grad_cv2"]
    got = {c.check: c for c in restwake_checks([moved])}
    assert not got["rule_replays_own_trace"].passed


def test_a_paper_config_cell_runs_a_few_steps_on_cifar_shaped_data(tmp_path):
    paper = load_config([ROOT / "config" / "paper.yaml"])
    study = copy.deepcopy(paper["studies"]["restwake"])
    assert study["models"] == ["resnet18"] and study["datasets"] == ["cifar10"]
    assert study["epochs"] == 50 and study["seeds"] == 3
    assert study["train"]["batch_size"] == 128 and study["train"]["lr"] == 0.01
    # the same study on synthetic CIFAR-shaped data (3x32x32, 10 classes): 2 steps, 1 epoch
    study.update(datasets=["synthetic"], epochs=1,
                 data_options={"synthetic": {"n_train": 256, "n_val": 64, "num_classes": 10}})
    study["evaluation"] = {**study["evaluation"], "pgd_steps": 2, "adv_max_images": 32}
    cfg = check_config({**paper, "device": "cpu", "threads": 2, "results": str(tmp_path),
                        "studies": {"restwake": study}})
    cell = resolve_cell(cfg, Cell("restwake", "restwake_improved", "resnet18", "synthetic",
                                  "none", 0))
    result = run_cell(cell, tmp_path / "result.json")
    assert result["status"] == "ok", result["reason"]
    assert result["compute"]["params"] == 11_181_642  # full-width ResNet-18, 10 classes
    assert result["compute"]["image_shape"] == [3, 32, 32]
    last = result["history"][-1]
    for key in ("fgsm_acc", "pgd_acc", "sym_kl", "elasticity", "grad_cv2"):
        assert key in last and last[key] is not None, key
    assert result["final"]["fgsm_acc"] == last["fgsm_acc"]
