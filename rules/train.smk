# One job per cell. Its resolved config is an input file named by a digest of its content
# (rules/common.smk, cell_inputs): changing a setting reruns exactly the cells it affects, with
# or without .snakemake metadata; a comment edit in a config file reruns nothing.


rule train:
    input:
        unpack(cell_inputs),
    output:
        f"{RESULTS}/{CELL_PATH}/result.json",
    log:
        f"{RESULTS}/{CELL_PATH}/train.log",
    threads: CONFIG["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: TRAIN_MEM_MB * attempt,
        runtime=lambda wildcards, attempt: TRAIN_RUNTIME_MIN * attempt,
        gpu=uses_gpu(),
        gpu_exclusive=gpu_exclusive,
        cpus_per_task=lambda wildcards, threads: threads,
    conda:
        "../environment.yml"
    shell:
        f"{GPU_SLOT} python -m bench "
        "train --cell @{input.config:q} --out {output:q} "
        "--threads {threads:q} > {log:q} 2>&1"
