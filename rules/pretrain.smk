# Upstream stages of fine-tuning studies: the pretrained backbone, and the offline layer ranking
# that TraDy-style methods read. Their paths carry a hash of what they depend on, so a changed
# setting makes a new file (and reruns exactly the cells that read it).


rule pretrain:
    output:
        f"{RESULTS}/{{study}}/pretrain/{{model}}/{{spec}}/model.pt",
    log:
        f"{RESULTS}/{{study}}/pretrain/{{model}}/{{spec}}/pretrain.log",
    params:
        spec=lambda wildcards: canonical_json(
            pretrain_spec(CONFIG, wildcards.study, wildcards.model)
        ),
        device=CONFIG["device"],
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
        "pretrain --spec {params.spec:q} --out {output:q} "
        "--threads {threads:q} --device {params.device:q} > {log:q} 2>&1"


rule rank_layers:
    input:
        checkpoint=ranking_checkpoint,
    output:
        f"{RESULTS}/{{study}}/ranking/{{model}}/{{dataset}}/{{spec}}.json",
    log:
        f"{RESULTS}/{{study}}/ranking/{{model}}/{{dataset}}/{{spec}}.log",
    params:
        spec=lambda wildcards: canonical_json(
            ranking_spec(CONFIG, wildcards.study, wildcards.model, wildcards.dataset)
        ),
        device=CONFIG["device"],
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
        "rank-layers --spec {params.spec:q} --out {output:q} "
        "--threads {threads:q} --device {params.device:q} > {log:q} 2>&1"
