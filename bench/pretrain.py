"""Upstream stages of fine-tuning studies: the pretrained backbone and the offline layer ranking.

- `pretrain(spec, out)`: train the study's model on an upstream task (a plain `sgd` cell; it
  checkpoints and resumes like any cell) and save its final weights. Weights cannot be
  downloaded here, so the workflow makes them (paper: CIFAR-100 -> CIFAR-10; quick: digits 0-4
  -> digits 5-9); `pretrain.checkpoint` in a study uses a user's file instead.
- `load_backbone(model, path)`: every weight but the classifier (`fc`, a new head for the
  downstream task), with a clear error when the file is missing or made for another model.
- `rank_layers(spec, out)`: TraDy's offline ranking (paper Sec. 4; METHODS.md): fine-tune with
  full gradients, accumulate each conv layer's reweighted gradient norm, keep the top-K layers
  holding `fraction` of the total.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench import channels
from bench.config import EVAL_DEFAULTS
from bench.data import DeviceLoader, load_dataset
from bench.data.loader import normalize, to_unit
from bench.errors import BenchError
from bench.models import build_model

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


def load_backbone(model: torch.nn.Module, path: str | Path) -> None:
    """Load every weight of `path` but the classifier into `model`, or fail clearly."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist: run the workflow's pretrain rule "
                         f"(snakemake makes it before the cells that need it) or set the study's "
                         f"pretrain.checkpoint to an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise BenchError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                         f"delete it and run the pretrain rule again") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint: take its weights
    own = model.state_dict()
    body = [k for k in own if not k.startswith(CLASSIFIER)]
    missing = [k for k in body if k not in state]
    unexpected = [k for k in state if not k.startswith(CLASSIFIER) and k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in body
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def some(items: list[str]) -> str:
            return ", ".join(items[:3]) + (" ..." if len(items) > 3 else "")

        raise BenchError(
            f"checkpoint {path} does not match the model ({type(model).__name__}): "
            f"{len(missing)} weights missing ({some(missing)}), {len(unexpected)} unexpected "
            f"({some(unexpected)}), {len(shapes)} of another shape ({some(shapes)}). Was it made "
            f"for another model or width? Point pretrain.checkpoint at a checkpoint of this "
            f"model, or drop it to let the pretrain rule make one")
    model.load_state_dict({k: v for k, v in state.items() if k in body}, strict=False)


def rank_layers(spec: dict[str, Any], out: Path, threads: int = 1, device: str = "auto") -> dict:
    """Full-gradient fine-tuning that accumulates each conv layer's reweighted gradient norm;
    writes {model, layer_names, indices, fraction, k, n_layers, scores} to `out`."""
    from bench.train import atomic_write_json, log, resolve_device

    torch.set_num_threads(threads)
    dev = resolve_device(device)
    data = load_dataset(spec["dataset"], spec["data"], Path(spec["data_root"])).to(dev)
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], data.num_classes, data.in_channels,
                        spec["model_options"]).to(dev)
    if spec.get("init_checkpoint"):
        load_backbone(model, spec["init_checkpoint"])
    example = normalize(to_unit(data.train_x[:2]), data.mean, data.std)
    infos = channels.conv_layers(model, example)
    rgn = channels.RGNAccumulator(infos)
    train = spec["train"]
    optimizer = torch.optim.SGD(model.parameters(), lr=train["lr"])  # plain SGD, as TraDy
    generator = torch.Generator(device=dev)
    generator.manual_seed(spec["seed"])
    d = spec["data"]
    loader = DeviceLoader(data.train_x, data.train_y, train["batch_size"], mean=data.mean,
                          std=data.std, shuffle=True, augment=d["augment"],
                          crop_padding=d["crop_padding"], flip=d["flip"], generator=generator)
    epochs = int(spec["ranking"]["epochs"])
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            rgn.update()
            optimizer.step()
            total += loss.item() * len(targets)
        log(f"ranking epoch {epoch + 1}/{epochs}: train loss {total / len(data.train_y):.4f}")
    scores = rgn.layer_scores()
    fraction = float(spec["ranking"]["fraction"])
    top = channels.top_k_layers(scores, fraction)
    ranking = {
        "model": spec["model"],
        "layer_names": [infos[i].name for i in top],
        "indices": top,
        "fraction": fraction,
        "k": len(top),
        "n_layers": len(infos),
        "scores": {info.name: float(score) for info, score in zip(infos, scores, strict=True)},
    }
    atomic_write_json(out, ranking)
    log(f"top-{len(top)} of {len(infos)} conv layers hold {fraction:.0%} of the total RGN")
    return ranking


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
