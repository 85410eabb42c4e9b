"""`tradyn` (TraDy = D-TopK-Random, study `tradyn`; METHODS.md in this folder).

Every epoch: shuffle the pool of all input channels of the top-K layers uniformly at random
(the method's checkpointed generator), walk that order and accept each channel that still fits
the remaining budget (`fill: skip` [ours]; `fill: stop` ends at the first overflow); train the
epoch updating only the selected slices plus the classifier. See `bench.studies.tradyn.base` for the shared semantics.

The top-K layers come from the offline layer ranking, a JSON file at `cfg["inputs"]["ranking"]`
(written by the workflow's ranking step):

    {"model": str, "layer_names": [conv module names of the top-K layers], "fraction": 0.97,
     "k": int, "scores": {layer_name: score, ...}}

Layers are matched by name against `channels.conv_layers` of the cell's model; a name that is
not a conv of this model is a ConfigError (the ranking was made for another model).

Option `ranking`: null (default) = read `cfg["inputs"]["ranking"]`; "all" = every conv layer is
in the pool (no ranking file; used by the contract tests, and equivalent to K = all layers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError
from bench.methods import METHODS
from bench.studies.tradyn.base import TraDyBase
from bench.studies.tradyn.d_full_random import TEST_BUDGET

if TYPE_CHECKING:
    from bench.train import Run


def load_ranking(path: Path) -> dict[str, Any]:
    """The ranking JSON, checked for a non-empty `layer_names` list of strings."""
    try:
        ranking = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"layer ranking file {path} does not exist; run the workflow's layer "
                          "ranking step for this model first") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"layer ranking file {path} is unreadable ({e}); delete it and "
                          "regenerate it with the workflow's layer ranking step") from None
    names = ranking.get("layer_names") if isinstance(ranking, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"layer ranking file {path} has no non-empty 'layer_names' list of "
                          "conv layer names; regenerate it with the workflow's layer ranking step")
    return ranking


@METHODS.register("tradyn")
class TraDyn(TraDyBase):
    name = "tradyn"
    description = "TraDy (D-TopK-Random): dynamic random channels of the top-K ranked layers"
    rule = "random"
    dynamic = True
    pool_kind = "topk"
    defaults: dict[str, Any] = {**TraDyBase.defaults, "ranking": None}
    needs_ranking = True  # the workflow provides cfg["inputs"]["ranking"]
    metrics = (*TraDyBase.metrics, "ranking_k", "conv_layers")
    test_study: dict[str, Any] = {"budgets": [TEST_BUDGET],
                                  "method_options": {"tradyn": {"ranking": "all"}}}

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        if self.options["ranking"] not in (None, "all"):
            raise ConfigError(f"method '{self.name}': option ranking must be null (read "
                              f"inputs.ranking) or 'all' (every conv layer), not "
                              f"{self.options['ranking']!r}")
        self.ranking_path: str | None = None
        self.ranking_k: int | None = None  # K: layers of the ranking (paper: 35 of 52)

    def choose_pool_layers(self, run: Run) -> list[int]:
        if self.options["ranking"] == "all":
            return list(range(len(self.infos)))
        path = (run.cfg.get("inputs") or {}).get("ranking")
        if not path:
            raise ConfigError(f"method '{self.name}' needs the layer ranking: cfg "
                              "inputs.ranking (the JSON file of the workflow's layer ranking "
                              "step) is missing; run the workflow, or set method option "
                              "ranking: all to use every conv layer")
        self.ranking_path = str(path)
        ranking = load_ranking(Path(path))
        index = {info.name: i for i, info in enumerate(self.infos)}
        missing = [n for n in ranking["layer_names"] if n not in index]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ConfigError(
                f"layer ranking {path} was made for another model (model "
                f"{ranking.get('model')!r}): {len(missing)} of its layers are not conv layers of "
                f"'{run.cfg['model']}' ({shown}); regenerate the ranking for this model (its "
                f"architecture and width) with the workflow's layer ranking step")
        self.ranking_k = len(ranking["layer_names"])
        return sorted({index[n] for n in ranking["layer_names"]})

    def final_metrics(self, run: Run) -> dict[str, Any]:
        out = super().final_metrics(run)
        if self.ranking_k is not None:  # K of the offline ranking (paper D.5: K = 35)
            out["ranking_k"] = float(self.ranking_k)
            out["conv_layers"] = float(len(self.infos))
        return out
