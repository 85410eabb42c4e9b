"""`python -m bench new-study NAME`: the skeleton of a new paper's study folder.

Writes `bench/studies/NAME/` (or `<dest>/NAME/`) with a METHODS.md (the paper's citation and the
method specification) and a README to fill in, an empty claims file, one method (registered as
`NAME_method`, plain SGD to start from) and an `__init__.py` that registers it, and prints the
config block to add to each config: a quick one (a small network for two epochs on the embedded
digits, seconds per cell on a CPU) to scale up once the method works. Nothing else needs touching:
the study is found because its folder is there (`bench.studies`), and the registry-driven tests
cover its method without a new test file.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from bench.errors import ConfigError

NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# The hooks a method may override (bench.methods.base.Method), named in the method skeleton.
HOOKS = ("build_optimizer", "setup", "on_epoch_start", "training_step", "before_optimizer_step",
         "on_epoch_end", "final_metrics", "buffer_bytes")

INIT = '''\
"""Study `{name}`: {title}. See README.md and METHODS.md in this folder."""

from bench.studies.{name} import {name}_method  # noqa: F401  (registers the method)
'''

METHOD = '''\
"""`{name}_method`: the paper's method. Start here: end-to-end SGD until you override hooks of
`bench.methods.base.Method`,
{hooks},
or own the loop (`owns_loop = True` and `fit`)."""

from typing import Any

import torch

from bench.methods import METHODS
from bench.methods.base import Method


@METHODS.register("{name}_method")
class {cls}(Method):
    name = "{name}_method"
    description = "the method of study {name} (skeleton: plain SGD)"
    defaults: dict[str, Any] = {{}}

    def build_optimizer(self, model: torch.nn.Module, train: dict[str, Any]
                        ) -> torch.optim.Optimizer:
        return super().build_optimizer(model, train)
'''

README = '''\
# Study `{name}`: {title}

**Paper.** Its title, and what it does in a few lines. The citation and the method
specification we implement are in [METHODS.md](METHODS.md).

**What we reproduce.** The tables and statements of the paper this study checks.

**Grid.** methods `sgd` (reference), `{name}_method`; models; datasets; budgets; seeds.

## Files

| file | what |
|---|---|
| `{name}_method.py` | method `{name}_method` |
| `claims.yaml` | the paper's numbers with their source |

## Choices that are ours ([ours]), with their option and default

| choice | option | default |
|---|---|---|

## Which claims are testable where
'''

METHODS_MD = '''\
# Study `{name}`: the paper and the method we implement

What the study's code follows: the paper, and its method in our words, every choice of ours
marked [ours]. How the code realises it is in [README](README.md); the paper's numbers, each with
its source, in [claims.yaml](claims.yaml).

## Citation

- **Title:** {title}
- **Authors:** as the paper names them (or: not named in the text we have)
- **Venue:** journal, conference or preprint server, with its identifier (arXiv id, DOI)
- **Year:** as the paper gives it

## What the paper says

## Grid

## Algorithm

## Metrics

## Claims

## Mechanism checks
'''

CLAIMS = '''\
# Claims of the paper (one entry per number or statement, with where it is printed).
# Format: docs/contracts.md ("Claims").
study: {name}
paper:
  title: '{title}'
claims: []
'''

CONFIG_BLOCK = '''\
  {name}:
    description: >-
      {title}
    reference: sgd
    methods: [sgd, {name}_method]
    models: [resnet18_cifar]
    datasets: [digits]
    budgets: [none]
    seeds: 2
    epochs: 2                     # quick: raise epochs, width and image size for the paper's run
    metrics: [val_acc, val_loss]
    data:
      image_size: 16
    model:
      width: 0.125
'''


def write_skeleton(name: str, dest: Path, title: str = "") -> Path:
    """Write the study folder `dest/name`; refuse bad names and existing folders."""
    if not NAME.match(name):
        raise ConfigError(f"study name {name!r}: use lower-case letters, digits and '_', "
                          f"starting with a letter (it becomes a Python package and a path)")
    folder = dest / name
    if folder.exists():
        raise ConfigError(f"{folder} exists already: pick another name or remove it")
    title = title or f"the paper behind study {name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Method"
    folder.mkdir(parents=True)
    files = {
        "__init__.py": INIT, f"{name}_method.py": METHOD, "METHODS.md": METHODS_MD,
        "README.md": README, "claims.yaml": CLAIMS,
    }
    hooks = textwrap.fill(", ".join(HOOKS), width=96)
    for fname, template in files.items():
        (folder / fname).write_text(template.format(name=name, title=title, cls=cls, hooks=hooks))
    return folder


def config_block(name: str, title: str = "") -> str:
    """The block to add under `studies:` in each config (config/*.yaml)."""
    return CONFIG_BLOCK.format(name=name, title=title or f"the paper behind study {name}")


def instructions(folder: Path, name: str, title: str = "") -> str:
    return textwrap.dedent(f"""\
        wrote {folder}/ (METHODS.md, README.md, claims.yaml, {name}_method.py, __init__.py)
        next: add this block under `studies:` in config/config.yaml, config/smoke.yaml and
        config/paper.yaml, then `python -m bench validate` and `snakemake -n`:

        """) + config_block(name, title)
