# One job per cell. The resolved cell config is a param: changing a setting reruns exactly
# the cells it affects; a comment edit in a config file reruns nothing.


rule train:
    input:
        cell_inputs,
    output:
        f"{RESULTS}/{CELL_PATH}/result.json",
    log:
        f"{RESULTS}/{CELL_PATH}/train.log",
    params:
        cell=cell_config_json,
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
        "train --cell {params.cell:q} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"
