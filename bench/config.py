"""The configuration: load, validate, resolve into cells.

One typed entry point for every consumer (the Snakefile, `python -m bench`, the tests):

    cfg = load_config(["config/config.yaml"])   # YAML files merged in order
    check_config(cfg)                          # schema + registry names + component options
    for cell in plan(cfg): resolve_cell(cfg, cell)

A *cell* is (study, method, model, dataset, budget, seed index). Its resolved config holds
everything that determines its result; its hash keys the result on disk and in MLflow.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / "schema" / "config.schema.yaml"

# Defaults of the study-level blocks; a study's config overrides them key by key.
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 128,
    "eval_batch_size": 512,
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "schedule": "constant",  # constant | cosine (to 0, per step) | step (x step_gamma at step_epochs)
    "step_epochs": [],
    "step_gamma": 0.1,
    "warmup_epochs": 0,  # linear warm-up, in epochs (fractions allowed)
    "label_smoothing": 0.0,
    "warmup_steps": 5,  # first steps of the run excluded from throughput
    "cudnn_benchmark": False,
}
# `image_size` has no default here: each dataset has its own (digits: 32, CIFAR: 32); an
# explicit null asks for the native size (digits: 8).
DATA_DEFAULTS: dict[str, Any] = {
    "augment": True,  # random crop with padding + horizontal flip, on the device
    "crop_padding": 4,  # pixels
    "flip": True,
    "train_subset": None,  # first n images after a fixed permutation (quick/smoke configs)
    "val_subset": None,
}
EVAL_DEFAULTS: dict[str, Any] = {
    "metrics": [],  # optional: sym_kl (always computed), fgsm_acc, pgd_acc, elasticity, grad_variance
    "adv_every": 1,  # adversarial metrics every N epochs, and always after the last
    "eps": 8 / 255,  # L-inf radius in [0, 1] pixel units (perturbation before normalisation)
    "pgd_step": 2 / 255,
    "pgd_steps": 10,
    "pgd_random_start": False,
    "pgd_seed": 0,
    "adv_max_images": None,  # None = the whole validation split
}
TOP_DEFAULTS: dict[str, Any] = {
    "results": "results",
    "data_root": "data",
    "device": "auto",
    "threads": 1,
    "tracking": {"enabled": True, "uri": None},
    "report": {"title": "memrepro report"},
}


@dataclass(frozen=True, order=True)
class Cell:
    study: str
    method: str
    model: str
    dataset: str
    budget: str
    seed: int  # seed index, not the integer seed

    @property
    def cell_id(self) -> str:
        return "/".join(
            [self.study, self.method, self.model, self.dataset, self.budget, f"s{self.seed}"]
        )

    def axes(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "method": self.method,
            "model": self.model,
            "dataset": self.dataset,
            "budget": self.budget,
            "seed": self.seed,
        }

    @classmethod
    def from_id(cls, cell_id: str) -> Cell:
        parts = cell_id.split("/")
        if len(parts) != 6 or not parts[5].startswith("s") or not parts[5][1:].isdigit():
            raise ConfigError(
                f"malformed cell id '{cell_id}': expected study/method/model/dataset/budget/s<seed>"
            )
        return cls(*parts[:5], int(parts[5][1:]))


def cell_dir(results: str | Path, cell: Cell) -> Path:
    """results/<study>/cells/<method>/<model>/<dataset>/<budget>/s<seed>"""
    return (
        Path(results) / cell.study / "cells" / cell.method / cell.model / cell.dataset
        / cell.budget / f"s{cell.seed}"
    )


# ----------------------------------------------------------------------------- loading


def deep_merge(base: dict, override: dict) -> dict:
    """Merge `override` into a copy of `base`; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(paths: Iterable[str | Path]) -> dict:
    """Read and merge YAML config files (later files override earlier ones)."""
    cfg: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        cfg = deep_merge(cfg, doc)
    return cfg


@cache
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_schema(cfg: dict) -> None:
    """JSON Schema validation (the same schema Snakemake's `validate` uses)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  at {where}: {err.message}")
        raise ConfigError("the configuration does not match config/schema/config.schema.yaml:\n"
                          + "\n".join(lines))


def with_defaults(cfg: dict) -> dict:
    return deep_merge(TOP_DEFAULTS, cfg)


# ----------------------------------------------------------------------------- checking


def _registries() -> tuple[Any, Any, Any]:
    from bench.data import DATASETS
    from bench.methods import METHODS
    from bench.models import MODELS

    return METHODS, MODELS, DATASETS


def method_impl(study_cfg: dict, label: str) -> tuple[str, dict]:
    """The registered method behind a method label, and the label's own options."""
    variant = (study_cfg.get("variants") or {}).get(label)
    if variant is None:
        return label, {}
    return variant["method"], dict(variant.get("options") or {})


def check_config(cfg: dict) -> dict:
    """Validate structure, names and options; return the config with defaults filled in.

    Every problem found is reported at once, each with the valid choices.
    """
    validate_schema(cfg)
    cfg = with_defaults(cfg)
    methods, models, datasets = _registries()
    problems: list[str] = []
    for study, s in cfg["studies"].items():
        where = f"studies.{study}"
        labels = s["methods"]
        if s["reference"] not in labels:
            problems.append(
                f"{where}.reference: '{s['reference']}' is not one of the study's methods "
                f"({', '.join(labels)})"
            )
        for label in list(s.get("variants") or {}):
            if label in methods:
                problems.append(f"{where}.variants.{label}: a variant may not reuse the name of a "
                                f"registered method; choose another label")
        for label in labels:
            impl, variant_opts = method_impl(s, label)
            if impl not in methods:
                problems.append(f"{where}.methods: {methods.unknown_message(impl)} "
                                f"(or define '{impl}' under {where}.variants)")
                continue
            opts = deep_merge(variant_opts, (s.get("method_options") or {}).get(label, {}))
            try:
                methods.get(impl).resolve_options(opts)
            except ConfigError as e:
                problems.append(f"{where}.method_options.{label}: {e}")
        user_ckpt = (s.get("pretrain") or {}).get("checkpoint")
        if user_ckpt and not Path(user_ckpt).is_file():
            problems.append(f"{where}.pretrain.checkpoint: {user_ckpt} does not exist (give the "
                            f"path of a checkpoint of this study's model, or drop `checkpoint` "
                            f"to let the pretrain rule make one)")
        if s.get("pretrain") and not s["pretrain"].get("checkpoint"):
            missing = [k for k in ("dataset", "epochs") if k not in s["pretrain"]]
            if missing:
                problems.append(f"{where}.pretrain: needs {' and '.join(missing)} (or a "
                                f"`checkpoint` path to use instead of the pretrain rule)")
            elif s["pretrain"]["dataset"] not in datasets:
                problems.append(f"{where}.pretrain.dataset: "
                                f"{datasets.unknown_message(s['pretrain']['dataset'])}")
        for name in s["models"]:
            if name not in models:
                problems.append(f"{where}.models: {models.unknown_message(name)}")
        for name in s["datasets"]:
            if name not in datasets:
                problems.append(f"{where}.datasets: {datasets.unknown_message(name)}")
        # per-name blocks must name one of the study's methods / models / datasets
        for block, axis, members in (("method_options", "methods", labels),
                                     ("method_budgets", "methods", labels),
                                     ("model_options", "models", s["models"]),
                                     ("data_options", "datasets", s["datasets"])):
            for name in (s.get(block) or {}):
                if name not in members:
                    problems.append(f"{where}.{block}.{name}: '{name}' is not one of the "
                                    f"study's {axis} ({', '.join(members)})")
        for pair in s.get("comparisons") or []:
            for name in pair:
                if name not in labels:
                    problems.append(f"{where}.comparisons: '{name}' is not one of the study's "
                                    f"methods ({', '.join(labels)})")
        problems.extend(_claims_problems(study, s))
        budgets = [*(s.get("budgets") or []), *(b for bs in (s.get("method_budgets") or {}).values()
                                                for b in bs)]
        for budget in {budget_label(b) for b in budgets}:
            try:
                parse_budget(budget)
            except ConfigError as e:
                problems.append(f"{where}.budgets: {e}")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return cfg


def _claims_problems(study: str, study_cfg: dict) -> list[str]:
    """The study's claims file checked against the study (bench.claims): format, margins, and
    every method, metric and group a claim names. Runs with the config check, so a bad claim
    stops the workflow before any job."""
    from bench.claims import check_claims_file

    return check_claims_file(claims_path(study), study, study_cfg)


# ----------------------------------------------------------------------------- the plan


def budget_label(value: Any) -> str:
    """Budgets become path-safe strings: 27946 -> '27946', 'none' stays."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def parse_budget(label: str) -> tuple[float, str] | None:
    """'none' -> None; '512MiB' -> (512.0, 'MiB'); '27946' -> (27946.0, 'units')."""
    if label == "none":
        return None
    for unit in ("MiB", "GiB", "kB", "units"):
        if label.endswith(unit):
            return float(label[: -len(unit)]), unit
    try:
        return float(label), "units"
    except ValueError:
        raise ConfigError(f"budget '{label}' is neither 'none' nor a number with an optional "
                          f"unit (MiB, GiB, kB, units)") from None


def seed_indices(study_cfg: dict) -> list[int]:
    seeds = study_cfg["seeds"]
    return list(range(seeds)) if isinstance(seeds, int) else sorted(seeds)


def _study_cells(study: str, s: dict) -> Iterator[Cell]:
    default_budgets = [budget_label(b) for b in s.get("budgets") or ["none"]]
    for method in s["methods"]:
        own = (s.get("method_budgets") or {}).get(method)
        budgets = [budget_label(b) for b in own] if own else default_budgets
        for model in s["models"]:
            for dataset in s["datasets"]:
                for budget in budgets:
                    for seed in seed_indices(s):
                        yield Cell(study, method, model, dataset, budget, seed)


def plan(cfg: dict, study: str | None = None) -> list[Cell]:
    """Every cell of the configuration (or of one study), in a stable order."""
    studies = cfg["studies"]
    if study is not None and study not in studies:
        raise ConfigError(f"unknown study '{study}'. Studies in this config: {', '.join(studies)}")
    names = [study] if study else list(studies)
    return [cell for name in names for cell in _study_cells(name, studies[name])]


def derive_seed(study: str, model: str, dataset: str, seed_index: int) -> int:
    """The integer seed of a cell: a function of (study, model, dataset, seed index) only,
    never of the method, so methods are paired by construction."""
    digest = hashlib.sha256(f"{study}|{model}|{dataset}|{seed_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


RANKING_DEFAULTS: dict[str, Any] = {"epochs": 1, "fraction": 0.97}


def dataset_spec(cfg: dict[str, Any], dataset: str, study: str | None = None) -> dict[str, Any]:
    """What loading one dataset depends on: data_root and the data options of each study that
    uses it (or of one study)."""
    options = {
        name: deep_merge(deep_merge(DATA_DEFAULTS, s.get("data") or {}),
                         (s.get("data_options") or {}).get(dataset, {}))
        for name, s in cfg["studies"].items()
        if dataset in s["datasets"] and study in (None, name)
    }
    if not options:
        raise ConfigError(f"no study of this config uses dataset '{dataset}'")
    return {"data_root": cfg["data_root"], "options": options}


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:10]


def _model_options(s: dict, model: str) -> dict:
    opts = deep_merge({"width": 1.0}, s.get("model") or {})
    return deep_merge(opts, (s.get("model_options") or {}).get(model, {}))


def _data_options(s: dict, dataset: str) -> dict:
    data = deep_merge(DATA_DEFAULTS, s.get("data") or {})
    return deep_merge(data, (s.get("data_options") or {}).get(dataset, {}))


def pretrain_spec(cfg: dict, study: str, model: str) -> dict | None:
    """What the upstream checkpoint of (study, model) depends on; None when the study has no
    pretrain stage or names its own checkpoint."""
    cfg = with_defaults(cfg)
    s = cfg["studies"][study]
    p = s.get("pretrain")
    if not p or p.get("checkpoint"):
        return None
    return {
        "study": study,
        "model": model,
        "model_options": _model_options(s, model),
        "dataset": p["dataset"],
        "data": deep_merge(DATA_DEFAULTS, p.get("data") or {}),
        "epochs": p["epochs"],
        "train": deep_merge(deep_merge(TRAIN_DEFAULTS, s.get("train") or {}), p.get("train") or {}),
        "seed": derive_seed(study, model, f"pretrain:{p['dataset']}", 0),
        "data_root": cfg["data_root"],
    }


def pretrain_checkpoint(cfg: dict, study: str, model: str) -> str | None:
    """The checkpoint every cell of (study, model) starts from: the user's, or the rule's."""
    cfg = with_defaults(cfg)
    p = cfg["studies"][study].get("pretrain")
    if not p:
        return None
    if p.get("checkpoint"):
        return str(p["checkpoint"])
    spec = pretrain_spec(cfg, study, model)
    return f"{cfg['results']}/{study}/pretrain/{model}/{spec_hash(spec)}/model.pt"


def ranking_spec(cfg: dict, study: str, model: str, dataset: str) -> dict:
    """What the layer ranking of (study, model, dataset) depends on."""
    cfg = with_defaults(cfg)
    s = cfg["studies"][study]
    return {
        "study": study,
        "model": model,
        "model_options": _model_options(s, model),
        "dataset": dataset,
        "data": _data_options(s, dataset),
        "train": deep_merge(TRAIN_DEFAULTS, s.get("train") or {}),
        "ranking": deep_merge(RANKING_DEFAULTS, s.get("ranking") or {}),
        "init_checkpoint": pretrain_checkpoint(cfg, study, model),
        "seed": derive_seed(study, model, dataset, 0),
        "data_root": cfg["data_root"],
    }


def ranking_path(cfg: dict, study: str, model: str, dataset: str) -> str:
    cfg = with_defaults(cfg)
    spec = ranking_spec(cfg, study, model, dataset)
    return f"{cfg['results']}/{study}/ranking/{model}/{dataset}/{spec_hash(spec)}.json"


def resolve_cell(cfg: dict, cell: Cell) -> dict:
    """The resolved config of one cell: every setting that determines its result."""
    cfg = with_defaults(cfg)
    s = cfg["studies"][cell.study]
    impl, variant_opts = method_impl(s, cell.method)
    methods, _, _ = _registries()
    method_opts = methods.get(impl).resolve_options(
        deep_merge(variant_opts, (s.get("method_options") or {}).get(cell.method, {}))
    )
    model_opts = _model_options(s, cell.model)
    data = _data_options(s, cell.dataset)
    inputs: dict[str, str] = {}
    checkpoint = pretrain_checkpoint(cfg, cell.study, cell.model)
    if checkpoint:
        inputs["init_checkpoint"] = checkpoint
    if methods.get(impl).needs_ranking:
        inputs["ranking"] = ranking_path(cfg, cell.study, cell.model, cell.dataset)
    return {
        "study": cell.study,
        "method": cell.method,
        "model": cell.model,
        "dataset": cell.dataset,
        "budget": cell.budget,
        "seed_index": cell.seed,
        "seed": derive_seed(cell.study, cell.model, cell.dataset, cell.seed),
        "reference": s["reference"],
        "method_impl": impl,
        "epochs": s["epochs"],
        "train": deep_merge(TRAIN_DEFAULTS, s.get("train") or {}),
        "data": data,
        "model_options": model_opts,
        "method_options": method_opts,
        "metrics": list(s.get("metrics") or ["val_acc", "val_loss"]),
        "evaluation": deep_merge(EVAL_DEFAULTS, s.get("evaluation") or {}),
        "inputs": inputs,  # files the cell reads: the pretrained checkpoint, the layer ranking
        "device": cfg["device"],
        "threads": cfg["threads"],
        "data_root": cfg["data_root"],
    }


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(resolved: dict) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of a resolved cell config.

    `threads` and `device` are excluded although they shape a CPU result (torch splits
    reductions by thread count): the plan cannot know what they resolve to where the cell runs
    (`device: auto` on a GPU node, the threads Snakemake grants under `--cores`), and hashing
    them would call every existing result stale. Instead a changed setting reruns the cell (it
    is in the rule's params), a resume under other threads or another device starts the cell
    over (`bench.train.ENVIRONMENT_KEYS`), and `bench verify` flags a result computed with
    other settings than the config's.
    """
    keyed = {k: v for k, v in resolved.items() if k not in ("threads", "device")}
    return hashlib.sha256(canonical_json(keyed).encode()).hexdigest()[:12]


def tracking_uri(cfg: dict, environ: dict[str, str] | None = None) -> str:
    """MLFLOW_TRACKING_URI > config tracking.uri > sqlite:///<results>/mlflow.db (absolute)."""
    import os

    env = os.environ if environ is None else environ
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    cfg = with_defaults(cfg)
    if cfg["tracking"].get("uri"):
        return cfg["tracking"]["uri"]
    return "sqlite:///" + str((Path(cfg["results"]) / "mlflow.db").resolve())


def claims_path(study: str) -> Path | None:
    """The study's claims file (`bench/studies/<study>/claims.yaml`), or None without one."""
    from bench import studies

    return studies.claims_file(study)
