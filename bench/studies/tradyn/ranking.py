"""TraDy's offline layer ranking (paper Sec. 4; METHODS.md in this folder).

Fine-tune with full gradients for a few epochs, accumulating each conv layer's reweighted
gradient norm (`channels.RGNAccumulator`); keep the top-K layers that hold `fraction` of the
total. Registered as the upstream stage `rank_layers`, run by the workflow's `rank_layers` rule
(`python -m bench rank-layers`) once per (model, dataset) before any cell that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.data import DeviceLoader, load_dataset
from bench.data.loader import normalize, to_unit
from bench.models import build_model
from bench.pretrain import UPSTREAM_STAGES, load_backbone
from bench.studies.tradyn import channels


@UPSTREAM_STAGES.register("rank_layers")
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
