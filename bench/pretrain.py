"""Upstream stages of fine-tuning studies: the pretrained backbone and the offline layer ranking.

- `pretrain(spec, out)`: train the study's model on an upstream task (a plain `sgd` cell; it
  checkpoints and resumes like any cell) and save its final weights. Weights cannot be
  downloaded here, so the workflow makes them (paper: CIFAR-100 -> CIFAR-10; quick: digits 0-4
  -> digits 5-9); `pretrain.checkpoint` in a study uses a user's file instead.
- `load_backbone(model, path)`: every weight but the classifier (`fc`, a new head for the
  downstream task), with a clear error when the file is missing or made for another model.
- `UPSTREAM_STAGES`: further upstream stages a study registers by name (e.g. a layer ranking,
  `rank_layers`), run by the workflow once per (model, dataset) before the cells that need them
  (a method with `needs_ranking`); `python -m bench rank-layers` runs the one named `rank_layers`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bench.config import EVAL_DEFAULTS
from bench.errors import BenchError
from bench.registry import Registry

UPSTREAM_STAGES: Registry = Registry("upstream stage")

CLASSIFIER = "fc."  # every model of bench.models names its classifier `fc`


def pretrain(spec: dict[str, Any], out: Path, threads: int = 1, device: str = "auto") -> dict:
    """Train the upstream task of `spec` and save the final weights to `out` (atomically)."""
    from bench.methods import METHODS
    from bench.train import run_cell

    cfg = {
        "study": spec["study"], "method": "pretrain", "method_impl": "sgd",
        "model": spec["model"], "dataset": spec["dataset"], "budget": "none",
        "seed_index": 0, "seed": spec["seed"], "reference": "pretrain",
        "epochs": spec["epochs"], "train": spec["train"], "data": spec["data"],
        "model_options": spec["model_options"],
        "method_options": METHODS.get("sgd").resolve_options({}),
        "metrics": ["val_acc", "val_loss"], "evaluation": EVAL_DEFAULTS, "inputs": {},
        "device": device, "threads": threads, "data_root": spec["data_root"],
    }
    result = run_cell(cfg, out.parent / "result.json", tracker=None, threads=threads,
                      save_model=out)
    if result["status"] != "ok":
        raise BenchError(f"pretraining {spec['model']} on {spec['dataset']} ended with status "
                         f"{result['status']}: {result['reason']}; see {out.parent}/result.json")
    return result


def read_weights(path: str | Path) -> dict[str, Any]:
    """The weights (a state_dict) a checkpoint file holds, or a BenchError saying what it is
    instead: missing, unreadable, code rather than tensors, or no mapping of weights.
    `weights_only=True`: a planted file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist: run the workflow's pretrain rule "
                         f"(snakemake makes it before the cells that need it) or set the study's "
                         f"pretrain.checkpoint to an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise BenchError(f"checkpoint {path} cannot be read as a checkpoint of weights "
                         f"({type(e).__name__}: {first}); give a file saved with "
                         f"torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint: take its weights
    if (not isinstance(state, dict) or not state
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                       for k, v in state.items())):
        raise BenchError(f"checkpoint {path} holds no model weights (a mapping of names to "
                         f"tensors, as torch.save(model.state_dict(), path) writes); give a "
                         f"checkpoint of the study's model")
    return state


def backbone_mismatch(own: dict[str, Any], state: dict[str, Any]) -> str | None:
    """How `state` fails to fit a model whose state_dict is `own` (the classifier aside), or
    None. `own` may be a meta-device model's: only names and shapes are compared."""
    body = [k for k in own if not k.startswith(CLASSIFIER)]
    missing = [k for k in body if k not in state]
    unexpected = [k for k in state if not k.startswith(CLASSIFIER) and k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in body
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return None

    def some(items: list[str]) -> str:
        return ", ".join(items[:3]) + (" ..." if len(items) > 3 else "")

    return (f"{len(missing)} weights missing ({some(missing)}), {len(unexpected)} unexpected "
            f"({some(unexpected)}), {len(shapes)} of another shape ({some(shapes)})")


def load_backbone(model: torch.nn.Module, path: str | Path) -> None:
    """Load every weight of `path` but the classifier into `model`, or fail clearly."""
    state = read_weights(path)
    own = model.state_dict()
    why = backbone_mismatch(own, state)
    if why:
        raise BenchError(
            f"checkpoint {path} does not match the model ({type(model).__name__}): {why}. Was "
            f"it made for another model or width? Point pretrain.checkpoint at a checkpoint of "
            f"this model, or drop it to let the pretrain rule make one")
    body = [k for k in own if not k.startswith(CLASSIFIER)]
    model.load_state_dict({k: v for k, v in state.items() if k in body}, strict=False)


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
