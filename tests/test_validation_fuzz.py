"""Fuzz the configuration: a mutated valid config is either refused with a ConfigError before
any job (one line per problem, no traceback), or it is valid: its cells run.

Each example mutates one to three places of a small valid config (set a value, delete a key,
misspell a key, add an unknown key) with values a careless or hostile user might write: typos
of real names, NaN and infinities, negatives and zeros, wrong types, duplicates, shell syntax.
`bench validate` does what the test does before calling it valid (check_config +
check_device); the Snakefile runs the same check before planning.

An accepted config must run: its first cell trains one epoch (status ok, diverged, oom or
skipped are all results). Width only scales memory and time, so the run caps it: a huge width
would be an OOM result, not a crash, and the test stays fast. Derandomized (the same examples
in every run) and bounded: well under a minute on 2 CPU cores. FUZZ_EXAMPLES=N runs more.
"""

from __future__ import annotations

import copy
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.config import check_config, check_device, plan, resolve_cell
from bench.errors import ConfigError

BASE: dict[str, Any] = {
    "results": "results",
    "data_root": "data",
    "device": "cpu",
    "threads": 1,
    "tracking": {"enabled": False, "uri": None},
    "report": {"title": "fuzz"},
    "studies": {
        "fz": {
            "reference": "sgd",
            "methods": ["sgd", "plain"],
            "variants": {"plain": {"method": "sgd", "options": {"momentum": 0.0}}},
            "models": ["resnet18_cifar"],
            "datasets": ["synthetic"],
            "budgets": ["none"],
            "seeds": 2,
            "epochs": 1,
            "metrics": ["val_acc", "val_loss"],
            "evaluation": {"metrics": ["fgsm_acc"], "adv_every": 1, "eps": 0.03,
                           "adv_max_images": 16},
            "train": {"batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                      "schedule": "cosine", "warmup_steps": 1, "label_smoothing": 0.0},
            "data": {"image_size": 16, "augment": True, "crop_padding": 2, "flip": True,
                     "train_subset": 64},
            "data_options": {"synthetic": {"n_train": 96, "n_val": 32, "num_classes": 4}},
            "model": {"width": 0.125},
            "model_options": {"resnet18_cifar": {"width": 0.125}},
            "method_options": {"sgd": {"momentum": 0.9}},
        }
    },
}

NAMES = ["sgd", "plain", "sgdd", "resnet18_cifar", "resnet181", "vgg16", "synthetic", "digits",
         "cifar11", "none", "16MiB", "512", "val_acc", "val_ac", "fgsm_acc", "x$(touch pwned)",
         "a b", "..", "", "cuda", "cuda:3", "auto", "cpu", "cosine", "step"]
NUMBERS = [-1, 0, 1, 2, 3, 7, 16, 64, -0.5, 0.0, 1e-4, 0.5, 1.0, 3.0, math.nan, math.inf,
           -math.inf, True, False, None]
SCALARS = st.sampled_from(NAMES + NUMBERS) | st.text(max_size=6)
VALUES = (SCALARS | st.lists(SCALARS, max_size=3)
          | st.lists(SCALARS, min_size=1, max_size=1).map(lambda xs: xs * 2)  # duplicates
          | st.dictionaries(st.sampled_from(NAMES[:8] + ["bogus"]), SCALARS, max_size=2))


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a config: dict keys and list items, nested."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out += paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*prefix, i))
            out += paths(v, (*prefix, i))
    return out


PLACES = paths(BASE)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict, list[str]]:
    cfg = copy.deepcopy(BASE)
    done = []
    for _ in range(draw(st.integers(1, 3))):
        place = draw(st.sampled_from(PLACES))
        parent: Any = cfg
        try:
            for key in place[:-1]:
                parent = parent[key]
            parent[place[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this place
        key = place[-1]
        op = draw(st.sampled_from(["set", "set", "set", "delete", "rename", "add"]))
        if op == "set":
            parent[key] = draw(VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from([f"{key}s", f"{key}"[:-1] or "k", f"_{key}"]))] = (
                parent.pop(key))
        elif op == "add":
            target = parent[key] if isinstance(parent[key], dict) else parent
            if isinstance(target, dict):
                target[draw(st.sampled_from(["bogus", "epoch", "lerning_rate"]))] = draw(VALUES)
        done.append(f"{op} {'.'.join(map(str, place))}")
    return cfg, done


def accepted(cfg: dict) -> dict | None:
    """What `bench validate` decides: the checked config, or None after a clean refusal."""
    try:
        checked = check_config(cfg)
        check_device(checked)
        return checked
    except ConfigError as e:
        text = str(e)
        lines = text.splitlines()
        assert text.strip() and "Traceback" not in text
        assert all(line.startswith(("  - ", "  at ")) for line in lines[1:]), text
        assert all(len(line) < 2000 for line in lines), text
        return None


def runs(cfg: dict) -> str:
    """Train the first cell of an accepted config for one epoch; return its status."""
    from bench.train import run_cell

    cell = plan(cfg)[0]
    resolved = resolve_cell(cfg, cell)
    resolved["epochs"] = 1
    width = resolved["model_options"].get("width", 1.0)
    resolved["model_options"]["width"] = min(float(width), 0.125)  # memory/time only
    with tempfile.TemporaryDirectory() as tmp:
        resolved["data_root"] = tmp
        result = run_cell(resolved, Path(tmp) / "result.json", tracker=None, threads=1)
    return result["status"]


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
          derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])
@given(mutated())
def test_a_mutated_config_is_refused_in_one_clear_line_or_runs(example):
    cfg, mutations = example
    checked = accepted(cfg)
    if checked is None:
        return
    status = runs(checked)
    assert status in ("ok", "diverged", "oom", "skipped"), (mutations, status)


def test_the_base_config_is_valid_and_runs():
    assert runs(check_config(copy.deepcopy(BASE))) == "ok"


def test_a_last_batch_of_one_image_under_batchnorm_trains():
    """33 images in batches of 32 leave one image; MobileNetV2's last BatchNorm sees it as 1x1
    features (one value per channel), which BatchNorm cannot normalise: the loop skips it."""
    from bench.faults import TINY_STUDY

    study = {**copy.deepcopy(TINY_STUDY), "models": ["mobilenetv2"], "epochs": 1,
             "model": {"width": 0.35},
             "data_options": {"synthetic": {"n_train": 33, "n_val": 16, "num_classes": 4}}}
    cfg = check_config({**copy.deepcopy(BASE), "studies": {"b1": study}})
    assert runs(cfg) == "ok"


# ----------------------------------------------------------------------------- names
# Every name becomes a folder, file names and MLflow names: too long ('File name too long' in
# the report after every cell trained, a traceback in `validate`), a trailing newline (passed
# the schema's `$`) or non-ASCII must be refused before any job, in one line.

NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_TEXT = (st.text(max_size=300)
             | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}", fullmatch=True)
             | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True).map(
                 lambda s: s + st_suffix(s))
             | st.sampled_from(["a" * 64, "a" * 65, "a" * 240, "a" * 300, "abc\n", "abc\r\n",
                                "\nabc", "résumé", "sgd\u200b", "名前", "a/b", "..", ".hidden",
                                "a b", "a{b}", "-x", "x\x00y", "", "Ａbc"]))


def st_suffix(s: str) -> str:
    """A trailing character that breaks a name (chosen by the name, so it is derandomized)."""
    return ["\n", "\t", " ", "é", "\u2028", "/"][len(s) % 6]


def _with_name(place: str, name: str) -> dict:
    cfg = copy.deepcopy(BASE)
    s = cfg["studies"]["fz"]
    if place == "study":
        cfg["studies"] = {name: s}
    elif place == "variant":
        s["variants"] = {name: {"method": "sgd"}}
        s["methods"] = ["sgd", name]
    elif place == "variant_options":  # a variant with options of its own
        s["variants"] = {name: {"method": "sgd"}}
        s["methods"] = ["sgd", name]
        s["method_options"] = {name: {"momentum": 0.5}}
    elif place == "budget":
        s["budgets"] = [name]
    return cfg


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
          derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])
@given(st.sampled_from(["study", "variant", "variant_options"]), NAME_TEXT)
def test_a_name_is_accepted_exactly_when_it_can_be_a_path_and_an_mlflow_name(place, name):
    cfg = _with_name(place, name)
    try:
        checked = check_config(cfg)
    except ConfigError as e:
        text = str(e)
        assert not NAME_OK.fullmatch(name), (name, text)
        lines = text.splitlines()  # one line per place the name is used
        assert all(line.startswith("  - ") for line in lines[1:]), text
        assert all(len(line) < 600 for line in lines), text  # the name cut short
        assert all("is not a valid name" in line and "rename it" in line
                   for line in (lines[1:] or lines)), text
        return
    assert NAME_OK.fullmatch(name), f"accepted {name!r}"
    for cell in plan(checked):  # every path component stays a file name
        assert all(len(part) <= 64 for part in cell.cell_id.split("/"))


@pytest.mark.parametrize("place,name,why", [
    ("study", "a" * 240, "240 characters long, more than 64"),
    ("study", "a" * 300, "300 characters long, more than 64"),
    ("study", "restwake\n", r"holds '\n'"),
    ("variant", "plain\n", r"holds '\n'"),
    ("study", "résumé", "holds 'é'"),
    ("budget", "512\n", r"holds '\n'"),
    ("budget", 1.5e300, "301 characters long"),
], ids=["study-240", "study-300", "study-newline", "variant-newline", "study-unicode",
        "budget-newline", "budget-1.5e300"])
def test_a_bad_name_is_refused_before_any_job_in_one_line(place, name, why):
    cfg = _with_name(place, name)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    lines = str(err.value).splitlines()  # a line per place the name is used
    assert all(line.startswith("  - ") for line in lines[1:]), lines
    assert all(why in line and "is not a valid name" in line for line in lines[1:] or lines)


def test_a_64_character_name_is_valid():
    cfg = check_config(_with_name("study", "s" * 64))
    assert {c.study for c in plan(cfg)} == {"s" * 64}


# ------------------------------------------------------------ claims: non-finite numbers
#
# An infinite margin, range end, std or `over` makes a band that any data fall inside (or a
# superiority that any data beat): the verdict would be decided by the file. Every number of a
# claims file must be finite; a non-finite one, written any way YAML or a string allows, is
# refused by name in one line before any job.

from bench import claims as claims_mod  # noqa: E402
from bench.errors import ConfigError as _ConfigError  # noqa: E402

NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan, "inf", "-inf", "+inf", "nan",
                              "Infinity", "-Infinity", " inf ", "1e999", "-1e999", 1e308 * 10])
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)

# a valid claim of each kind, and the numeric places a non-finite number can go into
CLAIM_BASES = {
    "value": ({"kind": "value", "value": 0.8, "margin": 0.01, "margin_reason": "r",
               "runs": [0.79, 0.81], "std": 0.01, "n_runs": 2},
              ["value", "margin", "std", ("runs", 0), ("runs", 1)]),
    "range": ({"kind": "range", "range": [2.3, 6.1], "margin": 0, "margin_reason": "r"},
              [("range", 0), ("range", 1), "margin"]),
    "superiority_over": ({"kind": "superiority", "over": 1, "margin": 0, "margin_reason": "r"},
                         ["over", "margin"]),
    "superiority": ({"kind": "superiority", "versus": "b", "margin": -0.01,
                     "margin_reason": "r", "runs": [0.8, 0.82, 0.81],
                     "versus_runs": [0.79, 0.8, 0.78], "stated_p": 0.04},
                    ["margin", "stated_p", ("runs", 2), ("versus_runs", 0)]),
    "equivalence": ({"kind": "equivalence", "versus": "b", "margin": "from_std", "std": 0.01,
                     "versus_std": 0.02, "n_runs": 3},
                    ["std", "versus_std"]),
    "difference": ({"kind": "difference", "versus": "b", "value": 0.02, "margin": 0.01,
                    "margin_reason": "r"},
                   ["value", "margin"]),
}  # fmt: skip


def _claim_with(kind: str, place: Any, x: Any) -> dict:
    base, _ = CLAIM_BASES[kind]
    c = {"id": "c", "source": "T", "scope": "thesis", "method": "a", "metric": "val_acc",
         **copy.deepcopy(base)}  # fmt: skip
    if isinstance(place, tuple):
        c[place[0]][place[1]] = x
    else:
        c[place] = x
    return c


@st.composite
def claim_places(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(sorted(CLAIM_BASES)))
    return kind, draw(st.sampled_from(CLAIM_BASES[kind][1]))


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
          derandomize=True)
@given(claim_places(), NON_FINITE)
def test_a_non_finite_number_in_a_claim_is_refused_by_name(place, x):
    kind, where = place
    key = where[0] if isinstance(where, tuple) else where
    with pytest.raises(_ConfigError) as err:
        claims_mod.validate_claims({"claims": [_claim_with(kind, where, x)]})
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert f"'{key}'" in msg or f"{key} " in msg, msg
    assert re.search(r"finite number|must be a number|expected a number", msg), msg


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
          derandomize=True)
@given(claim_places(), FINITE)
def test_a_finite_number_in_a_claim_is_never_refused_for_being_infinite(place, x):
    kind, where = place
    try:
        claims_mod.validate_claims({"claims": [_claim_with(kind, where, x)]})
    except _ConfigError as e:  # other rules (a negative margin, low above high) may refuse it
        assert "must be a finite number" not in str(e) and "not a finite" not in str(e), str(e)


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".Inf", "-.INF", "1e999"])
def test_yaml_infinities_in_a_claims_file_are_refused(tmp_path, text):
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n- {id: c, source: T, kind: range, scope: thesis, method: a,\n"
                    f"   metric: val_acc, range: [-1, {text}], margin: 0, margin_reason: r}}\n")
    with pytest.raises(_ConfigError, match=r"claim 'c': 'range'"):
        claims_mod.load_claims(path)
