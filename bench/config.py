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
import difflib
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import yaml

from bench import registry
from bench.errors import ConfigError
from bench.registry import Catalog

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


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (plain YAML loaders silently keep the last)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", again)
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1

    def __str__(self) -> str:
        return (f"line {self.line}: key {self.key!r} is given twice in the same mapping (first "
                f"on line {self.first_line}); YAML would silently keep the last one: remove "
                f"or rename one of them")


def unique_key_loader(base: type = yaml.SafeLoader) -> type:
    """`base` (a safe loader, libyaml's CSafeLoader too) that refuses a key given twice in one
    mapping with `DuplicateKeyError`; every YAML file the project reads (configs, claims) is
    loaded with one. Merge keys (`<<`) keep YAML's meaning: the mapping's own keys win."""

    def construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base constructor says why
                continue
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep)

    loader = type(f"UniqueKey{base.__name__}", (base,), {})
    loader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    return loader


YAML_LOADER = unique_key_loader(yaml.SafeLoader)


def load_yaml_file(path: Path, what: str = "config file") -> Any:
    """A YAML file's document (duplicate keys refused); ConfigError naming the file and line."""
    try:
        return yaml.load(path.read_text(), Loader=YAML_LOADER)
    except DuplicateKeyError as e:
        raise ConfigError(f"{what} {path}, {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Read each YAML file as `load_config` would (a ConfigError for a key given twice): for
    the Snakefile, whose `config` Snakemake parsed with a loader that keeps the last one."""
    for path in paths:
        if Path(path).is_file():
            load_yaml_file(Path(path))


def load_config(paths: Iterable[str | Path]) -> dict:
    """Read and merge YAML config files (later files override earlier ones)."""
    cfg: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        doc = load_yaml_file(path) or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        cfg = deep_merge(cfg, doc)
    return cfg


@cache
def load_schema() -> dict:
    return yaml.load(SCHEMA_PATH.read_text(), Loader=YAML_LOADER)


def validate_schema(cfg: dict) -> None:
    """JSON Schema validation (the same schema Snakemake's `validate` uses)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            what = err.message
            if err.validator == "propertyNames" or (err.validator == "pattern" and err.path
                                                    and err.schema is load_schema()["$defs"]["name"]):
                what += " (a name: letters, digits, _ . -; it becomes a folder and a file name)"
            lines.append(f"at {where}: {what}")
        head = "the configuration does not match config/schema/config.schema.yaml"
        if len(lines) == 1:
            raise ConfigError(f"{head}: {lines[0]}")
        raise ConfigError(f"{head}:\n" + "\n".join(f"  {line}" for line in lines))


def with_defaults(cfg: dict) -> dict:
    return deep_merge(TOP_DEFAULTS, cfg)


# ----------------------------------------------------------------------------- checking


def catalog() -> Catalog:
    """What checking and planning need to know about the registries; see `bench.registry.
    Catalog` (answers from an index, so a check imports no torch once the index is warm)."""
    return registry.catalog()


def _registries() -> tuple[Any, Any, Any]:
    """The live registries (imports torch and every study package)."""
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


def check_config(cfg: dict, deep: bool = True) -> dict:
    """Validate structure, names and options; return the config with defaults filled in.

    Every problem found is reported at once, each with the valid choices. `deep=False` skips
    the checks that need torch and SciPy (claims files; model, dataset and metric checks on the
    meta device), which change nothing in the returned config: for a process re-reading a
    config its workflow already checked in full (a cluster job step), where those imports
    would cost each job about 5 s of CPU.
    """
    if not isinstance(cfg, dict):
        raise ConfigError("the configuration must be a mapping (a YAML document of key: value)")
    problems: list[str] = [*non_finite_numbers(cfg), *name_problems(cfg)]
    if problems:
        raise_problems(problems)
    validate_schema(cfg)
    cfg = with_defaults(cfg)
    cat = catalog()
    methods, models, datasets = cat.methods(), cat.models(), cat.datasets()
    problems += path_problems(cfg)
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
                cat.resolve_method_options(impl, opts)
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
        if deep:
            claims = claims_path(study)
            claims_text = claims.read_bytes() if claims and claims.is_file() else None
            problems.extend(cat.remembered(
                "claims", [study, s, hashlib.sha256(claims_text or b"").hexdigest()],
                partial(_claims_problems, study, s)))
        budgets = [*(s.get("budgets") or []), *(b for bs in (s.get("method_budgets") or {}).values()
                                                for b in bs)]
        for budget in {budget_label(b) for b in budgets}:
            try:
                parse_budget(budget)
            except ConfigError as e:
                problems.append(f"{where}.budgets: {e}")
        for block, lists in (("budgets", {"": s.get("budgets") or []}),
                             ("method_budgets", s.get("method_budgets") or {})):
            for name, values in lists.items():
                labels_seen = [budget_label(b) for b in values]
                twice = sorted({b for b in labels_seen if labels_seen.count(b) > 1})
                if twice:
                    at = f"{where}.{block}" + (f".{name}" if name else "")
                    problems.append(f"{at}: {', '.join(map(repr, values))} name the budget(s) "
                                    f"{', '.join(twice)} more than once (the same cells twice); "
                                    f"list each budget once")
        if problems or not deep:
            continue  # the checks below build models and read options the ones above vetted
        problems += cat.remembered("components", [study, s],
                                   partial(_component_problems, study, s))
        if user_ckpt and not problems:  # not remembered: the file may change under its name
            problems += checkpoint_problems(study, s)
    if problems:
        cat.save()
        raise_problems(problems)
    if deep:
        for warning in config_warnings(cfg, cat):
            if warning not in _WARNED:  # once per process (a Snakefile checks more than once)
                _WARNED.add(warning)
                print(f"warning: {warning}", file=sys.stderr, flush=True)
    cat.save()
    return cfg


# A plan above this many cells gets a warning: each cell is a job Snakemake tracks and a
# config file planning writes (also on `snakemake -n`); 10,000 seeds were once given by
# mistake for 10 and planned 79 MB of config files before anything said so.
LARGE_PLAN_CELLS = 2000
_WARNED: set[str] = set()


def config_warnings(cfg: dict, cat: Catalog | None = None) -> list[str]:
    """What a checked config (defaults filled in) does that is valid but probably not meant:
    budgets given to a method that ignores them (the same cells trained once per budget) and
    a plan large enough to cost real time and disk before the first job."""
    cat = cat or catalog()
    out = []
    for study, s in cfg["studies"].items():
        default_budgets = [budget_label(b) for b in s.get("budgets") or ["none"]]
        for label in s["methods"]:
            own = (s.get("method_budgets") or {}).get(label)
            budgets = [budget_label(b) for b in own] if own else default_budgets
            given = [b for b in budgets if b != "none"]
            impl, _ = method_impl(s, label)
            if not given or any(cat.method_flag(impl, flag)
                                for flag in ("sizes_to_budget", "needs_budget")):
                continue
            what = f"method '{label}'" + (f" (a variant of '{impl}')" if impl != label else "")
            out.append(f"studies.{study}: {what} ignores memory budgets, yet it is given "
                       f"{', '.join(given)}: each budget trains the same cells again (or "
                       f"skips them). Give it `method_budgets: {{{label}: [none]}}`, or drop "
                       f"the budgets")
    sizes = {study: len(list(_study_cells(study, s))) for study, s in cfg["studies"].items()}
    total = sum(sizes.values())
    if total > LARGE_PLAN_CELLS:
        biggest = max(sizes, key=sizes.get)
        s = cfg["studies"][biggest]
        out.append(f"the plan has {total:,} cells ({biggest}: {sizes[biggest]:,}, with "
                   f"{len(seed_indices(s)):,} seeds): Snakemake tracks a job per cell and "
                   f"planning writes a config file per cell, about {total * 4 // 1024:,} MiB "
                   f"under {cfg['results']}/ (on `snakemake -n` too). If that is not what "
                   f"you meant, lower `seeds` (or the other axes) first")
    return out


def _claims_problems(study: str, study_cfg: dict) -> list[str]:
    """The study's claims file checked against the study (bench.claims): format, margins, and
    every method, metric and group a claim names. Runs with the config check, so a bad claim
    stops the workflow before any job."""
    from bench.claims import check_claims_file

    return check_claims_file(claims_path(study), study, study_cfg)


def raise_problems(problems: list[str]) -> None:
    """One problem: one line. Several: a header and one line each."""
    if len(problems) == 1:
        raise ConfigError(f"invalid configuration: {problems[0]}")
    raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def non_finite_numbers(obj: Any, where: str = "") -> Iterator[str]:
    """`where: ...` for every NaN or infinite number anywhere in the config (YAML's .nan, .inf
    pass JSON Schema's `minimum`)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        yield f"{where or '(top level)'}: must be a finite number, got {obj}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from non_finite_numbers(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from non_finite_numbers(v, f"{where}[{i}]")


# A name (study, method label, variant, model, dataset, budget label, ...) becomes a folder of
# every cell's path, part of file names (tables, report figures), a Snakemake wildcard and an
# MLflow experiment or run name: ASCII letters, digits and _ . -, starting with a letter or
# digit, at most NAME_MAX characters (a file system allows 255 per path component, and a
# report file name holds the study's name and more; MLflow names are bounded too).
NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_RULE = (f"a name is 1 to {NAME_MAX} characters: ASCII letters, digits, _ . - (starting "
             f"with a letter or digit); it becomes a folder, file names and MLflow names")


def name_problem(name: Any) -> str | None:
    """Why `name` (a string) cannot be a name, or None. Non-strings are the schema's to refuse.
    `fullmatch`: a trailing newline is refused (a regex `$` would let it through)."""
    if not isinstance(name, str):
        return None
    if len(name) > NAME_MAX:
        return f"it is {len(name)} characters long, more than {NAME_MAX}"
    if not name:
        return "it is empty"
    if not _NAME.fullmatch(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        if bad:
            return f"it holds {', '.join(map(repr, bad))}"
        return f"it starts with {name[0]!r}"
    return None


def _shown(name: str) -> str:
    """A name for a message: a long one cut (the message stays one readable line)."""
    return repr(name) if len(name) <= 48 else f"{name[:40]!r}... ({len(name)} characters)"


def name_problems(cfg: dict) -> list[str]:
    """Every name of the config that becomes a path or an MLflow name, checked before the
    schema (whose `pattern` lets a trailing newline pass and whose message would print a
    300-character name whole): one line per bad name, naming where it is and the rule."""
    out: list[str] = []

    def check(where: str, name: Any) -> None:
        why = name_problem(name)
        if why:
            out.append(f"{where}: {_shown(name)} is not a valid name: {why}; rename it "
                       f"({NAME_RULE})")

    def each(where: str, names: Any, label: Callable[[Any], Any] = lambda n: n) -> None:
        if isinstance(names, dict):
            names = list(names)
        if isinstance(names, list):
            for n in names:
                if isinstance(n, (str, int, float)) and not isinstance(n, bool):
                    check(where, label(n))

    studies = cfg.get("studies")
    if not isinstance(studies, dict):
        return out
    for study, s in studies.items():
        check("studies", study)
        if not isinstance(s, dict):
            continue
        where = f"studies.{_shown(study) if name_problem(study) else study}"
        check(f"{where}.reference", s.get("reference"))
        for key in ("methods", "models", "datasets", "variants", "data_options",
                    "model_options", "method_options"):
            each(f"{where}.{key}", s.get(key))
        variants = s.get("variants")
        for label, v in variants.items() if isinstance(variants, dict) else ():
            if isinstance(v, dict):
                check(f"{where}.variants.{label}.method", v.get("method"))
        each(f"{where}.budgets", s.get("budgets"), budget_label)
        mb = s.get("method_budgets")
        if isinstance(mb, dict):
            each(f"{where}.method_budgets", mb)
            for label, values in mb.items():
                each(f"{where}.method_budgets.{label}", values, budget_label)
        if isinstance(s.get("pretrain"), dict):
            check(f"{where}.pretrain.dataset", s["pretrain"].get("dataset"))
        comparisons = s.get("comparisons")
        for pair in comparisons if isinstance(comparisons, list) else ():
            each(f"{where}.comparisons", pair)
    return out


# Characters a path must not hold: control characters (a newline splits a shell line, a log
# line, a job script) and braces (Snakemake reads them as wildcards in the rules' paths).
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f{}]")


def path_problems(cfg: dict) -> list[str]:
    """Paths go into file patterns and command lines (quoted): spaces, quotes and any Unicode
    are fine; control characters and braces are not."""
    fields = [("results", cfg["results"]), ("data_root", cfg["data_root"]),
              ("tracking.uri", cfg["tracking"].get("uri"))]
    fields += [(f"studies.{name}.pretrain.checkpoint", (s.get("pretrain") or {}).get("checkpoint"))
               for name, s in cfg["studies"].items()]
    out = []
    for where, value in fields:
        if value is None:
            continue
        if not str(value).strip():
            out.append(f"{where}: must not be empty")
        elif m := _BAD_PATH_CHARS.search(str(value)):
            out.append(f"{where}: {value!r} holds {m.group()!r}; paths may hold spaces, quotes "
                       f"and any Unicode, but no control characters and no braces")
    return out


# Final metrics every cell reports (bench.train._final, measure sections: the cells table's
# columns); a method adds its own (`Method.metrics`).
CORE_METRICS = (
    "val_acc", "val_loss", "train_loss", "train_acc", "epochs", "sym_kl", "fgsm_acc", "pgd_acc",
    "param_mib", "grad_mib", "optimizer_state_mib", "activation_mib", "method_buffer_mib",
    "modelled_peak_mib", "peak_alloc_mib", "peak_reserved_mib", "peak_train_mib", "peak_eval_mib",
    "resident_data_mib", "forward_flops_per_image",
    "backward_flops_per_image", "weight_grad_flops_per_image", "params", "train_images_per_s",
    "eval_images_per_s", "train_s", "eval_s", "total_s", "speedup_vs_reference",
)  # fmt: skip


def metric_names(study_cfg: dict) -> list[str]:
    """Metrics a study's cells can report: the core ones and its methods' (patterns allowed)."""
    methods, _, _ = _registries()
    names = list(CORE_METRICS)
    for label in study_cfg["methods"]:
        impl, _ = method_impl(study_cfg, label)
        names += [m for m in getattr(methods.get(impl), "metrics", ()) if m not in names]
    return names


def _component_problems(study: str, s: dict) -> list[str]:
    """Options of each model and dataset, metric names, and whether each model accepts the
    images its datasets give (checked on the meta device: no memory, no data)."""
    import fnmatch

    where = f"studies.{study}"
    problems = []
    known = metric_names(s)
    for metric in s.get("metrics") or []:
        if not any(fnmatch.fnmatchcase(metric, pattern) for pattern in known):
            close = difflib.get_close_matches(metric, [k for k in known if "*" not in k], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"{where}.metrics: unknown metric '{metric}'.{hint} Metrics of this "
                            f"study's cells: {', '.join(known)}")
    shapes = {}
    for dataset in s["datasets"]:
        try:
            shapes[dataset] = dataset_shape(dataset, _data_options(s, dataset))
        except ConfigError as e:
            problems.append(f"{where}: data options of '{dataset}' (data, data_options): {e}")
    for model in s["models"]:
        opts = _model_options(s, model)
        for dataset, (channels, size, classes) in shapes.items():
            why = model_rejects(model, opts, channels, size, classes)
            if why:
                problems.append(f"{where}: model '{model}' on dataset '{dataset}' ({channels}x"
                                f"{size}x{size} images): {why}")
    p = s.get("pretrain") or {}
    if p.get("dataset") and not p.get("checkpoint"):
        try:
            channels, size, classes = dataset_shape(
                p["dataset"], deep_merge(DATA_DEFAULTS, p.get("data") or {}))
        except ConfigError as e:
            problems.append(f"{where}.pretrain.data: {e}")
        else:
            for model in s["models"]:
                why = model_rejects(model, _model_options(s, model), channels, size, classes)
                if why:
                    problems.append(f"{where}.pretrain: model '{model}' on '{p['dataset']}' "
                                    f"({channels}x{size}x{size} images): {why}")
    return problems


def checkpoint_problems(study: str, s: dict) -> list[str]:
    """A study's own `pretrain.checkpoint` read as the cells will read it (bench.pretrain):
    a file of weights that fits each of the study's models, classifier aside. Without this
    check a wrong file passed `validate` and every cell then failed, advising a pretrain rule
    that a study with its own checkpoint does not have."""
    import torch

    from bench.errors import BenchError
    from bench.models import build_model
    from bench.pretrain import backbone_mismatch, read_weights

    where = f"studies.{study}.pretrain.checkpoint"
    path = s["pretrain"]["checkpoint"]
    try:
        state = read_weights(path)
    except BenchError as e:
        return [f"{where}: {e}"]
    out = []
    channels, _, classes = dataset_shape(s["datasets"][0], _data_options(s, s["datasets"][0]))
    for model in s["models"]:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):  # shapes only
            own = build_model(model, classes, channels, _model_options(s, model)).state_dict()
        why = backbone_mismatch(own, state)
        if why:
            out.append(f"{where}: {path} does not fit model '{model}' at its options "
                       f"{canonical_json(_model_options(s, model))}: {why}; point it at a "
                       f"checkpoint of this model (same width and options), or drop "
                       f"`checkpoint` and give pretrain.dataset and pretrain.epochs to let "
                       f"the workflow pretrain one")
    return out


def dataset_shape(name: str, options: dict) -> tuple[int, int, int]:
    """(channels, image size, classes) a dataset gives under `options`, without loading it.

    Read from the loader module's DEFAULTS (and NATIVE_SIZE, CHANNELS, NUM_CLASSES where it
    has them); unknown options and wrong types are a ConfigError, as the loader would raise.
    """
    import sys

    from bench.data import LOADER_OPTIONS, SUBSET_OPTIONS, check_image_size, resolve_options

    _, _, datasets = _registries()
    module = sys.modules[datasets.get(name).__module__]
    defaults = dict(getattr(module, "DEFAULTS", {}))
    own = {k: v for k, v in options.items() if k not in LOADER_OPTIONS + SUBSET_OPTIONS}
    opts = resolve_options(name, own, defaults)
    for key, default in defaults.items():
        if isinstance(default, bool) and not isinstance(opts[key], bool):
            raise ConfigError(f"{name}: {key} must be true or false, got {opts[key]!r}")
    for key, least in (("train_subset", 2), ("val_subset", 1)):
        n = options.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < least):
            raise ConfigError(f"{name}: {key} must be an integer >= {least} or null, got {n!r}"
                              + (" (a training batch needs two images)" if least == 2 else ""))
    check = getattr(module, "check_options", None)
    if check is not None:
        opts = check(opts)
    size = check_image_size(name, opts.get("image_size"))
    if size is None:
        size = defaults.get("image_size") or getattr(module, "NATIVE_SIZE", 32)
    channels = int(opts.get("channels") or getattr(module, "CHANNELS", 3))
    known = getattr(module, "NUM_CLASSES", None)
    known = known.get(name) if isinstance(known, dict) else known
    classes = int(opts.get("num_classes") or known or 10)
    chosen = options.get("classes")
    if chosen is not None:
        valid = (isinstance(chosen, list) and chosen
                 and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in chosen)
                 and len(set(chosen)) == len(chosen)
                 and (known is None and "num_classes" not in opts or max(chosen) < classes))
        if not valid:
            raise ConfigError(f"{name}: classes must be distinct class indices in "
                              f"0..{classes - 1}, got {chosen!r}")
    kept = len(chosen) if chosen is not None else classes
    if kept < 2:
        raise ConfigError(
            f"{name}: {'classes keeps' if chosen is not None else 'it has'} {kept} class: a "
            f"classifier needs at least two (with one, every model scores val_acc 1.0); "
            f"keep two or more classes")
    _check_split_sizes(name, opts, options, classes)
    return channels, int(size), kept


# Images per class of each split, for the datasets whose files are fixed (digits: its content
# is checked against bench.data.digits.CONTENT_SHA256; CIFAR: torchvision's archives): what
# `classes`, `train_subset` and `val_subset` are checked against before any job. A dataset
# missing here (a study's own) is checked when it loads; synthetic sizes come from its options.
CLASS_COUNTS: dict[str, tuple[list[int], list[int]]] = {
    "digits": ([142, 146, 142, 146, 145, 145, 145, 143, 139, 144],
               [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]),
    "cifar10": ([5000] * 10, [1000] * 10),
    "cifar100": ([500] * 100, [100] * 100),
}


def _balanced(n: int, k: int) -> list[int]:
    """Images per class of n images labelled position mod k (bench.data.synthetic)."""
    return [n // k + (1 if c < n % k else 0) for c in range(k)]


def _check_split_sizes(name: str, opts: dict, options: dict, classes: int) -> None:
    """train_subset / val_subset no larger than the split (after `classes`), and at least two
    training images and one validation image left: what the loader would refuse after the
    workflow started, refused before any job."""
    if name in CLASS_COUNTS:
        counts = CLASS_COUNTS[name]
    elif name == "synthetic" and isinstance(opts.get("n_train"), int):
        counts = (_balanced(opts["n_train"], classes), _balanced(opts["n_val"], classes))
    else:
        return
    chosen = options.get("classes")
    sizes = [sum(c[i] for i in chosen) if chosen else sum(c) for c in counts]
    kept = f" of classes {chosen}" if chosen else ""
    for split, n, option, least in (("train", sizes[0], "train_subset", 2),
                                    ("validation", sizes[1], "val_subset", 1)):
        if n < least:
            raise ConfigError(f"{name}: the {split} split{kept} holds {n} image(s), fewer than "
                              f"{least}; keep more classes (or, for synthetic, more images)")
        want = options.get(option)
        if isinstance(want, int) and not isinstance(want, bool) and want > n:
            raise ConfigError(f"{name}: {option} is {want} but the {split} split{kept} holds "
                              f"only {n} images; use at most {n}, or null for all of them")


# Width scales channel counts only, never the spatial layout: the shape check builds the model
# at this width, so it costs milliseconds whatever the configured width is.
PROBE_WIDTH = 0.0625


@cache
def _model_verdict(name: str, options_json: str, channels: int, size: int, classes: int
                   ) -> str | None:
    import torch

    from bench.models import build_model, check_width

    options = json.loads(options_json)
    try:
        check_width(options.get("width", 1.0))
        with torch.random.fork_rng(devices=[]):  # the caller's random stream stays untouched
            model = build_model(name, classes, channels, {**options, "width": PROBE_WIDTH})
    except ConfigError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a factory refusing a value: the user's to fix
        return f"its options {options_json} are refused ({type(e).__name__}: {e})"
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size))  # (B, C, H, W)
    except Exception as e:  # noqa: BLE001 - the shape error is the message
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return (f"the model cannot run on {size}x{size} images ({first}); use a larger "
                f"data.image_size or a shallower model")
    return None


def model_rejects(name: str, options: dict, channels: int, size: int, classes: int
                  ) -> str | None:
    """Why model `name` cannot be built with `options` or run on (channels, size, size)
    images, or None. Built at a small width on the CPU and run on one blank image."""
    return _model_verdict(name, canonical_json(options), channels, size, classes)


def check_device(cfg: dict) -> None:
    """`device: cuda` (or cuda:N) needs a CUDA device here; ConfigError otherwise."""
    device = str(cfg.get("device", "auto"))
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device: {device} was asked for but CUDA is not available on this "
                          f"machine; use device: auto (or cpu), or run where a GPU is")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device: {device} does not exist: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s) (cuda:0.."
                          f"cuda:{torch.cuda.device_count() - 1})")


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
        **_threads_entry(cfg),
    }


def _threads_entry(cfg: dict) -> dict:
    """`threads` for an upstream stage's spec: the job runs the config's count (not the cores
    Snakemake grants, see bench.cli._config_threads) and its output depends on it, so a
    changed count is a new file. Left out at 1, the default, so that the specs (and the paths
    of their outputs) made before it was recorded stay the same."""
    threads = int(cfg.get("threads", 1))
    return {} if threads == 1 else {"threads": threads}


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
        **_threads_entry(cfg),
    }


def ranking_path(cfg: dict, study: str, model: str, dataset: str) -> str:
    cfg = with_defaults(cfg)
    spec = ranking_spec(cfg, study, model, dataset)
    return f"{cfg['results']}/{study}/ranking/{model}/{dataset}/{spec_hash(spec)}.json"


class CellResolver:
    """Resolves the cells of one configuration, each part computed once.

    What a cell's resolved config holds depends on its study (train, evaluation, metrics),
    its (study, method) (the resolved method options), its (study, model) (model options,
    pretrained checkpoint), its (study, dataset) (data options) and its (study, model,
    dataset) (layer ranking); only the seed is the cell's own. Each part is computed on first
    use and shared by every cell that needs it, so planning 10,000 cells costs a few dict
    lookups per cell instead of deep merges of the whole configuration
    (benchmarks/plan_scale.py). The dicts `resolve` returns share those parts and are
    remembered per cell: treat them as read-only (`resolve_cell` returns an independent one).
    """

    def __init__(self, cfg: dict, catalog: Catalog | None = None) -> None:
        self.cfg = with_defaults(cfg)  # one deep copy: later edits of `cfg` do not leak in
        self._catalog = catalog
        self._parts: dict[tuple, Any] = {}
        self._cells: dict[Cell, dict] = {}
        self._json: dict[Cell, str] = {}

    def _part(self, key: tuple, make: Callable[[], Any]) -> Any:
        try:
            return self._parts[key]
        except KeyError:
            value = self._parts[key] = make()
            return value

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = catalog()
        return self._catalog

    def _study(self, study: str) -> dict:
        def make() -> dict:
            s = self.cfg["studies"][study]
            return {
                "reference": s["reference"],
                "epochs": s["epochs"],
                "train": deep_merge(TRAIN_DEFAULTS, s.get("train") or {}),
                "metrics": list(s.get("metrics") or ["val_acc", "val_loss"]),
                "evaluation": deep_merge(EVAL_DEFAULTS, s.get("evaluation") or {}),
            }

        return self._part(("study", study), make)

    def _method(self, study: str, label: str) -> tuple[str, dict, bool]:
        def make() -> tuple[str, dict, bool]:
            s = self.cfg["studies"][study]
            impl, variant_opts = method_impl(s, label)
            opts = self.catalog.resolve_method_options(
                impl, deep_merge(variant_opts, (s.get("method_options") or {}).get(label, {})))
            return impl, opts, self.catalog.method_flag(impl, "needs_ranking")

        return self._part(("method", study, label), make)

    def _model(self, study: str, model: str) -> tuple[dict, str | None]:
        def make() -> tuple[dict, str | None]:
            s = self.cfg["studies"][study]
            return _model_options(s, model), pretrain_checkpoint(self.cfg, study, model)

        return self._part(("model", study, model), make)

    def _data(self, study: str, dataset: str) -> dict:
        return self._part(("data", study, dataset),
                          lambda: _data_options(self.cfg["studies"][study], dataset))

    def _ranking(self, study: str, model: str, dataset: str) -> str:
        return self._part(("ranking", study, model, dataset),
                          lambda: ranking_path(self.cfg, study, model, dataset))

    def resolve(self, cell: Cell) -> dict:
        """The resolved config of `cell` (remembered; read-only, see the class docstring)."""
        try:
            return self._cells[cell]
        except KeyError:
            pass
        cfg = self.cfg
        study = self._study(cell.study)
        impl, method_opts, needs_ranking = self._method(cell.study, cell.method)
        model_opts, checkpoint = self._model(cell.study, cell.model)
        inputs: dict[str, str] = {}
        if checkpoint:
            inputs["init_checkpoint"] = checkpoint
        if needs_ranking:
            inputs["ranking"] = self._ranking(cell.study, cell.model, cell.dataset)
        resolved = self._cells[cell] = {
            "study": cell.study,
            "method": cell.method,
            "model": cell.model,
            "dataset": cell.dataset,
            "budget": cell.budget,
            "seed_index": cell.seed,
            "seed": derive_seed(cell.study, cell.model, cell.dataset, cell.seed),
            "reference": study["reference"],
            "method_impl": impl,
            "epochs": study["epochs"],
            "train": study["train"],
            "data": self._data(cell.study, cell.dataset),
            "model_options": model_opts,
            "method_options": method_opts,
            "metrics": study["metrics"],
            "evaluation": study["evaluation"],
            "inputs": inputs,  # files the cell reads: the pretrained checkpoint, the layer ranking
            "device": cfg["device"],
            "threads": cfg["threads"],
            "data_root": cfg["data_root"],
        }
        return resolved

    def json(self, cell: Cell) -> str:
        """`json.dumps(resolve(cell), sort_keys=True)`, remembered per cell."""
        try:
            return self._json[cell]
        except KeyError:
            text = self._json[cell] = json.dumps(self.resolve(cell), sort_keys=True)
            return text


def resolve_cell(cfg: dict, cell: Cell) -> dict:
    """The resolved config of one cell: every setting that determines its result.

    An independent dict; to resolve many cells of one config, use one `CellResolver`."""
    return CellResolver(cfg).resolve(cell)


def cell_config_digest(resolved: dict) -> str:
    """First 12 hex digits of the sha256 of everything in a resolved cell config (threads and
    device included: they are what the job is told)."""
    return hashlib.sha256(canonical_json(resolved).encode()).hexdigest()[:12]


def cell_config_path(results: str | Path, cell: Cell, resolved: dict) -> Path:
    """<cell>/config-<digest>.json: the resolved config the cell's job reads."""
    return cell_dir(results, cell) / f"config-{cell_config_digest(resolved)}.json"


def write_cell_config(results: str | Path, cell: Cell, resolved: dict) -> Path:
    """Make sure <cell>/config-<digest>.json holds the cell's resolved config; return its path.

    What makes the workflow rerun exactly the cells whose setting changed, from the files
    alone (no `.snakemake/` metadata needed): the file is the train job's input, so
    - a new digest (a changed setting, or a new cell) is a new file, newer than any result:
      the cell reruns;
    - a file written for a result that already holds this very config (a fresh clone, results
      made before these files existed) is dated just before that result: nothing reruns.
    An existing file is left alone (one stat: planning stays cheap). Planning never deletes:
    the job that trains the cell drops its other config files (`drop_other_cell_configs`), so
    a setting changed and changed back finds no old file that would claim a newer result.
    """
    path = cell_config_path(results, cell, resolved)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # compact (one line): a plan writes one per cell, also on `snakemake -n`
    text = canonical_json(resolved) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    result = path.parent / "result.json"
    try:
        doc = json.loads(result.read_text())
        same = canonical_json(doc.get("config")) == canonical_json(resolved)
        if same:
            before = result.stat().st_mtime_ns - 1_000_000_000
            os.utime(path, ns=(before, before))
    except (OSError, ValueError, AttributeError):
        pass  # no result (or an unreadable one): the cell runs
    return path


def drop_other_cell_configs(used: Path) -> None:
    """After a cell trained from `used` (a <cell>/config-<digest>.json), remove the cell's
    config files of other settings: only the one its result was made from stays."""
    for other in used.parent.glob("config-*.json"):
        if other.name != used.name:
            other.unlink(missing_ok=True)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(resolved: dict) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of a resolved cell config.

    `threads` and `device` are excluded although they shape a CPU result (torch splits
    reductions by thread count): the plan cannot know what `device: auto` resolves to where
    the cell runs, and hashing them would call every existing result stale. A job always runs
    the config's `threads`, even under a smaller `--cores` (bench.cli._config_threads): one
    config, one result. A changed setting reruns the cell (its config file changes), a resume
    under other threads or another device starts the cell over
    (`bench.train.ENVIRONMENT_KEYS`), and `bench verify` flags a result computed with other
    settings than the config's.
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
