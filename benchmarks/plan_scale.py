"""Planning at scale: how long `snakemake -n` and `python -m bench validate` take, beside
Snakemake's own floor for the same DAG.

Timings, each the median of `--repeat` runs, as wall time and as CPU time (user + sys of the
child process); the two sides of each comparison run alternately, so a busy machine slows both:

  plan N cells    `snakemake -n` on config/config.yaml with every study's seeds raised until the
                  plan holds >= N cells (`--cells`, default 10,000), nothing run yet
  floor N cells   the same DAG (same rules, wildcards, output paths, inputs and `conda:` lines)
                  from a generated Snakefile whose inputs are dict lookups and whose params are
                  constants: what Snakemake itself needs for that many jobs
  nothing to do   `snakemake -n` on the default config with every output present and recorded
                  (`snakemake --touch`), so there is nothing to run
  bare N jobs     Snakemake alone: a Snakefile with as many jobs as the large plan has cells,
                  each with an output path and nothing else (no input, params, log, conda):
                  below this no one-job-per-cell workflow can plan, whatever its rules do
  floor, nothing  the same for the generated Snakefile of the default config's DAG
  validate        `python -m bench validate` on the default config (registry index warm)

Goals (docs/benchmarks.md): planning 10,000 cells <= 15 s and nothing to do <= 4 s on 2 cores.

    python benchmarks/plan_scale.py                 # 10,000 cells, 3 repeats
    python benchmarks/plan_scale.py --cells 2000 --repeat 1 --markdown out.md
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.config import (
    CellResolver,
    canonical_json,
    cell_dir,
    check_config,
    claims_path,
    dataset_spec,
    load_config,
    plan,
    ranking_spec,
)

CELL_PATH = "{study}/cells/{method}/{model}/{dataset}/{budget}/s{seed}"


def rules_tables() -> list[str]:
    """The table names rules/common.smk makes per study (its `TABLES = [...]`)."""
    text = (ROOT / "rules" / "common.smk").read_text()
    match = re.search(r"^TABLES = (\[.*?\])", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise SystemExit("rules/common.smk has no TABLES list")
    return list(ast.literal_eval(match.group(1)))


def scaled_config(n_cells: int, results: Path) -> dict:
    """config/config.yaml with the seeds of every study raised until the plan has >= n cells."""
    cfg = load_config([ROOT / "config" / "config.yaml"])
    cfg["results"] = str(results)
    cfg["tracking"] = {"enabled": False, "uri": None}
    per_seed = len(plan(check_config(cfg))) // 3  # the default config runs 3 seeds per study
    for s in cfg["studies"].values():
        s["seeds"] = -(-n_cells // per_seed)
    return cfg


def dag_tables(cfg: dict) -> dict:
    """The jobs the real rules make for `cfg`, as lookup tables for the floor Snakefile."""
    cfg = check_config(cfg)
    results = cfg["results"]
    resolver = CellResolver(cfg)
    cells, rankings = {}, {}
    for cell in plan(cfg):
        spec = dataset_spec(cfg, cell.dataset, cell.study)
        prepared = (f"{results}/.prepared/{cell.study}/{cell.dataset}-"
                    f"{spec_hash_of(spec)}.json")
        resolved = resolver.resolve(cell)
        cells[cell_dir(Path(), cell).as_posix()] = [prepared, *resolved["inputs"].values()]
        ranking = resolved["inputs"].get("ranking")
        if ranking:
            ck = ranking_spec(cfg, cell.study, cell.model, cell.dataset)["init_checkpoint"]
            rankings[ranking] = [ck] if ck else []
    studies = {}
    for study in cfg["studies"]:
        claims = claims_path(study)
        studies[study] = {
            "results": [f"{results}/{c}/result.json" for c in cells if c.startswith(study + "/")],
            "claims": [str(claims)] if claims is not None else [],
        }
    return {"results": results, "cells": cells, "rankings": rankings, "studies": studies,
            "tables": rules_tables()}


def spec_hash_of(spec: dict) -> str:
    """rules/common.smk's `prepared_data` digest (sha256 of the canonical spec, 10 hex)."""
    import hashlib

    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:10]


FLOOR_SNAKEFILE = '''
# The floor: the DAG of the real workflow, with dict lookups for inputs and constant params.
import json

T = json.load(open(config["dag"]))
RESULTS = T["results"]
STUDIES = list(T["studies"])
TABLES = T["tables"]
CELL_PATH = "{study}/cells/{method}/{model}/{dataset}/{budget}/s{seed}"
COMMAND = "python -m bench version"


wildcard_constraints:
    study="[^/]+",
    method="[^/]+",
    model="[^/]+",
    dataset="[^/]+",
    budget="[^/]+",
    seed="[0-9]+",
    spec="[0-9a-f]{10}",


rule all:
    input:
        f"{RESULTS}/report/report.html",


rule prepare_data:
    output:
        f"{RESULTS}/.prepared/{{study}}/{{dataset}}-{{spec}}.json",
    params:
        spec="{}",
    conda:
        "ENVIRONMENT"
    shell:
        COMMAND


rule pretrain:
    output:
        f"{RESULTS}/{{study}}/pretrain/{{model}}/{{spec}}/model.pt",
    params:
        spec="{}",
    conda:
        "ENVIRONMENT"
    shell:
        COMMAND


rule rank_layers:
    input:
        lambda w: T["rankings"][f"{RESULTS}/{w.study}/ranking/{w.model}/{w.dataset}/{w.spec}.json"],
    output:
        f"{RESULTS}/{{study}}/ranking/{{model}}/{{dataset}}/{{spec}}.json",
    params:
        spec="{}",
    conda:
        "ENVIRONMENT"
    shell:
        COMMAND


rule train:
    input:
        lambda w: T["cells"][CELL_PATH.format(**w)],
    output:
        f"{RESULTS}/{CELL_PATH}/result.json",
    log:
        f"{RESULTS}/{CELL_PATH}/train.log",
    params:
        cell="{}",
    conda:
        "ENVIRONMENT"
    shell:
        COMMAND


rule aggregate:
    input:
        results=lambda w: T["studies"][w.study]["results"],
        claims=lambda w: T["studies"][w.study]["claims"],
    output:
        [f"{RESULTS}/{{study}}/tables/{t}.csv" for t in TABLES],
    params:
        config="{}",
    conda:
        "ENVIRONMENT"
    shell:
        COMMAND


rule report:
    input:
        [f"{RESULTS}/{study}/tables/{t}.csv" for study in STUDIES for t in TABLES],
    output:
        f"{RESULTS}/report/report.html",
    params:
        config="{}",
    conda:
        "ENVIRONMENT"
    shell:
        COMMAND
'''


BARE_SNAKEFILE = '''
# Snakemake alone: as many jobs as the plan has cells, each with nothing but an output path
# (no input, params, log, resources or conda line): what any one-job-per-cell DAG costs.
N = int(config["cells"])
CELLS = [f"r/study{i % 4}/cells/m{i % 8}/model/data/none/s{i}" for i in range(N)]


rule all:
    input:
        [f"{c}/result.json" for c in CELLS],


rule train:
    output:
        "r/{study}/cells/{method}/{model}/{dataset}/{budget}/s{seed}/result.json",
    shell:
        "true"
'''


def write_bare(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    snakefile = folder / "Snakefile"
    snakefile.write_text(BARE_SNAKEFILE)
    return snakefile


def write_floor(folder: Path, cfg: dict) -> tuple[Path, Path]:
    """The floor Snakefile for `cfg`'s DAG and the JSON tables it reads."""
    tables = dag_tables(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dag.json").write_text(json.dumps(tables))
    snakefile = folder / "Snakefile"
    snakefile.write_text(FLOOR_SNAKEFILE.replace("ENVIRONMENT", str(ROOT / "environment.yml")))
    return snakefile, folder / "dag.json"


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s of the child: user + sys, output) of one command; fails loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout + proc.stderr


def snakemake(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=10_000, help="cells of the large plan")
    p.add_argument("--repeat", type=int, default=3, help="runs per timing (median reported)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    p.add_argument("--json", default=None, help="also write the timings as JSON here")
    args = p.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="plan_scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": str(ROOT)}

    # the large plan, its floor, and the default config finished (`--touch`) with its floor
    big = scaled_config(args.cells, work / "big-results")
    n_big = len(plan(check_config(big)))
    (work / "big.yaml").write_text(yaml.safe_dump(big))
    floor_big, dag_big = write_floor(work / "floor-big", big)

    small = load_config([ROOT / "config" / "config.yaml"])
    small["results"] = str(work / "done-results")
    small["tracking"] = {"enabled": False, "uri": None}
    (work / "small.yaml").write_text(yaml.safe_dump(small))
    floor_small, dag_small = write_floor(work / "floor-small", {
        **small, "results": str(work / "floor-done-results")})
    bare_big = write_bare(work / "bare-big")
    print(f"plan_scale: {n_big} cells; scratch {work}", file=sys.stderr)
    # every Snakemake run works in the scratch folder (its .snakemake/ metadata stays there)
    where = ["--directory", str(work)]
    profile = ["--workflow-profile", str(ROOT / "profiles" / "default")]  # as the real one
    touch_all(work, [*where, "-s", str(ROOT / "Snakefile"), "--configfile",
                     str(work / "small.yaml")])
    touch_all(work, [*where, "-s", str(floor_small), *profile, "--config", f"dag={dag_small}"])
    real = ["-s", str(ROOT / "Snakefile"), *where]
    cases = {
        "plan_big": snakemake("-n", "--quiet", *real, "--configfile", str(work / "big.yaml")),
        "floor_big": snakemake("-n", "--quiet", "-s", str(floor_big), *where, *profile,
                               "--config", f"dag={dag_big}"),
        "bare_big": snakemake("-n", "--quiet", "-s", str(bare_big), "--directory",
                              str(work / "bare-big"), "--config", f"cells={n_big}"),
        "nothing": snakemake("-n", *real, "--configfile", str(work / "small.yaml")),
        "floor_nothing": snakemake("-n", "-s", str(floor_small), *where, *profile, "--config",
                                   f"dag={dag_small}"),
        "validate": [sys.executable, "-m", "bench", "validate"],
    }
    timed(cases["validate"], ROOT, env)  # warms the registry index
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for r in range(args.repeat):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name in order:
            wall, cpu, out = timed(cases[name], ROOT if name == "validate" else work, env)
            if name in ("nothing", "floor_nothing") and "Nothing to be done" not in out:
                raise SystemExit(f"{name}: expected nothing to do, got:\n{out[-2000:]}")
            samples[name].append((wall, cpu))
            print(f"  {name}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr)

    def med(name: str, i: int) -> float:
        return statistics.median(s[i] for s in samples[name])

    rows = [
        (f"`snakemake -n`, {n_big} cells, nothing run yet", "plan_big", "floor_big", 15.0),
        (f"`snakemake -n`, {n_big} bare jobs (an output path each, nothing else)",
         "bare_big", None, None),
        ("`snakemake -n`, default config, nothing to do", "nothing", "floor_nothing", 4.0),
        ("`python -m bench validate`, default config", "validate", None, None),
    ]
    lines = ["| command | wall s | CPU s | floor wall s | floor CPU s | goal (2 cores) |",
             "|---|---|---|---|---|---|"]
    report = {"cells": n_big, "repeat": args.repeat, "machine": machine(), "timings": {}}
    for label, name, floor, goal in rows:
        f_wall = f"{med(floor, 0):.2f}" if floor else "-"
        f_cpu = f"{med(floor, 1):.2f}" if floor else "-"
        lines.append(f"| {label} | {med(name, 0):.2f} | {med(name, 1):.2f} | {f_wall} | {f_cpu} "
                     f"| {f'<= {goal:g} s' if goal else '-'} |")
    for name, runs in samples.items():
        report["timings"][name] = {"wall_s": med(name, 0), "cpu_s": med(name, 1),
                                   "samples": runs}
    table = "\n".join(lines)
    print(f"{machine()}; {args.repeat} run(s) each, median\n{table}")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def touch_all(work: Path, args: list[str]) -> None:
    """Make every output of a workflow exist and be recorded, without running anything: empty
    files in dependency order, then `snakemake --touch` (which also writes the metadata)."""
    base = snakemake(*args)
    _, _, out = timed([*base, "-n", "--summary"], work)
    paths = [line.split("\t")[0] for line in out.splitlines() if "\t" in line][1:]
    order = ("/.prepared/", "/pretrain/", "/ranking/", "/cells/", "/tables/", "/report/")
    stamp = time.time() - 3600
    for path in paths:
        rank = next((i for i, k in enumerate(order) if k in path), len(order))
        f = Path(path) if os.path.isabs(path) else work / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
        os.utime(f, (stamp + rank, stamp + rank))
    timed([*base, "--touch", "--cores", "1", "--quiet"], work)


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
