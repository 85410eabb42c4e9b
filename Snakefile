# memrepro: every study x method x model x dataset x budget x seed cell of a configuration,
# trained by `python -m bench train`, aggregated per study, reported once.
#
#   snakemake --cores all                                   # default: quick run on digits
#   snakemake --cores all --configfile config/smoke.yaml    # CI-sized
#   snakemake --cores all --configfile config/paper.yaml    # the papers' settings (GPU box)


from snakemake.utils import min_version


min_version("8.20")


# The default config only when none is given: Snakemake would otherwise merge a
# `--configfile` into it key by key, and settings of the default (say a study's
# `train.warmup_epochs`) would leak into the smoke or paper run.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


# Cheap bookkeeping runs where snakemake runs (on a cluster: the login node, which can also
# reach the dataset mirrors); training jobs go to the executor.
localrules:
    all,
    prepare_data,
    aggregate,
    report,


# The results folder's lock (bench.runlock) is taken here and held by this process until it
# ends: a second run on the same results folder refuses instead of deleting this run's results.
onstart:
    before_any_job()


onsuccess:
    after_last_job()


onerror:
    after_last_job()


# The report, every table and every result: a deleted result or table is remade by a plain
# `snakemake` (Snakemake remakes a missing intermediate file only when something downstream
# asks for it, and a finished report asks for nothing).
rule all:
    input:
        REPORT_HTML,
        REPORT_TEX,
        [f"{RESULTS}/{study}/tables/{t}.csv" for study in STUDIES for t in TABLES],
        [str(cell_dir(RESULTS, c) / "result.json") for c in CELLS],
