"""`python -m bench <command>`: what every Snakemake rule calls, and what a user can call by hand.

    validate       check a config (schema, names, options) and print the plan's size
    plan           list the cells of a config; --estimate: profile them, project the cost
    prepare-data   load (and verify, or download) a dataset once before the fan-out
    init-tracking  create the MLflow store and one experiment per study
    train          run one cell and write its result.json
    aggregate      a study's tables from its result files
    report         the HTML + LaTeX report from every study's tables
    faults         inject cluster faults (kills, full disk, server down, ...) and print a table
    verify         is a finished run complete: results, tables, report, MLflow runs

Config comes from `--configfile F [F ...]` (YAML, merged in order) or `--config-json` (the
merged config Snakemake passes). Errors the user can fix print one message and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import BenchError, ConfigError

# A full, read-only or over-quota file system: the user's to fix, not a bug to trace back.
UNWRITABLE = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EFBIG}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--configfile", nargs="+", metavar="YAML", default=None,
                   help="config files, merged in order (default: config/config.yaml)")
    g.add_argument("--config-json", metavar="JSON", help="a merged config as JSON text")


def load_cli_config(args: argparse.Namespace) -> dict[str, Any]:
    from bench.config import ROOT, check_config, load_config

    if getattr(args, "config_json", None):
        try:
            cfg = json.loads(args.config_json)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config-json is not valid JSON: {e}") from None
    else:
        cfg = load_config(args.configfile or [ROOT / "config" / "config.yaml"])
    return check_config(cfg)


def _read_json_arg(text: str, what: str) -> dict[str, Any]:
    """A JSON object given inline or as @path."""
    try:
        if text.startswith("@"):
            return json.loads(Path(text[1:]).read_text())
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{what} must be a JSON object or @path to one: {e}") from None


# ----------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    from bench.config import check_device, plan, seed_indices

    cfg = load_cli_config(args)
    if not args.no_device_check:
        check_device(cfg)
    cells = plan(cfg)
    per_study = Counter(c.study for c in cells)
    print(f"configuration is valid: {len(cells)} cells")
    for study, n in per_study.items():
        s = cfg["studies"][study]
        budgets = sorted({c.budget for c in cells if c.study == study})
        print(f"  {study}: {n} cells: methods {', '.join(s['methods'])}; models "
              f"{', '.join(s['models'])}; datasets {', '.join(s['datasets'])}; budgets "
              f"{', '.join(budgets)}; {len(seed_indices(s))} seeds; {s['epochs']} epochs; "
              f"reference {s['reference']}")
    _print_claims(cfg)
    return 0


def _print_claims(cfg: dict[str, Any]) -> None:
    """Each study's claims file, already checked against the study by check_config."""
    from bench.claims import load_claims
    from bench.config import claims_path

    for study in cfg["studies"]:
        doc = load_claims(claims_path(study))
        if doc is None:
            print(f"  {study}: no claims file ({claims_path(study)})")
            continue
        kinds = Counter(f"{c['scope']} {c['kind']}" for c in doc["claims"])
        counts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        print(f"  {study}: {len(doc['claims'])} claims valid ({counts})")


def cmd_plan(args: argparse.Namespace) -> int:
    from bench.config import CellResolver, config_hash, plan

    cfg = load_cli_config(args)
    if args.estimate:
        return _estimate(cfg, args)
    resolver = CellResolver(cfg)
    for cell in plan(cfg, args.study):
        line = cell.cell_id
        if args.hash:
            line += "  " + config_hash(resolver.resolve(cell))
        print(line)
    return 0


def _estimate(cfg: dict[str, Any], args: argparse.Namespace) -> int:
    from bench.estimate import dumps, estimate, render

    if args.study:
        cfg = {**cfg, "studies": {args.study: cfg["studies"][args.study]}}
    est = estimate(cfg, cores=args.cores, gpus=args.gpus, slots_per_gpu=args.slots_per_gpu,
                   steps=args.steps, progress=lambda line: print(line, file=sys.stderr,
                                                                 flush=True))
    print(render(est, " ".join(args.configfile or ["config/config.yaml"])))
    if args.json:
        Path(args.json).write_text(dumps(est) + "\n")
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from bench.data import load_dataset
    from bench.train import atomic_write_json

    if args.spec:
        spec = _read_json_arg(args.spec, "--spec")
    else:
        from bench.config import dataset_spec

        spec = dataset_spec(load_cli_config(args), args.dataset)
    manifest: dict[str, Any] = {"dataset": args.dataset, "studies": {}}
    for study, opts in spec["options"].items():
        print(f"loading {args.dataset} for study {study} from {spec['data_root']} ...",
              file=sys.stderr, flush=True)
        d = load_dataset(args.dataset, opts, Path(spec["data_root"]))
        manifest["studies"][study] = {
            "train": list(d.train_x.shape), "val": list(d.val_x.shape),
            "num_classes": d.num_classes, "mean": list(d.mean), "std": list(d.std),
        }
    atomic_write_json(Path(args.out), manifest)
    print(f"{args.dataset}: ok", file=sys.stderr)
    return 0


def cmd_init_tracking(args: argparse.Namespace) -> int:
    from bench.config import tracking_uri
    from bench.tracking import init_store
    from bench.train import atomic_write_json

    if args.study:
        studies, uri, results = args.study, args.tracking_uri, args.results
        if not uri:  # the workflow passes an empty URI when tracking is off
            atomic_write_json(Path(args.out), {"enabled": False})
            return 0
    else:
        cfg = load_cli_config(args)
        if not cfg["tracking"]["enabled"]:
            atomic_write_json(Path(args.out), {"enabled": False})
            return 0
        studies, uri, results = list(cfg["studies"]), args.tracking_uri or tracking_uri(cfg), cfg["results"]
    experiments = init_store(uri, studies, Path(results) / "mlartifacts")
    atomic_write_json(Path(args.out), {"enabled": True, "tracking_uri": uri,
                                       "experiments": experiments})
    print(f"MLflow store {uri}: experiments {experiments}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bench.train import run_cell

    cfg = _read_json_arg(args.cell, "--cell")
    tracker = None
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and os.environ.get("MEMREPRO_TRACKING", "on") != "off":
        from bench.tracking import Tracker

        root = args.artifact_root or os.environ.get("MEMREPRO_ARTIFACT_ROOT")
        tracker = Tracker(uri, Path(root) if root else None)
    threads = _config_threads(cfg.get("threads"), args.threads, "cell")
    with cell_lock(Path(args.out).parent):
        result = _finished_result(cfg, Path(args.out))
        if result is None:
            result = run_cell(cfg, Path(args.out), tracker=tracker, threads=threads)
        used = Path(args.cell[1:]) if args.cell.startswith("@") else None
        if used is not None and used.name.startswith("config-") and (
                used.parent.resolve() == Path(args.out).parent.resolve()):
            from bench.config import drop_other_cell_configs

            drop_other_cell_configs(used)  # the workflow's: one config file per result
    return 0 if result["status"] in ("ok", "oom", "diverged", "skipped") else 1


def _config_threads(configured: Any, granted: int | None, what: str) -> int:
    """The torch threads a job runs with: the config's `threads`, whatever `--threads` says.

    `--threads` is what Snakemake granted the job, which is less than the config's under a
    smaller `--cores` (`threads: 2` under `--cores 1` is granted 1). A CPU result depends on
    the thread count (torch splits reductions by it) and the config hash does not hold it,
    so a job that ran on the grant would give other numbers under the same hash and record
    the config's count. Running the config's count keeps a result a function of the config
    alone, wherever and under whatever `--cores` it runs: a smaller grant only makes the job
    slower (its threads share the cores). A pretrain or ranking spec holds `threads` only
    when the config's is not 1 (`bench.config.pretrain_spec`): without it, 1."""
    threads = int(configured) if configured is not None else 1
    if granted is not None and granted != threads:
        print(f"note: this {what} runs with the config's threads: {threads}, not the "
              f"{granted} Snakemake granted (--cores): a CPU result depends on the thread "
              f"count, and the config decides it so that results stay reproducible; set "
              f"`threads` to the cores a job should take", file=sys.stderr, flush=True)
    return threads


def cmd_verify(args: argparse.Namespace) -> int:
    from bench.verify import verify_run

    checks = dict(statuses=tuple(args.status), tables=not args.no_report,
                  report=not args.no_report, tracking=not args.no_tracking,
                  uri=args.tracking_uri)
    if args.results:  # the folder by its own record (bench.verify.verify_folder)
        from bench.verify import read_run_plan, verify_folder

        given = bool(args.configfile or getattr(args, "config_json", None))
        cfg = load_cli_config(args) if given or read_run_plan(args.results) is None else None
        verdict = verify_folder(args.results, cfg, **checks)
    else:
        verdict = verify_run(load_cli_config(args), **checks)
    print(verdict.summary())
    return 0 if verdict.ok else 1


def _finished_result(cfg: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The cell's result if another process already finished it for this very config.

    Snakemake deletes a job's outputs before it starts, so a result found here was written
    while this process waited in `cell_lock` (an orphaned copy from a killed run finished it):
    training again would only duplicate it.
    """
    from bench.config import config_hash

    try:
        doc = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if doc.get("config_hash") != config_hash(cfg) or doc.get("status") == "failed":
        return None
    print(f"{out} was finished by another process for this config (status {doc['status']}); "
          f"nothing to do", file=sys.stderr, flush=True)
    return doc


@contextlib.contextmanager
def cell_lock(out_dir: Path, poll_s: float = 1.0) -> Iterator[None]:
    """Hold `<cell>/.lock` while the cell runs: a second copy of the same cell waits.

    It happens when `snakemake` itself is killed: its running jobs live on as orphans, and the
    rerun (`--rerun-incomplete`) starts the same cells again. The second copy waits for the
    first to finish, then resumes from its final checkpoint (or its result) instead of racing
    it for the same checkpoint, result file and MLflow run. The kernel drops the lock when the
    holder dies, so a killed cell never blocks its retry.
    """
    import fcntl
    import time

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "a+") as f:
        waited = 0.0
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited % 60 == 0:
                    print(f"another process is running this cell ({out_dir}); waiting for it",
                          file=sys.stderr, flush=True)
                time.sleep(poll_s)
                waited += poll_s
        yield


def cmd_faults(args: argparse.Namespace) -> int:
    from bench.faults import FAULTS, run_faults, table

    if args.list:
        for f in FAULTS.values():
            print(f"{f.name:24s} {f.injected}")
        return 0
    unknown = [n for n in args.only or [] if n not in FAULTS]
    if unknown:
        raise ConfigError(f"unknown fault(s) {', '.join(unknown)}; faults: {', '.join(FAULTS)}")
    # a SIGTERM (CI's timeout) unwinds like Ctrl-C, so the scenarios' cleanups run: servers
    # they started are stopped, file systems they mounted are unmounted
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reports = run_faults(args.only, Path(args.workdir) if args.workdir else None,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(reports))
    if args.markdown:
        Path(args.markdown).write_text(table(reports, markdown=True) + "\n")
    return 0 if all(r.outcome is None or r.outcome.survived for r in reports) else 1


def cmd_pretrain(args: argparse.Namespace) -> int:
    from bench.pretrain import pretrain

    spec = _read_json_arg(args.spec, "--spec")
    threads = _config_threads(spec.get("threads"), args.threads, "pretraining")
    pretrain(spec, Path(args.out), threads=threads, device=args.device)
    print(f"pretrained {spec['model']} on {spec['dataset']}: {args.out}", file=sys.stderr)
    return 0


def cmd_rank_layers(args: argparse.Namespace) -> int:
    from bench import studies
    from bench.pretrain import UPSTREAM_STAGES

    studies.load()  # studies register their upstream stages

    spec = _read_json_arg(args.spec, "--spec")
    threads = _config_threads(spec.get("threads"), args.threads, "layer ranking")
    ranking = UPSTREAM_STAGES.get("rank_layers")(spec, Path(args.out), threads=threads,
                                                 device=args.device)
    print(f"ranking: top-{ranking['k']} of {ranking['n_layers']} layers -> {args.out}",
          file=sys.stderr)
    return 0


def cmd_new_study(args: argparse.Namespace) -> int:
    from bench import newstudy, studies

    dest = Path(args.dest) if args.dest else Path(studies.__path__[0])
    folder = newstudy.write_skeleton(args.name, dest, args.title or "")
    print(newstudy.instructions(folder, args.name, args.title or ""))
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from bench import studies
    from bench.aggregate import aggregate_study
    from bench.config import cell_dir, claims_path, plan

    studies.load_checks()
    cfg = load_cli_config(args)
    cells = plan(cfg, args.study)
    paths = [cell_dir(cfg["results"], c) / "result.json" for c in cells]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BenchError(f"{len(missing)} of {len(paths)} result files of study '{args.study}' "
                         f"are missing (first: {missing[0]}); run the workflow to produce them")
    stale = _stale_results(cfg, cells, paths)
    if stale:
        raise BenchError(f"{len(stale)} of {len(paths)} results of study '{args.study}' were made "
                         f"under another config and are not reported (first: {stale[0]}); run "
                         f"`snakemake` to rerun them")
    s = cfg["studies"][args.study]
    out = aggregate_study(paths, s["reference"], list(s.get("metrics") or ["val_acc", "val_loss"]),
                          Path(args.claims) if args.claims else claims_path(args.study),
                          Path(args.out_dir), study_cfg=s)
    print(f"{args.study}: {len(paths)} cells -> {', '.join(sorted(str(p) for p in out.values()))}",
          file=sys.stderr)
    return 0


def _stale_results(cfg: dict[str, Any], cells: list[Any], paths: list[Path]) -> list[str]:
    """'<path>: config_hash X, the config gives Y' for each result of another config (an
    unreadable file is left to the aggregation, which names it)."""
    from bench.config import config_hash, resolve_cell

    stale = []
    for cell, path in zip(cells, paths):
        try:
            found = json.loads(path.read_text()).get("config_hash")
        except (OSError, ValueError, AttributeError):
            continue
        expected = config_hash(resolve_cell(cfg, cell))
        if found != expected:
            stale.append(f"{path}: config_hash {found}, the config gives {expected}")
    return stale


def cmd_report(args: argparse.Namespace) -> int:
    import datetime as dt

    import bench.studies
    from bench.config import TRAIN_DEFAULTS, deep_merge, tracking_uri
    from bench.report import StudyInput, build_report
    from bench.train import provenance, resolve_device

    bench.studies.load_reports()  # the studies' own figures and tables register

    cfg = load_cli_config(args)
    uri = tracking_uri(cfg) if cfg["tracking"]["enabled"] else "(tracking off)"
    studies = []
    for name, s in cfg["studies"].items():
        choices = {
            "methods": ", ".join(s["methods"]), "models": ", ".join(s["models"]),
            "datasets": ", ".join(s["datasets"]),
            "budgets": ", ".join(str(b) for b in s.get("budgets") or ["none"]),
            "seeds": str(s["seeds"]), "epochs": str(s["epochs"]),
            **{f"train.{k}": str(v) for k, v in deep_merge(TRAIN_DEFAULTS, s.get("train") or {}).items()},
            **{f"data.{k}": str(v) for k, v in (s.get("data") or {}).items()},
            **{f"model.{k}": str(v) for k, v in (s.get("model") or {}).items()},
            **{f"model_options.{m}": json.dumps(o) for m, o in (s.get("model_options") or {}).items()},
            **{f"method_options.{m}": json.dumps(o) for m, o in (s.get("method_options") or {}).items()},
            **{f"variants.{m}": json.dumps(o) for m, o in (s.get("variants") or {}).items()},
        }
        studies.append(StudyInput(
            name=name, description=s.get("description", ""), reference=s["reference"],
            metrics=list(s.get("metrics") or ["val_acc", "val_loss"]),
            tables_dir=Path(cfg["results"]) / name / "tables", choices=choices, tracking_uri=uri,
        ))
    prov = provenance(resolve_device(cfg["device"]), int(cfg["threads"]))
    prov["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    prov["command"] = args.command_line or " ".join(sys.argv)
    out = build_report(studies, Path(args.out_dir), prov, title=cfg["report"]["title"])
    from bench.tracking import publish_study_reports

    publish_study_reports(cfg, Path(args.out_dir))  # one summary run per study: figures, tables
    print("report: " + ", ".join(str(p) for p in out.values()), file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", help="check a config and print the size of its plan")
    _add_config_args(s)
    s.add_argument("--no-device-check", action="store_true",
                   help="do not check that `device` exists here (a login node validating a "
                        "config for GPU nodes)")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("plan", help="list the cells of a config")
    _add_config_args(s)
    s.add_argument("--study", default=None)
    s.add_argument("--hash", action="store_true", help="print each cell's config hash")
    s.add_argument("--estimate", action="store_true",
                   help="profile the grid on this device and project its cost (bench.estimate)")
    s.add_argument("--cores", type=int, default=None,
                   help="with --estimate: Snakemake's --cores (default: every core here)")
    s.add_argument("--gpus", type=int, default=None,
                   help="with --estimate: GPUs of the run (default: those here, for cuda)")
    s.add_argument("--slots-per-gpu", type=int, default=None,
                   help="with --estimate: cells sharing a GPU (default $MEMREPRO_SLOTS_PER_GPU "
                        "or 1)")
    s.add_argument("--steps", type=int, default=3,
                   help="with --estimate: training steps per epoch of each profile run (2 "
                        "epochs; default 3: the first of each epoch runs under the activation "
                        "hooks, the rest are timed)")
    s.add_argument("--json", default=None, help="with --estimate: also write it as JSON here")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("prepare-data", help="load/verify a dataset once before the fan-out")
    _add_config_args(s)
    s.add_argument("--dataset", required=True)
    s.add_argument("--spec", default=None,
                   help="JSON {data_root, options: {study: data options}} (instead of a config)")
    s.add_argument("--out", required=True, help="manifest JSON to write")
    s.set_defaults(func=cmd_prepare_data)

    s = sub.add_parser("init-tracking", help="create the MLflow store and experiments")
    _add_config_args(s)
    s.add_argument("--tracking-uri", default=None)
    s.add_argument("--study", action="append", default=None,
                   help="a study to create an experiment for (repeatable; instead of a config)")
    s.add_argument("--results", default="results", help="results folder (artifacts go below)")
    s.add_argument("--out", required=True, help="marker JSON to write")
    s.set_defaults(func=cmd_init_tracking)

    s = sub.add_parser("train", help="run one cell")
    s.add_argument("--cell", required=True, help="resolved cell config: JSON text or @path")
    s.add_argument("--out", required=True, help="result.json to write")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--tracking-uri", default=None,
                   help="MLflow URI (default: $MLFLOW_TRACKING_URI; neither: tracking off; "
                        "MEMREPRO_TRACKING=off switches it off)")
    s.add_argument("--artifact-root", default=None,
                   help="artifact folder for a local store (default: $MEMREPRO_ARTIFACT_ROOT)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("pretrain", help="train a study's backbone on its upstream task")
    s.add_argument("--spec", required=True, help="pretrain spec: JSON text or @path")
    s.add_argument("--out", required=True, help="model.pt to write")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("new-study", help="write the skeleton of a new paper's study folder")
    s.add_argument("name", help="the study's name (its package and config key)")
    s.add_argument("--title", default=None, help="the paper's title")
    s.add_argument("--dest", default=None,
                   help="folder to write it into (default bench/studies; another folder must "
                        "be listed in MEMREPRO_STUDIES_PATH to be found)")
    s.set_defaults(func=cmd_new_study)

    s = sub.add_parser("rank-layers", help="offline layer ranking by reweighted gradient norm")
    s.add_argument("--spec", required=True, help="ranking spec: JSON text or @path")
    s.add_argument("--out", required=True, help="ranking JSON to write")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_rank_layers)

    s = sub.add_parser("aggregate", help="a study's tables from its result files")
    _add_config_args(s)
    s.add_argument("--study", required=True)
    s.add_argument("--claims", default=None,
                   help="claims YAML (default bench/studies/<study>/claims.yaml)")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("report", help="HTML + LaTeX report from every study's tables")
    _add_config_args(s)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--command-line", default=None, help="the command to state in the report")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("verify", help="check a finished run: nothing lost or duplicated")
    _add_config_args(s)
    s.add_argument("--results", default=None,
                   help="a results folder, judged by the plan its last run recorded "
                        "(run-plan.json), not by this clone's config (default: the config's "
                        "folder, judged by the config)")
    s.add_argument("--status", nargs="+", default=["ok", "oom", "diverged", "skipped"],
                   help="statuses a result may have (default: every finished status)")
    s.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, then the config's; with "
                        "--results: the store that folder's run recorded)")
    s.add_argument("--no-tracking", action="store_true", help="do not check MLflow runs")
    s.add_argument("--no-report", action="store_true", help="do not check tables and report")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("faults", help="inject faults and print what survived (bench.faults)")
    s.add_argument("--only", nargs="+", default=None, metavar="FAULT", help="faults to run")
    s.add_argument("--list", action="store_true", help="list the faults and exit")
    s.add_argument("--workdir", default=None, help="scratch folder (default: the system's)")
    s.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    s.set_defaults(func=cmd_faults)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in UNWRITABLE:
            raise
        print(f"error: cannot write {e.filename or 'the results'}: {e.strerror}. Finished "
              f"results are untouched and nothing was half-written; free space (or make the "
              f"results folder writable, or point `results:` elsewhere) and rerun: the cell "
              f"resumes from its last checkpoint.", file=sys.stderr)
        return 3
