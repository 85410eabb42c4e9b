"""`python -m bench new-study`: the skeleton names only hooks that exist, carries a METHODS.md with
a citation section, and prints a config block that a demo runs in seconds, not minutes."""

from __future__ import annotations

import ast
import re

import torch
import yaml

from bench.config import check_config, dataset_shape
from bench.measure import count_flops
from bench.methods.base import Method
from bench.models import build_model
from bench.newstudy import HOOKS, config_block, write_skeleton
from tests.test_self_contained import CITATION_FIELDS, _citation

DIGITS_IMAGES = 1797  # scikit-learn's digits, all of them: an upper bound on the train split
# A demo's whole training, in FLOPs: about a minute of one CPU core at 20 GFLOP/s. The block
# printed before (ResNet-18 at full width on 32x32 digits, 3 seeds) was ~7e13: 8 min measured.
DEMO_FLOPS = 1e12


def test_the_method_skeleton_names_only_hooks_of_the_method_contract(tmp_path):
    folder = write_skeleton("tiny_h", tmp_path)
    doc = ast.get_docstring(ast.parse((folder / "tiny_h_method.py").read_text()))
    named = set(re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", doc)) - {"tiny_h_method", "owns_loop"}
    assert named, doc
    assert named <= set(HOOKS), f"the skeleton names {sorted(named - set(HOOKS))}, not hooks"
    missing = [h for h in HOOKS if not callable(getattr(Method, h, None))]
    assert not missing, f"bench.methods.base.Method has no hook {missing}"
    assert hasattr(Method, "owns_loop") and callable(Method.fit)


def test_the_skeleton_carries_a_methods_page_with_a_citation(tmp_path):
    folder = write_skeleton("tiny_c", tmp_path, title="A Paper on Something")
    fields = _citation((folder / "METHODS.md").read_text())
    assert set(CITATION_FIELDS) <= set(fields), fields
    assert fields["Title"] == "A Paper on Something"
    assert "(METHODS.md)" in (folder / "README.md").read_text()


def test_the_printed_config_block_is_valid_and_a_demo_trains_in_seconds():
    block = yaml.safe_load("studies:\n" + config_block("tiny_d", "A Paper"))["studies"]["tiny_d"]
    methods = block["methods"]
    # the skeleton's own method is plain SGD; validate the block's keys with the generic method
    cfg = check_config({"device": "cpu", "tracking": {"enabled": False},
                        "studies": {"tiny_d": {**block, "methods": ["sgd"]}}})
    study = cfg["studies"]["tiny_d"]
    cells = len(methods) * study["seeds"] * len(study["models"]) * len(study["datasets"])
    total = 0.0
    for model_name in study["models"]:
        for dataset in study["datasets"]:
            channels, size, classes = _shape(dataset, study)
            model = build_model(model_name, classes, channels, study.get("model", {}))
            flops = count_flops(model, torch.zeros(2, channels, size, size),
                                torch.zeros(2, dtype=torch.long))
            per_image = (flops.forward + flops.backward) / 2
            total += per_image * DIGITS_IMAGES * study["epochs"]
    total *= cells / (len(study["models"]) * len(study["datasets"]))
    assert total < DEMO_FLOPS, (f"the printed config trains {total:.2g} FLOPs: a demo would take "
                                f"minutes; shrink model.width, data.image_size or epochs")


def _shape(dataset: str, study: dict) -> tuple[int, int, int]:
    """(channels, image size, classes) of a study's dataset, from the harness's own reader."""
    options = {**study.get("data", {}), **study.get("data_options", {}).get(dataset, {})}
    return dataset_shape(dataset, options)
