# memrepro: every study x method x model x dataset x budget x seed cell of a configuration,
# trained by `python -m bench train`, aggregated per study, reported once.
#
#   snakemake --cores all                                   # default: quick run on digits
#   snakemake --cores all --configfile config/smoke.yaml    # CI-sized
#   snakemake --cores all --configfile config/paper.yaml    # the papers' settings (GPU box)


from snakemake.utils import min_version


min_version("8.20")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


onstart:
    if TRACKING_URI:
        shell(init_tracking_command())


rule all:
    input:
        REPORT_HTML,
        REPORT_TEX,
